#!/usr/bin/env bash
# The whole toy Imagen from scratch under the cpu profile, timed part by part (chapter 5c):
# 1. the toy T5, pretrained on text alone (alone on the machine, so on every core);
# 2. the base stage and the super-resolution stage, side by side (one thread each), both reading
#    that frozen encoder.
# usage: bash experiments/cascade/cpu_pipeline.sh OUT
#   OUT=data/checkpoints re-makes the shipped files (recorded in its manifest; the stages need
#   --overwrite there, which this passes); any other OUT gets its own files and manifest.
set -euo pipefail
out=${1:?usage: cpu_pipeline.sh OUT}
mkdir -p "$out"
start=$(date +%s)
if [ "$(realpath "$out")" = "$(realpath data/checkpoints)" ]; then
  python -m imagen_edu.t5_pretraining train --profile cpu --out "$out/t5.safetensors"
  encoder=toyt5
  extra=(--overwrite)
else
  python -m imagen_edu.t5_pretraining train --profile cpu --out "$out/t5.safetensors" --no-manifest
  encoder="toyt5:$out/t5.safetensors"
  extra=()
fi
t5_done=$(date +%s)
echo "[pipeline] text encoder: $((t5_done - start)) s"
python -m imagen_edu train --stage base --profile cpu --out "$out" --threads 1 --text-encoder "$encoder" "${extra[@]}" 2> "$out/.base.log" &
base=$!
python -m imagen_edu train --stage sr1 --profile cpu --out "$out" --threads 1 --text-encoder "$encoder" "${extra[@]}" 2> "$out/.sr1.log" &
sr1=$!
wait $base; echo "[pipeline] base stage done: $(( $(date +%s) - t5_done )) s after the encoder"
wait $sr1; echo "[pipeline] sr1 stage done: $(( $(date +%s) - t5_done )) s after the encoder"
echo "[pipeline] total: $(( $(date +%s) - start )) s"
