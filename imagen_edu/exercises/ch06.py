"""Checks for the exercises of chapter 6 (scaling up): each takes the reader's function.

Every check compares with :mod:`imagen_edu.optim`, :mod:`imagen_edu.bench` or PyTorch itself on
several inputs and returns a :class:`imagen_edu.exercises.Result`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import run_check
from ..optim import ema_update, lr_at


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) or (
        isinstance(v, torch.Tensor) and v.numel() == 1)


def check_lr_at(fn, verbose: bool = True):
    """``fn(step, base_lr, warmup_steps, total_steps, min_lr_ratio) -> float``: Eq. (ch6-eq-lr)."""
    def body():
        for base, warm, total, ratio in ((1.0, 4, 14, 0.1), (3e-4, 10, 100, 0.0), (2e-3, 0, 50, 0.25),
                                         (1e-4, 10_000, 2_500_000, 0.1)):
            probe = sorted({0, 1, max(0, warm - 1), warm, warm + 1, (warm + total) // 2, total - 1, total,
                            total + 7})
            for s in probe:
                got = fn(s, base, warm, total, ratio)
                assert _is_number(got), f"step {s}: expected a number, got {type(got).__name__}"
                want = lr_at(s, base_lr=base, warmup_steps=warm, total_steps=total, min_lr_ratio=ratio)
                assert math.isclose(float(got), want, rel_tol=1e-6, abs_tol=1e-12), (
                    f"step {s} (base_lr={base}, warmup={warm}, total={total}, min_lr_ratio={ratio}): "
                    f"expected {want:.6g}, got {float(got):.6g}")
    return run_check("lr_at (warm-up then cosine)", body,
                     "while step < warmup: base_lr * (step + 1) / warmup; afterwards p = (step - warmup) / "
                     "(total - warmup) clipped to 1, lr = lr_min + (base_lr - lr_min) * (1 + cos(pi p)) / 2 "
                     "with lr_min = min_lr_ratio * base_lr", verbose=verbose)


def check_mfu(fn, verbose: bool = True):
    """``fn(flops_per_step, step_seconds, peak_tflops) -> MFU`` as a fraction in [0, 1]: Eq. (ch6-eq-mfu)."""
    def body():
        cases = [(59_884_307_742_720, 0.30984, 989.4), (324_702_044_160, 0.1218, 989.4), (1e12, 0.5, 65.0),
                 (2e15, 10.0, 312.0)]
        for flops, dt, peak in cases:
            got = fn(flops, dt, peak)
            assert _is_number(got), f"expected a number, got {type(got).__name__}"
            want = flops / dt / (peak * 1e12)
            assert math.isclose(float(got), want, rel_tol=1e-6), (
                f"flops={flops:.4g}, step={dt} s, peak={peak} TFLOP/s: expected {want:.4g}, got {float(got):.4g}"
                + (" (a percentage? return a fraction)" if math.isclose(float(got), 100 * want, rel_tol=1e-6)
                   else ""))
    return run_check("MFU", body,
                     "achieved FLOP/s = flops_per_step / step_seconds; the peak is in TFLOP/s, so multiply it "
                     "by 1e12 before dividing", verbose=verbose)


def check_ema_update(fn, verbose: bool = True):
    """``fn(ema (tensor), weights (tensor), decay) -> new ema (tensor)``: Eq. (ch6-eq-ema)."""
    def body():
        g = torch.Generator().manual_seed(6)
        for decay in (0.0, 0.5, 0.9, 0.999):
            ema, w = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
            m_ema, m = nn.Linear(3, 5, bias=False), nn.Linear(3, 5, bias=False)
            with torch.no_grad():
                m_ema.weight.copy_(ema)
                m.weight.copy_(w)
            ema_update(m_ema, m, decay)
            got = fn(ema.clone(), w.clone(), decay)
            assert isinstance(got, torch.Tensor), f"expected a tensor, got {type(got).__name__}"
            assert got.shape == w.shape, f"expected shape {tuple(w.shape)}, got {tuple(got.shape)}"
            err = (got - m_ema.weight.detach()).abs().max().item()
            assert err < 1e-6, f"decay={decay}: largest difference from the package's ema_update is {err:.3g}"
    return run_check("EMA update", body,
                     "new = decay * ema + (1 - decay) * weights: the old average keeps the weight 'decay'",
                     verbose=verbose)


def check_conv_params(fn, verbose: bool = True):
    """``fn(c_in, c_out, k, bias=True) -> int``: parameters of ``nn.Conv2d(c_in, c_out, k, bias=bias)``."""
    def body():
        for c_in, c_out, k, bias in ((3, 64, 3, True), (64, 128, 1, True), (128, 128, 3, False), (480, 960, 3, True),
                                     (7, 5, 5, False)):
            with torch.device("meta"):
                want = sum(p.numel() for p in nn.Conv2d(c_in, c_out, k, bias=bias).parameters())
            got = fn(c_in, c_out, k, bias=bias)
            assert _is_number(got) and float(got) == int(got), f"expected an int, got {got!r}"
            assert int(got) == want, f"Conv2d({c_in}, {c_out}, {k}, bias={bias}): expected {want}, got {int(got)}"
    return run_check("conv parameters", body,
                     "each of the c_out filters has c_in * k * k weights, plus one bias per output channel",
                     verbose=verbose)


# ---------------------------------------------------------------------------------------------
# Reference solutions: the chapter's hidden solution cells and the appendix render these with
# imagen_edu.viz.show_source, and each one passes the check of the same name.
# ---------------------------------------------------------------------------------------------
def solution_lr_at(step, base_lr, warmup_steps, total_steps, min_lr_ratio):
    """Eq. ch6-eq-lr: linear warm-up to ``base_lr``, then a half cosine down to ``min_lr_ratio * base_lr``."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    p = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    lr_min = min_lr_ratio * base_lr
    return lr_min + (base_lr - lr_min) * 0.5 * (1 + math.cos(math.pi * p))


def solution_mfu(flops_per_step, step_seconds, peak_tflops):
    """Eq. ch6-eq-mfu: the FLOP/s the model's arithmetic needs, divided by the device's peak FLOP/s."""
    return flops_per_step / step_seconds / (peak_tflops * 1e12)


def solution_ema_update(ema, weights, decay):
    """Eq. ch6-eq-ema: keep ``decay`` of the average, mix in ``1 - decay`` of the new weights."""
    return decay * ema + (1 - decay) * weights


def solution_conv_params(c_in, c_out, k, bias=True):
    """A ``k x k`` convolution: ``c_out`` filters of ``c_in * k * k`` weights, plus ``c_out`` biases."""
    return c_out * c_in * k * k + (c_out if bias else 0)

