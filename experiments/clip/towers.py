"""The CNN and the ViT image towers of CLIP at the same budget (chapter 4, "Two image towers").

    OMP_NUM_THREADS=1 python experiments/clip/towers.py [--profile cpu] [--seed 0] [--out data/benchmarks/clip_towers.json]

Trains both towers with the profile's CLIP settings (same text tower, data, steps, batch and
learning rate; no time limit, so both take every step), measures each with
``imagen_edu.clip_eval.evaluate`` and writes one JSON file that ``book/04_clip.ipynb`` reads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time

import torch

from imagen_edu import REPO_ROOT, clip_eval, profiles

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO_ROOT / "data" / "benchmarks" / "clip_towers.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    settings = dataclasses.replace(profiles.get(args.profile).clip, max_seconds=None)
    t0 = time.perf_counter()
    rows = clip_eval.compare_towers(settings, seed=args.seed, progress=sys.stderr.isatty())
    result = {
        "command": f"OMP_NUM_THREADS=1 python experiments/clip/towers.py --profile {args.profile} --seed {args.seed} "
                   "--out data/benchmarks/clip_towers.json",
        "profile": args.profile,
        "seed": args.seed,
        "settings": dataclasses.asdict(settings),
        "towers": rows,
        "total_seconds": round(time.perf_counter() - t0, 1),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": 1,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
