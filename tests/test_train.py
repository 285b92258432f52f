"""Tests of imagen_edu.train: the schedule and EMA inside the trainer, its options, accumulation, exact
resume, errors, atomic checkpoints. (The pure schedule and EMA functions: tests/test_optim.py; batches:
tests/test_batching.py.)"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

import imagen_edu.train as train_mod
from imagen_edu import checkpoints
from imagen_edu.profiles import torch_threads
from imagen_edu.train import CHECKPOINT_NAME, TrainConfig, Trainer, _defer_sigint, resolve_amp
from support.ddp_smoke import SCRIPT, diffusion_config, diffusion_problem, regression_problem

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_thread_for_the_module():
    with torch_threads(1):  # the subprocess runs on one thread too: same kernels, same bits
        yield


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


def regression_trainer(out_dir, *, resume=False, batch_size=8, hidden=16, model_info=None, allow_changes=(),
                       options=None, **cfg):
    """A Trainer of the regression problem; ``cfg`` are TrainConfig fields, ``options`` Trainer keywords."""
    model, loss_fn, batch_fn = regression_problem(batch_size=batch_size, hidden=hidden)
    kw = dict(steps=5, batch_size=batch_size, lr=1e-2, warmup_steps=2, ema_decay=0.9, out_dir=out_dir)
    kw.update(cfg)
    return Trainer(model, loss_fn, batch_fn, TrainConfig(**kw), resume=resume, progress=False, device="cpu",
                   model_info=model_info, allow_changes=allow_changes, **(options or {}))


# ---------------------------------------------------------------------------------------------
# the learning-rate schedule and the EMA inside the trainer
# ---------------------------------------------------------------------------------------------
def test_trainer_steps_with_the_lr_of_the_schedule():
    """Eq. (ch6-eq-lr) in the trainer: optimizer step s uses ``config.lr_at(s)`` (warm-up from
    (s + 1) / W, not s / W), and the history records it."""
    seen = []
    tr = regression_trainer(None, steps=6, warmup_steps=3, log_every=1)
    real_step = tr.optimizer.step

    def spy(*a, **k):
        seen.append(tr.optimizer.param_groups[0]["lr"])
        return real_step(*a, **k)

    tr.optimizer.step = spy
    tr.train()
    assert seen == [tr.config.lr_at(s) for s in range(6)] and seen[0] == pytest.approx(1e-2 / 3)
    assert [h["lr"] for h in tr.history] == seen


def test_trainer_ema_warms_up_its_decay():
    """The EMA decay's warm-up inside the trainer: after step 0 the decay is min(0.999, 1/10) = 0.1,
    so ema = 0.1 * w_0 + 0.9 * w_1 (with the configured 0.999 the EMA would barely move)."""
    tr = regression_trainer(None, steps=1, ema_decay=0.999)
    w0 = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.train()
    w1 = tr.model.state_dict()
    for k in w0:
        torch.testing.assert_close(tr.ema_model().state_dict()[k], 0.1 * w0[k] + 0.9 * w1[k])


def test_trainer_ema_follows_the_formula(tmp_path):
    """Eq. (ch6-eq-ema) inside the trainer: ema <- d * ema + (1 - d) * weights after each step (the
    average keeps the weight d = 0.75, so swapping the two terms fails)."""
    tr = regression_trainer(None, steps=2, ema_decay=0.75, ema_warmup=False)
    w0 = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.config.steps = 1
    tr.train()
    w1 = {k: v.clone() for k, v in tr.model.state_dict().items()}
    for k in w0:
        torch.testing.assert_close(tr.ema_model().state_dict()[k], 0.75 * w0[k] + 0.25 * w1[k])
        assert not torch.equal(w0[k], w1[k])


# ---------------------------------------------------------------------------------------------
# options that let a chapter keep its own recipe (chapters 2 and 4 train through the trainer)
# ---------------------------------------------------------------------------------------------
def test_decay_vectors_puts_every_parameter_in_one_decayed_group():
    """AdamW's decoupled weight decay on the matrices only by default; ``decay_vectors`` decays the
    biases too (one group), as ``torch.optim.AdamW(model.parameters())`` does."""
    default = regression_trainer(None, weight_decay=0.1)
    assert [(g["weight_decay"], len(g["params"])) for g in default.optimizer.param_groups] == [(0.1, 2), (0.0, 2)]
    every = regression_trainer(None, weight_decay=0.1, options={"decay_vectors": True})
    assert [(g["weight_decay"], len(g["params"])) for g in every.optimizer.param_groups] == [(0.1, 4)]
    assert every.optimizer.param_groups[0]["params"] == list(every.model.parameters())  # the model's order


def test_after_update_runs_after_each_update_before_the_ema(tmp_path):
    """``after_update(model)`` sees the weights after the optimizer's update, and the EMA averages
    what it leaves (CLIP clamps its temperature there)."""
    calls = []

    def zero_first_bias(model):
        calls.append(float(model[0].bias.detach().abs().sum()))
        with torch.no_grad():
            model[0].bias.zero_()

    tr = regression_trainer(None, steps=3, ema_decay=0.5, ema_warmup=False, options={"after_update": zero_first_bias})
    b0 = tr.model[0].bias.detach().clone()
    tr.train()
    assert len(calls) == 3 and all(c > 0 for c in calls)  # the update had moved the bias
    assert torch.equal(tr.model[0].bias, torch.zeros_like(b0))
    torch.testing.assert_close(tr.ema_model()[0].bias, 0.125 * b0)  # three averages with 0: 0.5^3 b0
    with pytest.raises(TypeError, match="after_update must be a callable"):
        regression_trainer(None, options={"after_update": 3})


def test_a_given_generator_is_the_batch_generator_as_seeded():
    """``generator``: the batch function draws from the generator as the caller seeded it (not
    reseeded from config.seed), so a loop that drew from ``Generator().manual_seed(seed)`` is reproduced."""
    model, loss_fn, batch_fn = regression_problem()
    drawn = []

    def drawing(step, rank, ws, g):
        drawn.append(torch.randint(0, 1000, (3,), generator=g))
        return batch_fn(step, rank, ws, g)

    g = torch.Generator().manual_seed(7)
    Trainer(model, loss_fn, drawing, TrainConfig(steps=2, batch_size=8), progress=False, device="cpu",
            generator=g).train()
    want = torch.Generator().manual_seed(7)
    assert all(torch.equal(d, torch.randint(0, 1000, (3,), generator=want)) for d in drawn)
    with pytest.raises(TypeError, match="generator"):
        Trainer(model, loss_fn, batch_fn, TrainConfig(steps=2, batch_size=8), progress=False, device="cpu",
                generator=7)


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
