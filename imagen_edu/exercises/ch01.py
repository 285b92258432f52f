"""Checks for the exercises of chapter 1 (attention and the Transformer).

Each check takes the reader's function, compares it with the package on random inputs and
returns a :class:`imagen_edu.exercises.Result` (printing PASS, or FAIL with a hint)::

    from imagen_edu.exercises import ch01
    ch01.check_softmax(my_softmax)            # my_softmax(x) -> softmax over the last axis
    ch01.check_causal_mask(my_causal_mask)    # my_causal_mask(t) -> (t, t) bool
    ch01.check_attention(my_attention)        # my_attention(q, k, v, mask=None) -> (out, weights)
    ch01.check_positions(my_positions)        # my_positions(t, d) -> (t, d)
    ch01.check_split_heads(my_split_heads)    # my_split_heads(x, h) -> (B, h, T, D/h)
"""

from __future__ import annotations

import math

import torch
from einops import rearrange

from .. import attention as A
from . import Result, run_check

__all__ = ["check_softmax", "check_causal_mask", "check_attention", "check_positions", "check_split_heads"]


def _tensor(x, name: str, shape=None) -> torch.Tensor:
    assert isinstance(x, torch.Tensor), f"{name} should return a torch.Tensor, got {type(x).__name__}"
    if shape is not None:
        assert tuple(x.shape) == tuple(shape), f"{name} returned shape {tuple(x.shape)}, expected {tuple(shape)}"
    return x


def _close(got: torch.Tensor, want: torch.Tensor, what: str, atol: float = 1e-5) -> None:
    assert torch.isfinite(got).all(), f"{what} contains NaN or inf"
    err = (got.double() - want.double()).abs().max().item()
    assert err <= atol + 1e-5 * want.abs().max().item(), f"{what} is off by up to {err:.3g}"


def check_softmax(fn, *, verbose: bool = True) -> Result:
    """``fn(x)`` must return the softmax of ``x`` over its last axis (Eq. ch1-eq-softmax)."""

    def body():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(3, 4, 7, generator=g)
        got = _tensor(fn(x.clone()), "your softmax", x.shape)
        _close(got, torch.softmax(x, -1), "softmax of a random (3, 4, 7) tensor")
        _close(got.sum(-1), torch.ones(3, 4), "the sum of each row (should be 1)")
        big = torch.tensor([[1000.0, 1001.0, 1002.0], [-1000.0, -1001.0, -1002.0]])
        _close(_tensor(fn(big.clone()), "your softmax", big.shape), torch.softmax(big, -1),
               "softmax of [1000, 1001, 1002] (large scores)")
        inf = torch.tensor([[0.5, float("-inf"), 1.5]])
        _close(_tensor(fn(inf.clone()), "your softmax", inf.shape), torch.softmax(inf, -1),
               "softmax of a row with a -inf (a masked score)")

    return run_check("softmax", body, "exponentiate x - x.max(dim=-1, keepdim=True).values (so that large "
                     "scores do not overflow), then divide by the sum over the last axis", verbose=verbose)


def check_causal_mask(fn, *, verbose: bool = True) -> Result:
    """``fn(t)`` must return the ``(t, t)`` boolean mask where query i may see keys j <= i."""

    def body():
        for t in (1, 2, 5):
            m = _tensor(fn(t), f"your causal mask for t={t}", (t, t))
            assert m.dtype == torch.bool, f"the mask should have dtype torch.bool (True = may attend), got {m.dtype}"
            want = A.causal_mask(t)
            if t > 1 and torch.equal(m, want.T):
                raise AssertionError("your mask is transposed: row i (the query) must allow columns j <= i")
            assert torch.equal(m, want), f"for t={t} you returned\n{m.int()}\nexpected\n{want.int()}"

    return run_check("causal mask", body, "torch.ones(t, t, dtype=torch.bool).tril(): the lower triangle "
                     "(diagonal included) is True", verbose=verbose)


def check_attention(fn, *, verbose: bool = True) -> Result:
    """``fn(q, k, v, mask=None)`` must return ``(output, weights)`` like the package's
    :func:`imagen_edu.attention.scaled_dot_product_attention` (Eq. ch1-eq-sdpa)."""

    def body():
        g = torch.Generator().manual_seed(1)
        q = torch.randn(2, 5, 8, generator=g)
        k = torch.randn(2, 6, 8, generator=g)
        v = torch.randn(2, 6, 3, generator=g)
        res = fn(q, k, v)
        assert isinstance(res, tuple) and len(res) == 2, "return a tuple (output, weights)"
        out, w = res
        _tensor(out, "output", (2, 5, 3))
        _tensor(w, "weights", (2, 5, 6))
        want_out, want_w = A.scaled_dot_product_attention(q, k, v)
        unscaled = torch.softmax(q @ k.transpose(-2, -1), -1)
        if torch.allclose(w, unscaled, atol=1e-5):
            raise AssertionError("your weights are softmax(q k^T) without the 1/sqrt(d) scale")
        if not torch.allclose(w.sum(-1), torch.ones(2, 5), atol=1e-4) and \
                torch.allclose(w.sum(-2), torch.ones(2, 6), atol=1e-4):
            raise AssertionError("your softmax normalises over the queries; it must run over the keys (last axis)")
        _close(w, want_w, "weights without a mask")
        _close(out, want_out, "output without a mask")
        mask = torch.rand(2, 5, 6, generator=g) > 0.5
        mask[..., 2] = True
        out, w = fn(q, k, v, mask=mask)
        want_out, want_w = A.scaled_dot_product_attention(q, k, v, mask)
        assert torch.all(w[~mask] == 0), "keys where the mask is False must get exactly zero weight"
        _close(w, want_w, "weights with a padding-style mask")
        _close(out, want_out, "output with a padding-style mask")
        out, w = fn(q[:, :4, :], k[:, :4, :], v[:, :4, :], mask=A.causal_mask(4))
        _close(out, A.scaled_dot_product_attention(q[:, :4], k[:, :4], v[:, :4], A.causal_mask(4))[0],
               "output with a causal (4, 4) mask broadcast over the batch")

    return run_check("scaled dot-product attention", body,
                     "scores = q @ k.transpose(-2, -1) / sqrt(d); scores.masked_fill(~mask, -inf) when a mask is "
                     "given; weights = softmax over the last axis; return (weights @ v, weights)", verbose=verbose)


def check_positions(fn, *, verbose: bool = True) -> Result:
    """``fn(t, d)`` must return the sinusoidal encodings ``(t, d)`` of Eq. ch1-eq-sinusoid."""

    def body():
        for t, d in ((6, 4), (20, 16)):
            pe = _tensor(fn(t, d), f"your encodings for t={t}, d={d}", (t, d))
            want = A.sinusoidal_positions(t, d)
            half = d // 2
            blocked = torch.cat([want[:, 0::2], want[:, 1::2]], dim=1)
            if torch.allclose(pe.float(), blocked, atol=1e-4):
                raise AssertionError("you put all sines first and all cosines after; the formula interleaves them: "
                                     "even columns 2i are sines, odd columns 2i+1 are cosines")
            wrong_freq = torch.arange(t)[:, None] / 10000 ** (torch.arange(half)[None] / d)
            if torch.allclose(pe[:, 0::2].float(), torch.sin(wrong_freq), atol=1e-4) and d > 2:
                raise AssertionError("the exponent is 2i/d with i = 0 .. d/2 - 1, not i/d")
            assert pe[0, 0].abs() < 1e-5 and (pe[0, 1] - 1).abs() < 1e-5, \
                "position 0 should be [sin 0, cos 0, ...] = [0, 1, 0, 1, ...]"
            _close(pe.float(), want, f"the encodings for t={t}, d={d}", atol=1e-4)

    return run_check("sinusoidal positions", body,
                     "angle[pos, i] = pos / 10000 ** (2 * i / d) for i in range(d // 2); pe[:, 0::2] = sin(angle), "
                     "pe[:, 1::2] = cos(angle)", verbose=verbose)


def check_split_heads(fn, *, verbose: bool = True) -> Result:
    """``fn(x, h)`` must split ``x (B, T, D)`` into ``h`` heads ``(B, h, T, D/h)`` the way
    :class:`imagen_edu.attention.MultiHeadAttention` does (head j takes features j*D/h .. (j+1)*D/h - 1)."""

    def body():
        x = torch.arange(2 * 3 * 8, dtype=torch.float32).reshape(2, 3, 8)
        got = _tensor(fn(x, 4), "your split", (2, 4, 3, 2))
        want = x.reshape(2, 3, 4, 2).transpose(1, 2)
        if torch.equal(got, x.reshape(2, 4, 3, 2)):
            raise AssertionError("a plain reshape to (B, h, T, D/h) mixes time steps into heads; split the "
                                 "feature axis into (h, D/h) first, then move h before T")
        assert torch.equal(got, want), "head j should hold features j*D/h .. (j+1)*D/h - 1 of every time step"
        assert math.prod(fn(torch.zeros(1, 5, 12), 3).shape) == 60

    return run_check("split heads", body, "einops: rearrange(x, 'b t (h d) -> b h t d', h=h)", verbose=verbose)


# ---------------------------------------------------------------------------------------------
# Reference solutions: the chapter's hidden solution cells and the appendix render these with
# imagen_edu.viz.show_source, and each one passes the check of the same name.
# ---------------------------------------------------------------------------------------------
def solution_softmax(s: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis, stable for large scores: subtracting the row maximum changes
    nothing (it cancels between numerator and denominator) but keeps every exponent <= 0."""
    e = torch.exp(s - s.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


def solution_causal_mask(t: int) -> torch.Tensor:
    """``(t, t)`` bool: row i (a query) may see columns j <= i, the lower triangle with the diagonal."""
    return torch.ones(t, t, dtype=torch.bool).tril()


def solution_attention(q, k, v, mask=None):
    """Eq. ch1-eq-sdpa with the mask of Eq. ch1-eq-mask: ``q (.., Tq, d)``, ``k (.., Tk, d)``,
    ``v (.., Tk, dv)`` -> ``(output (.., Tq, dv), weights (.., Tq, Tk))``."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))  # forbidden keys get exactly zero weight
    weights = torch.softmax(scores, dim=-1)  # over the keys
    return weights @ v, weights


def solution_positions(t: int, d: int) -> torch.Tensor:
    """Eq. ch1-eq-sinusoid: ``(t, d)``, sines in the even columns and cosines in the odd ones."""
    freq = 10000 ** (torch.arange(0, d, 2, dtype=torch.float32) / d)  # 10000^(2i/d)
    angle = torch.arange(t, dtype=torch.float32)[:, None] / freq  # (t, d/2)
    pe = torch.zeros(t, d)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(angle), torch.cos(angle)
    return pe


def solution_split_heads(x: torch.Tensor, h: int) -> torch.Tensor:
    """``(B, T, D) -> (B, h, T, D/h)`` with einops' ``rearrange``: split the feature axis into (h, D/h),
    then move h before T."""
    return rearrange(x, "b t (h d) -> b h t d", h=h)
