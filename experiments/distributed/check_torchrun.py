"""Measure what ``torchrun -m imagen_edu train`` promises, on the CPU with gloo (chapter 6).

Runs the ``ci`` base stage (batch 8, 6 steps, a resume file every 2 steps) as

1. one process with the whole batch (the reference);
2. two processes with DistributedDataParallel, and with ``--fsdp``;
3. for each of the two modes, a run whose rank 1 is SIGKILLed after step 3
   (:mod:`kill_rank`), then ``--resume``,

and prints (and writes to ``results.json`` beside this file) the largest differences from the
reference (losses, Adam moments, weights) and whether each resumed run has exactly the bits of
its uninterrupted run, with each launch's wall time::

    OMP_NUM_THREADS=1 python experiments/distributed/check_torchrun.py [--nproc 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from imagen_edu import checkpoints

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ARGS = ["train", "--stage", "base", "--profile", "ci", "--steps", "6", "--save-every", "2"]
RESUME = "imagen_base.resume.safetensors"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args, nproc: int, script: str | None = None) -> tuple[int, float]:
    """Run the command line (under torchrun when ``nproc`` > 1); returns (exit status, seconds)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    target = [script] if script else ["-m", "imagen_edu"]
    cmd = [sys.executable, *target, *args] if nproc == 1 and not script else [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), *target, *args]
    t0 = time.perf_counter()
    rc = subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    return rc, round(time.perf_counter() - t0, 1)


def differences(ref: dict, other: dict) -> dict:
    """Largest absolute differences of the losses, the moments, the weights (and their relative norm)."""
    moments = [k for k in ref if k.startswith("optim/") and k.endswith(("exp_avg", "exp_avg_sq"))]
    weights = [k for k in ref if k.startswith(("model/", "ema/")) and ref[k].is_floating_point()]
    d = torch.cat([(ref[k].double() - other[k].double()).flatten() for k in weights])
    return {"loss": (ref["train/losses"] - other["train/losses"]).abs().max().item(),
            "moments": max((ref[k] - other[k]).abs().max().item() for k in moments),
            "weights_max": d.abs().max().item(),
            "weights_rel": (d.norm() / torch.cat([ref[k].double().flatten() for k in weights]).norm()).item()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--out", default=None, help="working folder (default: a temporary one)")
    opts = p.parse_args(argv)
    work = Path(opts.out or tempfile.mkdtemp(prefix="torchrun-check."))
    res: dict = {"nproc": opts.nproc, "torch": torch.__version__, "seconds": {}}
    rc, res["seconds"]["one_process"] = launch([*ARGS, "--out", str(work / "one")], 1)
    assert rc == 0, "the one-process run failed"
    ref = checkpoints.load(work / "one" / RESUME)[0]
    for mode, extra in (("ddp", []), ("fsdp", ["--fsdp"])):
        rc, res["seconds"][mode] = launch([*ARGS, "--out", str(work / mode), *extra], opts.nproc)
        assert rc == 0, f"the {mode} run failed"
        full = checkpoints.load(work / mode / RESUME)[0]
        res[f"{mode}_vs_one_process"] = differences(ref, full)
        killed = work / f"{mode}_killed"
        rc, res["seconds"][f"{mode}_killed"] = launch(["--kill-rank", "1", "--kill-after", "3", "--",
                                                       *ARGS, "--out", str(killed), *extra], opts.nproc,
                                                      script=str(HERE / "kill_rank.py"))
        step = checkpoints.load(killed / RESUME)[1]["step"]
        rc2, res["seconds"][f"{mode}_resumed"] = launch([*ARGS, "--out", str(killed), "--resume", *extra], opts.nproc)
        resumed = checkpoints.load(killed / RESUME)[0]
        res[f"{mode}_kill_resume"] = {"killed_exit": rc, "resumed_from_step": step, "resumed_exit": rc2,
                                      "bit_identical": resumed.keys() == full.keys()
                                      and all(torch.equal(resumed[k], full[k]) for k in full)}
    text = json.dumps(res, indent=1)
    print(text)
    (HERE / "results.json").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
