"""Tests of imagen_edu.optim: the warm-up + cosine learning rate and the EMA of the weights (chapter 6)."""

import math

import pytest
import torch

from imagen_edu.optim import ema_decay_at, ema_update, lr_at

KW = dict(base_lr=1.0, warmup_steps=4, total_steps=14, min_lr_ratio=0.1)


# ---------------------------------------------------------------------------------------------
# the learning-rate schedule, Eq. (ch6-eq-lr)
# ---------------------------------------------------------------------------------------------
def test_lr_warmup_is_linear_and_reaches_the_peak_at_its_last_step():
    """Eq. (ch6-eq-lr), warm-up: lr = base_lr * (step + 1) / warmup_steps for step < warmup_steps,
    so step 0 already trains (lr > 0) and the last warm-up step is at the peak."""
    assert [lr_at(s, **{**KW, "base_lr": 2.0}) for s in range(4)] == [0.5, 1.0, 1.5, 2.0]
    assert lr_at(0, base_lr=3.0, warmup_steps=3, total_steps=10) == 1.0


def test_lr_cosine_decay_values():
    """Eq. (ch6-eq-lr), decay: lr = lr_min + (base_lr - lr_min) (1 + cos(pi p)) / 2 with
    p = (step - W) / (S - W) clipped to [0, 1] and lr_min = min_lr_ratio * base_lr."""
    assert lr_at(4, **KW) == pytest.approx(1.0)  # the decay starts at the peak
    assert lr_at(9, **KW) == pytest.approx(0.55)  # halfway through the decay: (lr + lr_min) / 2
    w, s = 4, 14
    for step in range(w, s + 1):
        p = (step - w) / (s - w)
        assert lr_at(step, **KW) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi * p)) / 2, rel=1e-12)
    assert lr_at(14, **KW) == pytest.approx(0.1) and lr_at(100, **KW) == pytest.approx(0.1)  # floor after S
    decay = [lr_at(s, **KW) for s in range(4, 15)]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    assert lr_at(0, base_lr=2.0, warmup_steps=0, total_steps=10) == pytest.approx(2.0)
    assert lr_at(5, base_lr=2.0, warmup_steps=0, total_steps=10) == pytest.approx(1.0)  # min_lr_ratio 0
    with pytest.raises(ValueError, match="step"):
        lr_at(-1, **KW)
    with pytest.raises(ValueError, match="step"):
        lr_at(1.5, **KW)


def test_lr_at_matches_torch_schedulers():
    """Golden test, Eq. (ch6-eq-lr): torch's LinearLR then CosineAnnealingLR give the same learning rates."""
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


# ---------------------------------------------------------------------------------------------
# the EMA of the weights, Eq. (ch6-eq-ema)
# ---------------------------------------------------------------------------------------------
def test_ema_decay_warms_up_as_one_plus_s_over_ten_plus_s():
    """The EMA decay's warm-up: d_s = min(decay, (1 + s) / (10 + s)), so the first averages forget
    the random initialisation quickly (0.1 after step 0); ``warmup=False`` uses ``decay`` throughout."""
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1)
    assert ema_decay_at(8, 0.999) == pytest.approx(0.5)
    assert ema_decay_at(90, 0.999) == pytest.approx(91 / 100)
    assert ema_decay_at(10**6, 0.999) == 0.999 and ema_decay_at(0, 0.9, warmup=False) == 0.9
    assert ema_decay_at(5, 0.2) == 0.2  # never above the configured decay


def test_ema_update_keeps_decay_of_the_average():
    """Eq. (ch6-eq-ema), the direction of the EMA: ema <- d * ema + (1 - d) * weights (the old
    average keeps the weight d; swapping the two would make the EMA follow the newest weights).
    Buffers are copied, not averaged."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    model[1].running_mean.fill_(2.0)
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    ema_update(ema, model, 0.9)
    for name, p in model.named_parameters():
        torch.testing.assert_close(dict(ema.named_parameters())[name], 0.9 * before[name] + 0.1 * p)
    assert torch.equal(ema[1].running_mean, model[1].running_mean)  # buffers are copied
    ema_update(ema, model, 0.0)  # d = 0: the EMA becomes the weights
    for name, p in model.named_parameters():
        torch.testing.assert_close(dict(ema.named_parameters())[name], p)
