"""Tests of imagen_edu.train: schedule, EMA, accumulation, exact resume, errors, atomic checkpoints."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from imagen_edu import checkpoints
from support.ddp_smoke import SCRIPT, diffusion_config, diffusion_problem, regression_problem
from imagen_edu.train import (CHECKPOINT_NAME, DatasetBatches, TrainConfig, Trainer, ema_decay_at, ema_update, lr_at,
                              resolve_amp, split_batch)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # the subprocess runs on one thread too: same kernels, same bits
    yield
    torch.set_num_threads(old)


def full_state(trainer):
    """Every tensor a resumed run must reproduce: weights, EMA, optimizer moments and steps."""
    out = {f"model/{k}": v for k, v in trainer.model.state_dict().items()}
    out.update({f"ema/{k}": v for k, v in trainer.ema_model().state_dict().items()})
    for i, st in trainer.optimizer.state_dict()["state"].items():
        out.update({f"optim/{i}/{k}": v for k, v in st.items()})
    return out


def assert_bit_identical(a: dict, b: dict):
    assert a.keys() == b.keys()
    bad = [k for k in a if not torch.equal(a[k], b[k])]
    assert not bad, f"{len(bad)} tensors differ, e.g. {bad[:3]}"


def regression_trainer(out_dir, *, resume=False, batch_size=8, hidden=16, model_info=None, allow_changes=(), **cfg):
    model, loss_fn, batch_fn = regression_problem(batch_size=batch_size, hidden=hidden)
    kw = dict(steps=5, batch_size=batch_size, lr=1e-2, warmup_steps=2, ema_decay=0.9, out_dir=out_dir)
    kw.update(cfg)
    return Trainer(model, loss_fn, batch_fn, TrainConfig(**kw), resume=resume, progress=False, device="cpu",
                   model_info=model_info, allow_changes=allow_changes)


# ---------------------------------------------------------------------------------------------
# the learning-rate schedule and the EMA
# ---------------------------------------------------------------------------------------------
def test_lr_at_warmup_then_cosine_values():
    kw = dict(base_lr=1.0, warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    assert [lr_at(s, **kw) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lr_at(4, **kw) == pytest.approx(1.0)  # the decay starts at the peak
    assert lr_at(9, **kw) == pytest.approx(0.55)  # halfway through the decay: (lr + lr_min) / 2
    assert lr_at(14, **kw) == pytest.approx(0.1) and lr_at(100, **kw) == pytest.approx(0.1)
    decay = [lr_at(s, **kw) for s in range(4, 15)]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    assert lr_at(0, base_lr=2.0, warmup_steps=0, total_steps=10) == pytest.approx(2.0)
    assert TrainConfig(lr=1.0, warmup_steps=4, steps=14, min_lr_ratio=0.1).lr_at(9) == lr_at(9, **kw)
    with pytest.raises(ValueError, match="step"):
        lr_at(-1, **kw)


def test_lr_at_matches_torch_schedulers():
    """Golden test: torch's LinearLR then CosineAnnealingLR give the same learning rates."""
    warm, total, base, ratio = 5, 30, 0.1, 0.2
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [
        torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / warm, end_factor=1.0, total_iters=warm - 1),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - warm, eta_min=base * ratio)],
        milestones=[warm])
    theirs = []
    for _ in range(total):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    ours = [lr_at(s, base_lr=base, warmup_steps=warm, total_steps=total, min_lr_ratio=ratio) for s in range(total)]
    torch.testing.assert_close(torch.tensor(ours, dtype=torch.float64), torch.tensor(theirs, dtype=torch.float64),
                               rtol=1e-9, atol=1e-12)


def test_ema_update_formula():
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1)
    assert ema_decay_at(90, 0.999) == pytest.approx(91 / 100)
    assert ema_decay_at(10**6, 0.999) == 0.999 and ema_decay_at(0, 0.9, warmup=False) == 0.9
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    model[1].running_mean.fill_(2.0)
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    ema_update(ema, model, 0.75)
    for name, p in model.named_parameters():
        torch.testing.assert_close(dict(ema.named_parameters())[name], 0.75 * before[name] + 0.25 * p)
    assert torch.equal(ema[1].running_mean, model[1].running_mean)  # buffers are copied


def test_trainer_ema_follows_the_formula(tmp_path):
    tr = regression_trainer(None, steps=2, ema_decay=0.5, ema_warmup=False)
    w0 = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.config.steps = 1
    tr.train()
    w1 = {k: v.clone() for k, v in tr.model.state_dict().items()}
    for k in w0:
        torch.testing.assert_close(tr.ema_model().state_dict()[k], 0.5 * w0[k] + 0.5 * w1[k])
        assert not torch.equal(w0[k], w1[k])


# ---------------------------------------------------------------------------------------------
# gradient accumulation
# ---------------------------------------------------------------------------------------------
def test_grad_accum_equals_one_big_batch():
    big = regression_trainer(None, steps=6, grad_accum=1)
    big.train()
    acc = regression_trainer(None, steps=6, grad_accum=4)
    acc.train()
    a, b = full_state(big), full_state(acc)
    for k in a:  # float32 sums in another order: equal to rounding
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor(big.losses), torch.tensor(acc.losses), rtol=1e-6, atol=1e-7)


def test_split_batch_structures():
    x = torch.arange(12).reshape(6, 2)
    caps = [f"c{i}" for i in range(6)]
    parts = split_batch((x, caps), 3)
    assert [p[1] for p in parts] == [caps[0:2], caps[2:4], caps[4:6]]
    assert torch.equal(torch.cat([p[0] for p in parts]), x)
    d = split_batch({"x": x, "y": [x, x + 1], "w": None}, 2)
    assert torch.equal(d[1]["y"][1], (x + 1)[3:]) and d[0]["w"] is None
    with pytest.raises(ValueError, match="4 equal"):
        split_batch(x, 4)
    with pytest.raises(TypeError, match="grad_accum"):
        split_batch(object(), 2)


# ---------------------------------------------------------------------------------------------
# exact resume: the headline test
# ---------------------------------------------------------------------------------------------
STEPS = 8


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """The uninterrupted run of the tiny diffusion problem (all random generators in use)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("reference")
    model, loss_fn, batch_fn = diffusion_problem()
    tr = Trainer(model, loss_fn, batch_fn, diffusion_config(out, steps=STEPS, checkpoint_every=2), progress=False,
                 device="cpu")
    tr.train()
    return full_state(tr), list(tr.losses)


def _interrupting(batch_fn, at_step):
    state = {"fired": False}

    def fn(step, rank, world_size, generator):
        batch = batch_fn(step, rank, world_size, generator)  # draws from the generators first
        if step == at_step and not state["fired"]:
            state["fired"] = True
            raise KeyboardInterrupt
        return batch

    return fn


@pytest.mark.parametrize("kill_at", [1, 5])
def test_interrupt_and_resume_is_bit_identical(tmp_path, reference_run, kill_at):
    ref_state, ref_losses = reference_run
    model, loss_fn, batch_fn = diffusion_problem()
    cfg = diffusion_config(tmp_path, steps=STEPS, checkpoint_every=2)
    tr = Trainer(model, loss_fn, _interrupting(batch_fn, kill_at), cfg, progress=False, device="cpu")
    with pytest.raises(KeyboardInterrupt):
        tr.train()
    _, meta = checkpoints.load(tmp_path / CHECKPOINT_NAME)
    assert meta["step"] == kill_at  # the checkpoint written on interrupt holds the last finished step
    torch.manual_seed(1234)  # the fresh process's generators are anything: resume must restore them
    model, loss_fn, batch_fn = diffusion_problem()
    with torch.no_grad():  # other initial weights: the checkpoint must overwrite them
        for p in model.parameters():
            p.add_(1.0)
    tr2 = Trainer(model, loss_fn, batch_fn, diffusion_config(tmp_path, steps=STEPS, checkpoint_every=2),
                  resume=True, progress=False, device="cpu")
    assert tr2.resumed_from == kill_at and tr2.exact_resume
    tr2.train()
    assert tr2.losses == ref_losses
    assert_bit_identical(full_state(tr2), ref_state)


def test_interrupt_then_continue_in_the_same_process(tmp_path, reference_run):
    """Jupyter: press stop, then run the cell again: the same trainer goes on exactly."""
    ref_state, ref_losses = reference_run
    model, loss_fn, batch_fn = diffusion_problem()
    tr = Trainer(model, loss_fn, _interrupting(batch_fn, 3), diffusion_config(None, steps=STEPS), progress=False,
                 device="cpu")
    with pytest.raises(KeyboardInterrupt):
        tr.train()
    assert tr.step == 3
    tr.train()
    assert tr.losses == ref_losses
    assert_bit_identical(full_state(tr), ref_state)


def test_ctrl_c_never_cuts_an_update_in_half():
    import signal

    from imagen_edu.train import _defer_sigint

    # a shell's background job starts with SIGINT ignored: install Python's handler for the test
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        done = []
        with pytest.raises(KeyboardInterrupt):
            with _defer_sigint():
                os.kill(os.getpid(), signal.SIGINT)  # arrives "during" the optimizer update
                done.append("update finished")
        assert done == ["update finished"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    finally:
        signal.signal(signal.SIGINT, before)


def test_killed_process_resumes_bit_identical(tmp_path, reference_run):
    """A process killed with SIGKILL (no clean-up at all) resumes from its last periodic checkpoint."""
    ref_state, ref_losses = reference_run
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, SCRIPT, "--problem", "diffusion", "--out",
                           str(tmp_path), "--steps", str(STEPS), "--batch", "4", "--checkpoint-every", "2",
                           "--kill-at", "5"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert sorted(os.listdir(tmp_path)) == [CHECKPOINT_NAME]  # no temporary files left behind
    model, loss_fn, batch_fn = diffusion_problem()
    tr = Trainer(model, loss_fn, batch_fn, diffusion_config(tmp_path, steps=STEPS, checkpoint_every=2),
                 resume=True, progress=False, device="cpu")
    assert tr.resumed_from == 4
    tr.train()
    assert tr.losses == ref_losses
    assert_bit_identical(full_state(tr), ref_state)


def test_resume_of_a_finished_run_does_nothing(tmp_path):
    done = regression_trainer(tmp_path, steps=3)
    done.train()
    tr = regression_trainer(tmp_path, resume=True, steps=3, log_every=1)  # log_every may change on resume
    assert tr.resumed_from == 3 and tr.train() == done.losses
    assert_bit_identical(full_state(tr), full_state(done))


def test_resume_without_a_checkpoint_starts_at_zero(tmp_path):
    tr = regression_trainer(tmp_path / "new", resume=True, steps=2)
    assert tr.resumed_from is None and tr.step == 0
    tr.train()
    assert (tmp_path / "new" / CHECKPOINT_NAME).is_file()


# ---------------------------------------------------------------------------------------------
# bad input: clear errors before any step
# ---------------------------------------------------------------------------------------------
def test_nan_loss_stops_naming_the_step():
    model, loss_fn, batch_fn = regression_problem()

    def bad_loss(m, batch):
        loss = loss_fn(m, batch)
        return loss * float("nan") if bad_loss.calls == 3 else loss

    def counting_batch(step, rank, ws, g):
        bad_loss.calls = step
        return batch_fn(step, rank, ws, g)

    tr = Trainer(model, bad_loss, counting_batch, TrainConfig(steps=6, batch_size=8), progress=False, device="cpu")
    with pytest.raises(FloatingPointError, match="step 3"):
        tr.train()
    assert tr.step == 3 and len(tr.losses) == 3
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())  # the bad step changed nothing


def test_resume_with_another_config_names_the_fields(tmp_path):
    regression_trainer(tmp_path, steps=3).train()
    with pytest.raises(ValueError, match=r"lr: saved 0.01, now 0.02.*steps: saved 3, now 4"):
        regression_trainer(tmp_path, resume=True, steps=4, lr=0.02)
    with pytest.raises(ValueError, match="already exists: pass resume=True"):
        regression_trainer(tmp_path, steps=3)


def test_allow_changes_extends_a_finished_run(tmp_path):
    regression_trainer(tmp_path, steps=3).train()
    tr = regression_trainer(tmp_path, resume=True, steps=5, allow_changes=("steps",))
    assert tr.resumed_from == 3 and not tr.exact_resume and tr.resume_changes == ["steps: saved 3, now 5"]
    assert len(tr.train()) == 5
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        regression_trainer(tmp_path, resume=True, steps=5, allow_changes=("stepz",))


def test_resume_with_another_model_says_so(tmp_path):
    regression_trainer(tmp_path, steps=2).train()
    with pytest.raises(ValueError, match=r"another model.*0\.weight: saved \[16, 4\], now \[32, 4\]"):
        regression_trainer(tmp_path, resume=True, steps=2, hidden=32)
    with pytest.raises(ValueError, match="another model or stage"):
        regression_trainer(tmp_path, resume=True, steps=2, model_info={"stage": "sr"})


def test_world_size_must_divide_the_batch(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="world size 3 .* does not divide batch_size=8"):
        regression_trainer(None)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="grad_accum=3 does not divide the per-rank batch of 4"):
        regression_trainer(None, grad_accum=3)


def test_bad_config_and_arguments():
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(amp="fp8")
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=0)
    with pytest.raises(ValueError, match="checkpoint_every needs an out_dir"):
        TrainConfig(checkpoint_every=5)
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)
    with pytest.raises(ValueError, match="needs TrainConfig.out_dir"):
        regression_trainer(None, resume=True)
    model, loss_fn, batch_fn = regression_problem()
    with pytest.raises(TypeError, match="scalar tensor"):
        Trainer(model, lambda m, b: 1.0, batch_fn, TrainConfig(steps=1, batch_size=8), progress=False,
                device="cpu").train()
    assert resolve_amp("auto", "cpu") is None and resolve_amp("off", "cpu") is None
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve_amp("bf16", "cpu")


# ---------------------------------------------------------------------------------------------
# checkpoints: atomic, complete, no pickle
# ---------------------------------------------------------------------------------------------
def test_failed_write_leaves_the_old_checkpoint_and_no_partial_file(tmp_path, monkeypatch):
    tr = regression_trainer(tmp_path, steps=2)
    tr.train()
    path = tmp_path / CHECKPOINT_NAME
    before = path.read_bytes()
    import safetensors.torch

    def broken_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        tr.save_checkpoint()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == [CHECKPOINT_NAME]


def test_checkpoint_contents(tmp_path):
    tr = regression_trainer(tmp_path, steps=3, weight_decay=0.1)
    tr.train()
    tensors, meta = checkpoints.load(tmp_path / CHECKPOINT_NAME)
    assert meta["step"] == 3 and meta["config"]["weight_decay"] == 0.1 and meta["world_size"] == 1
    assert {"model/0.weight", "ema/0.weight", "optim/0.weight/exp_avg", "optim/0.weight/exp_avg_sq",
            "optim/0.weight/step", "rng/0/torch", "rng/0/generator", "train/losses"} <= set(tensors)
    assert len(meta["rng"]["0"]["python"][1]) == 625 and len(meta["rng"]["0"]["numpy"][1]) == 624
    decay = {g["weight_decay"]: g["params"] for g in meta["param_groups"]}
    assert decay[0.1] == ["0.weight", "2.weight"] and decay[0.0] == ["0.bias", "2.bias"]
    assert torch.equal(tensors["train/losses"], torch.tensor(tr.losses, dtype=torch.float64))


def test_export_writes_the_ema_weights(tmp_path):
    tr = regression_trainer(None, steps=3)
    tr.train()
    path = tr.export(tmp_path / "ema.safetensors", {"model_config": {"hidden": 16}})
    weights, meta = checkpoints.load(path)
    assert meta["step"] == 3 and meta["ema"] and meta["model_config"] == {"hidden": 16}
    assert_bit_identical(weights, tr.ema_model().state_dict())
    assert not torch.equal(weights["0.weight"], tr.model.state_dict()["0.weight"])


def test_max_seconds_stops_with_a_checkpoint(tmp_path):
    tr = regression_trainer(tmp_path, steps=10_000, max_seconds=0.2)
    tr.train()
    assert tr.stopped_early and 0 < tr.step < 10_000
    assert checkpoints.load(tmp_path / CHECKPOINT_NAME)[1]["step"] == tr.step


def test_fp16_gradient_scaler_path_resumes_exactly(tmp_path, monkeypatch):
    """The T4 path (float16 autocast + GradScaler), exercised on the CPU by forcing the autocast dtype."""
    import imagen_edu.train as train_mod

    monkeypatch.setattr(train_mod, "resolve_amp", lambda amp, device: torch.float16)
    ref = regression_trainer(None, steps=6)
    assert ref.scaler.is_enabled()
    ref.train()
    model, loss_fn, batch_fn = regression_problem()
    cfg = TrainConfig(steps=6, batch_size=8, lr=1e-2, warmup_steps=2, ema_decay=0.9, out_dir=tmp_path)
    tr = Trainer(model, loss_fn, _interrupting(batch_fn, 4), cfg, progress=False, device="cpu")
    with pytest.raises(KeyboardInterrupt):
        tr.train()
    assert checkpoints.load(tmp_path / CHECKPOINT_NAME)[1]["scaler"]["_growth_tracker"] == 4
    tr2 = regression_trainer(tmp_path, resume=True, steps=6)
    assert tr2.scaler.state_dict() == {**ref.scaler.state_dict(), "_growth_tracker": 4}
    tr2.train()
    assert tr2.losses == ref.losses and tr2.scaler.state_dict() == ref.scaler.state_dict()
    assert_bit_identical(full_state(tr2), full_state(ref))


# ---------------------------------------------------------------------------------------------
# real data sets: sharded, shuffled, resumable batches
# ---------------------------------------------------------------------------------------------
def test_dataset_batches_shard_and_cover_epochs():
    data = torch.arange(10).float()[:, None] * torch.ones(1, 2)
    one = DatasetBatches(data, 4, seed=1)
    two = DatasetBatches(data, 4, seed=1)
    for step in range(6):
        whole = one.indices(step, 0, 1)
        assert two.indices(step, 0, 2) + two.indices(step, 1, 2) == whole
    stream = [i for s in range(5) for i in one.indices(s)]  # 20 items = 2 epochs of 10
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    assert stream[:10] != stream[10:]  # a new permutation each epoch
    batch = one(2, 1, 2, None)
    assert torch.equal(batch, data[one.indices(2, 1, 2)])
    with pytest.raises(ValueError, match="world size 3"):
        one.indices(0, 0, 3)
    workers = DatasetBatches(data, 4, seed=1, num_workers=1)  # a DataLoader with a worker: same batches
    rng = torch.get_rng_state()
    for step in (0, 1, 4, 2):  # jumping to another step (a resume) restarts the loader there
        assert torch.equal(workers(step, 1, 2, None), one(step, 1, 2, None))
    assert torch.equal(torch.get_rng_state(), rng)  # starting loaders leaves the global generator alone


def test_dataset_batches_train_like_a_procedural_source(tmp_path):
    model, loss_fn, _ = regression_problem()
    x, y = regression_problem(batch_size=40)[2](0, 0, 1, None)
    ds = list(zip(x, y))
    tr = Trainer(model, loss_fn, DatasetBatches(ds, 8, seed=0), TrainConfig(steps=4, batch_size=8, out_dir=tmp_path),
                 progress=False, device="cpu")
    losses = tr.train()
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
