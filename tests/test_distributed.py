"""torchrun on the CPU (gloo): two processes with half the batch each match one process with the whole batch."""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from imagen_edu import checkpoints
from support.ddp_smoke import SCRIPT, regression_config, regression_problem
from imagen_edu.train import CHECKPOINT_NAME, Trainer

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is not available")

ROOT = Path(__file__).resolve().parents[1]
#: stated tolerance: the two runs sum the same float32 gradients in another order
TOL = 1e-6
STEPS, BATCH = 6, 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(out, *args, nproc=2):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), SCRIPT, "--problem", "regression",
           "--out", str(out), "--steps", str(STEPS), "--batch", str(BATCH), *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, so a hang can be cleaned up
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun hung for 120 s:\n{out[-2000:]}\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """Two ranks, 4 examples each, 2 micro-batches per step, a checkpoint every 3 steps."""
    out = tmp_path_factory.mktemp("ddp")
    proc = torchrun(out, "--grad-accum", "2", "--checkpoint-every", "3")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_two_ranks_match_one_process_with_the_whole_batch(tmp_path, ddp_run):
    assert sorted(os.listdir(ddp_run)) == [CHECKPOINT_NAME]  # rank 0 wrote the only file
    tensors, meta = checkpoints.load(ddp_run / CHECKPOINT_NAME)
    assert meta["step"] == STEPS and meta["world_size"] == 2 and meta["rng_complete"]
    assert set(meta["rng"]) == {"0", "1"}  # both ranks' generators, gathered to rank 0
    assert not torch.equal(tensors["rng/0/generator"], tensors["rng/1/generator"])  # per-rank seeds

    torch.set_num_threads(1)
    model, loss_fn, batch_fn = regression_problem(batch_size=BATCH)
    one = Trainer(model, loss_fn, batch_fn, regression_config(tmp_path / "one", steps=STEPS, batch_size=BATCH,
                                                              grad_accum=2), progress=False, device="cpu")
    one.train()
    mine = {f"model/{k}": v for k, v in one.model.state_dict().items()}
    mine.update({f"ema/{k}": v for k, v in one.ema_model().state_dict().items()})
    for name, p in one.model.named_parameters():
        st = one.optimizer.state[p]
        mine.update({f"optim/{name}/exp_avg": st["exp_avg"], f"optim/{name}/exp_avg_sq": st["exp_avg_sq"]})
    for k, v in mine.items():
        torch.testing.assert_close(tensors[k], v, rtol=0, atol=TOL, msg=lambda m: f"{k}: {m}")
    torch.testing.assert_close(tensors["train/losses"], torch.tensor(one.losses, dtype=torch.float64),
                               rtol=0, atol=TOL)
    assert not torch.equal(tensors["model/0.weight"], regression_problem()[0][0].weight)  # it did train


def test_killed_torchrun_job_resumes_bit_identical(tmp_path, ddp_run):
    """Kill both ranks at step 4 (SIGKILL), resume with torchrun: the same bits as the uninterrupted job."""
    proc = torchrun(tmp_path, "--grad-accum", "2", "--checkpoint-every", "3", "--kill-at", "4")
    assert proc.returncode != 0
    assert checkpoints.load(tmp_path / CHECKPOINT_NAME)[1]["step"] == 3
    proc = torchrun(tmp_path, "--grad-accum", "2", "--checkpoint-every", "3", "--resume")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    resumed, meta = checkpoints.load(tmp_path / CHECKPOINT_NAME)
    reference, _ = checkpoints.load(ddp_run / CHECKPOINT_NAME)
    assert meta["step"] == STEPS and resumed.keys() == reference.keys()
    bad = [k for k in reference if not torch.equal(resumed[k], reference[k])]
    assert not bad, f"differ after resume: {bad[:5]}"
