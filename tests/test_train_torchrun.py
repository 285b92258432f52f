"""``torchrun -m imagen_edu train``: the cascade's command line on 2 processes (gloo on the CPU).

Chapter 6. What is checked, on the ``ci`` base stage (batch 8, 6 steps, a resume file every 2):

(a) 2 processes with 4 examples each train what 1 process with the whole batch of 8 trains
    (:func:`imagen_edu.stage_training.stage_batches`: the batch of a step does not depend on the
    world size), to the tolerances stated at :data:`LOSS_TOL` and below;
(b) a run whose rank 1 is SIGKILLed after step 3 resumes with ``--resume`` from the step-2 resume
    file and ends with exactly the bits of the uninterrupted 2-process run;
(c) ``--fsdp`` (FSDP2's ``fully_shard``) trains the same numbers, and its files load and sample
    in one process like any other;
(d) bad input stops every rank with one line and exit status 2 before any work, including a
    refusal only rank 0 can see (the folder's lock held by another process).

The dying rank is ``experiments/distributed/kill_rank.py`` (the command line, with rank ``R``
SIGKILLing itself after step ``K``).
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from imagen_edu import checkpoints, cli, configs, text_encoders
from imagen_edu.outputs import FolderLock
from imagen_edu.stage import ImagenStage, load_stage
from imagen_edu.stage_training import batch_generator, stage_batches
from imagen_edu.train import TrainConfig, fsdp_units

ROOT = Path(__file__).resolve().parents[1]
KILL_SCRIPT = ROOT / "experiments" / "distributed" / "kill_rank.py"
STEPS, EVERY = 6, 2
ARGS = ["train", "--stage", "base", "--profile", "ci", "--steps", str(STEPS), "--save-every", str(EVERY)]
RESUME = "imagen_base.resume.safetensors"
WEIGHTS = "imagen_base.safetensors"
#: (a), (c): the per-step losses and Adam's moments of 1 and 2 processes differ by float rounding
#: only (the gradient is summed in another order); a batch drawn otherwise differs by ~1e-2
LOSS_TOL = MOMENT_TOL = 1e-6
#: (a), (c): the weights differ by more where Adam divides a tiny gradient by its tiny running
#: size (m / sqrt(v) of a gradient that is rounding noise can flip sign): a few weights move by
#: up to 2 lr per step. Bound: every weight within 2 * sum of the steps' lr, and the difference
#: of all weights together below this fraction of their norm
WEIGHT_REL_TOL = 1e-4

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is not available")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args, logs, *, script=None, nproc=2, timeout=150, launcher=()):
    """``torchrun --nproc_per_node=2 -m imagen_edu ARGS`` (or ``SCRIPT ARGS``); each rank's stdout
    and stderr are kept in ``logs`` (:func:`rank_logs`)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "IMAGEN_EDU_PROFILE"):
        env.pop(k, None)
    target = [script] if script else ["-m", "imagen_edu"]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr",
           "127.0.0.1", "--master_port", str(free_port()), "--log-dir", str(logs), "--redirects", "3",
           *launcher, *target, *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=ROOT)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun hung for {timeout} s:\n{err[-3000:]}\n{rank_logs(logs)}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def rank_logs(logs, stream: str = "stderr") -> dict[int, str]:
    """``{rank: its stderr}`` (or stdout) from torchrun's ``--log-dir`` (``RUN/attempt_0/RANK/stderr.log``)."""
    return {int(f.parent.name): f.read_text() for f in sorted(Path(logs).glob(f"*/attempt_*/*/{stream}.log"))}


def check_ok(proc, logs):
    assert proc.returncode == 0, proc.stderr[-2000:] + "\n".join(rank_logs(logs).values())[-4000:]


def lr_sum(cfg_json) -> float:
    """Sum over the steps of the learning rate (the trainer's schedule), for the weight bound."""
    tc = TrainConfig(**cfg_json)
    return sum(tc.lr_at(s) for s in range(tc.steps))


def compare(reference: dict, other: dict, meta: dict) -> dict:
    """Max differences of the losses, moments and weights, asserted against the stated tolerances."""
    loss = (reference["train/losses"] - other["train/losses"]).abs().max().item()
    moments = max((reference[k] - other[k]).abs().max().item() for k in reference
                  if k.startswith("optim/") and k.endswith(("exp_avg", "exp_avg_sq")))
    keys = [k for k in reference if k.startswith(("model/", "ema/")) and reference[k].is_floating_point()]
    diff = torch.cat([(reference[k].double() - other[k].double()).flatten() for k in keys])
    norm = torch.cat([reference[k].double().flatten() for k in keys]).norm()
    figures = {"loss": loss, "moments": moments, "weights_max": diff.abs().max().item(),
               "weights_rel": (diff.norm() / norm).item(), "bound": 2 * lr_sum(meta["config"])}
    print("max differences:", json.dumps(figures))
    assert loss <= LOSS_TOL and moments <= MOMENT_TOL, figures
    assert figures["weights_max"] <= figures["bound"] and figures["weights_rel"] <= WEIGHT_REL_TOL, figures
    return figures


@pytest.fixture(scope="module")
def one(tmp_path_factory):
    """One process, the whole batch of 8 (the command line, in this process)."""
    out = tmp_path_factory.mktemp("one")
    torch.set_num_threads(1)
    assert cli.main([*ARGS, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """Two processes with 4 examples each, launched by torchrun."""
    base = tmp_path_factory.mktemp("two")
    out, logs = base / "out", base / "logs"
    proc = torchrun([*ARGS, "--out", str(out)], logs)
    check_ok(proc, logs)
    return out, logs


def test_two_processes_match_one_with_the_whole_batch(one, two):
    """(a) Data parallelism computes the one-process gradient: the batch of a step is the same
    whatever the world size (each rank keeps its slice), and DDP averages the ranks' gradients."""
    out, logs = two
    ref, ref_meta = checkpoints.load(one / RESUME)
    mine, meta = checkpoints.load(out / RESUME)
    assert meta["step"] == STEPS and meta["world_size"] == 2 and meta["rng_complete"] and meta["parallel"] == "ddp"
    assert set(meta["rng"]) == {"0", "1"}  # rank 0 gathered both ranks' generators
    compare(ref, mine, ref_meta)
    # rank 0 alone wrote: one resume file, one weights file, one manifest entry, one report line
    assert sorted(f.name for f in out.iterdir() if not f.name.startswith(".")) == ["imagen_base.resume.safetensors",
                                                                                  "imagen_base.safetensors",
                                                                                  "manifest.json"]
    entry = checkpoints.read_manifest(out / "manifest.json")["imagen_base"]
    assert entry["command"].startswith("torchrun --nproc_per_node=2 -m imagen_edu train --stage base --profile ci")
    stdout = rank_logs(logs, "stdout")
    assert stdout[1] == ""  # rank 0 reports for the job
    report = json.loads(stdout[0].strip().splitlines()[-1])
    assert report["world_size"] == 2 and report["steps"] == STEPS and report["parallel"] == "ddp"


def test_killed_rank_resumes_bit_identical(tmp_path, two):
    """(b) Exact resume after a rank dies: rank 1 is SIGKILLed after step 3, torchrun stops the
    job, and ``--resume`` continues from the step-2 resume file (both ranks' generators, the
    moments, the EMA) to exactly the bits of the uninterrupted run."""
    out = tmp_path / "out"
    proc = torchrun(["--kill-rank", "1", "--kill-after", "3", "--", *ARGS, "--out", str(out)], tmp_path / "logs1",
                    script=str(KILL_SCRIPT))
    assert proc.returncode != 0
    assert checkpoints.load(out / RESUME)[1]["step"] == 2 and not (out / WEIGHTS).exists()
    proc = torchrun([*ARGS, "--out", str(out), "--resume"], tmp_path / "logs2")
    check_ok(proc, tmp_path / "logs2")
    resumed, meta = checkpoints.load(out / RESUME)
    reference, _ = checkpoints.load(two[0] / RESUME)
    assert meta["step"] == STEPS and resumed.keys() == reference.keys()
    bad = [k for k in reference if not torch.equal(resumed[k], reference[k])]
    assert not bad, f"differ after resume: {bad[:5]}"
    a, b = checkpoints.load(out / WEIGHTS)[0], checkpoints.load(two[0] / WEIGHTS)[0]
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert checkpoints.read_manifest(out / "manifest.json")["imagen_base"]["metrics"]["resumed_from_step"] == 2


def test_fsdp_trains_the_same_and_loads_in_one_process(tmp_path, one):
    """(c) FSDP2 (``fully_shard``): the weights, moments and EMA live in shards, each update is the
    same arithmetic on each shard, and the checkpoint gathers them whole on rank 0: the files are
    those of any run, so one process loads, samples and resumes them."""
    out = tmp_path / "out"
    proc = torchrun([*ARGS, "--out", str(out), "--fsdp"], tmp_path / "logs")
    check_ok(proc, tmp_path / "logs")
    ref, ref_meta = checkpoints.load(one / RESUME)
    mine, meta = checkpoints.load(out / RESUME)
    assert meta["parallel"] == "fsdp" and meta["world_size"] == 2 and meta["step"] == STEPS
    assert {k for k in mine if not k.startswith("rng/")} == {k for k in ref if not k.startswith("rng/")}
    compare(ref, mine, ref_meta)
    assert "--fsdp" in checkpoints.read_manifest(out / "manifest.json")["imagen_base"]["command"]
    # one process: the shipped-style weights load and sample ...
    stage = load_stage(out / WEIGHTS)
    emb, mask = text_encoders.get(stage.config.text_encoder).encode(["a red circle"])
    img = stage.sample(emb, mask, steps=2, generator=torch.Generator().manual_seed(0))
    assert img.shape == (1, 3, 8, 8) and torch.isfinite(img).all()
    # ... and the resume file continues in one process (2 more steps)
    with pytest.warns(UserWarning, match="world size 2 on world size 1"):  # a resume, not a bit-exact one
        assert cli.main([*ARGS[:-4], "--steps", str(STEPS + 2), "--save-every", str(EVERY), "--out", str(out),
                         "--resume"]) == 0
    assert checkpoints.load(out / RESUME)[1]["step"] == STEPS + 2


@pytest.mark.parametrize("extra, message", [
    (["--set", "batch_size=7"], "does not divide batch_size=7"),  # every rank sees it
    (["--locked"], "is in use"),  # only rank 0 takes the lock: the others hear of it and stop too
])
def test_bad_input_stops_every_rank_with_one_line(tmp_path, extra, message):
    """(d) Under torchrun every argument error stops every rank with one line, exit status 2, and
    no file written; a refusal seen by rank 0 alone (the folder in use) reaches every rank."""
    out = tmp_path / "out"
    out.mkdir()
    locked = extra == ["--locked"]
    lock = FolderLock(out, "imagen_base", what="stage 'base'")
    if locked:
        lock.__enter__()
        extra = []
    try:
        # torchrun stops the other ranks 0.1 s after one exits (its monitor interval): a slower
        # rank still shutting down would read -15 (SIGTERM); 5 s lets each report its own status
        proc = torchrun([*ARGS, "--out", str(out), *extra], tmp_path / "logs", launcher=("--monitor-interval", "5"))
    finally:
        lock.__exit__(None, None, None)
    assert proc.returncode != 0
    codes = dict(re.findall(r"rank\s*:\s*(\d+) \(local_rank.*\n\s*exitcode\s*:\s*(-?\d+)", proc.stderr))
    assert codes == {"0": "2", "1": "2"}, proc.stderr[-2000:]  # torchrun's summary: each rank's exit status
    errs = rank_logs(tmp_path / "logs")
    assert sorted(errs) == [0, 1]
    for rank, text in errs.items():
        lines = [line for line in text.splitlines() if line.strip() and "it/s" not in line]
        assert len(lines) == 1 and lines[0].startswith("python -m imagen_edu: error:") and message in lines[0], \
            (rank, text[-2000:])
    assert sorted(f.name for f in out.iterdir() if not f.name.startswith(".")) == []


def test_config_option_trains_a_named_config(tmp_path, capsys):
    """``--config NAME`` trains the named config's stage (what ``--fsdp`` is for at paper size),
    and a name of another stage than ``--stage`` is refused with one line before any work."""
    assert cli.main(["train", "--stage", "sr1", "--config", "toy-ci/base", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a 'base' stage, not 'sr1'" in err[0]
    assert not (tmp_path / "x").exists()  # refused before the folder was made
    out = tmp_path / "named"
    assert cli.main(["train", "--stage", "base", "--config", "toy-ci/base", "--profile", "ci", "--steps", "1",
                     "--out", str(out)]) == 0
    saved = checkpoints.load(out / RESUME)[1]["model_info"]["stage_config"]
    assert saved == {k: v for k, v in configs.get("toy-ci/base").stage.replace(steps=1).to_dict().items()
                     if k not in ("steps", "max_seconds")}
    assert checkpoints.read_manifest(out / "manifest.json")["imagen_base"]["command"].count("--config toy-ci/base") == 1


def test_batch_of_a_step_does_not_depend_on_the_world_size():
    """stage_batches: with the shared stream of batch_generator, rank r of N gets examples
    r*B/N .. (r+1)*B/N - 1 of the one-process batch, every random draw of the loss included."""
    cfg = configs.stage_config("sr1", "ci")
    highs, lows = torch.randn(20, 3, 16, 16), torch.randn(20, 3, 8, 8)
    fn = stage_batches(cfg, highs, torch.arange(20), lows)
    whole = fn(3, 0, 1, batch_generator(cfg))
    halves = [fn(3, r, 2, batch_generator(cfg)) for r in range(2)]
    assert set(whole) == {"x0", "caption_ids", "drop", "t", "noise", "lowres", "aug_level", "aug_noise"}
    for k, v in whole.items():
        assert torch.equal(torch.cat([h[k] for h in halves]), v), k


def test_fsdp_shards_the_unet_level_by_level():
    """fsdp_units: every U-Net level (an element of down/mid/up) is its own FSDP unit, and no
    container (a ModuleList is never called, so its weights would never be gathered)."""
    stage = ImagenStage(configs.stage_config("base", "ci"))
    units = fsdp_units(stage)
    unet = stage.unet
    assert units and all(any(u is m for m in [*unet.down, *unet.mid, *unet.up]) for u in units)
    assert not any(isinstance(u, (torch.nn.ModuleList, torch.nn.ModuleDict)) for u in units)
    assert len(units) == len([m for m in [*unet.down, *unet.mid, *unet.up] if any(True for _ in m.parameters())])
