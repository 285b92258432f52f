"""Checked exercises of chapter 5 (``book/05_guidance.ipynb``, ``book/05_thresholding.ipynb``,
``book/05_imagen_cascade.ipynb``).

Each check takes the reader's function, compares it with an independent computation (loops,
the ``math`` module, numpy) on a few inputs and prints PASS or FAIL with a hint; it returns a
truthy/falsy :class:`Result`.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from ..data.captions import CONVERSE, all_captions, make_caption, parse_caption
from . import Result, run_check

__all__ = ["check_guide", "check_diversity", "check_canonical", "check_dynamic_threshold", "check_x0_from_v",
           "check_aug_alpha_bar", "check_augment_lowres"]


def _as_tensor(got, what):
    assert isinstance(got, torch.Tensor), f"{what}: return a torch.Tensor, got {type(got).__name__}"
    return got


# ---------------------------------------------------------------------------------------------
# 05_guidance
# ---------------------------------------------------------------------------------------------
def check_guide(fn, verbose: bool = True) -> Result:
    """``fn(cond_out, uncond_out, w) -> tensor``: classifier-free guidance, Eq. (ch5-eq-cfg).

    Works on any shape; ``w = 0`` must give the unconditional prediction, ``w = 1`` the conditional one.
    """

    def check():
        g = torch.Generator().manual_seed(50)
        for shape in ((2, 3, 4, 4), (5, 7)):
            c = torch.randn(shape, generator=g, dtype=torch.float64)
            u = torch.randn(shape, generator=g, dtype=torch.float64)
            for w in (0.0, 1.0, 3.0, 7.5, 0.4):
                got = _as_tensor(fn(c, u, w), f"w={w}")
                assert tuple(got.shape) == shape, f"w={w}: shape {tuple(got.shape)}, expected {shape}"
                want = c.numpy() * w + u.numpy() * (1 - w)          # the same line, written as a mixture
                assert np.allclose(got.double().numpy(), want, atol=1e-10), \
                    f"w={w}: largest error {np.abs(got.double().numpy() - want).max():.3g}"
        assert torch.equal(fn(c, u, 1.0), c) or torch.allclose(fn(c, u, 1.0), c, atol=1e-12), \
            "w = 1 must give the conditional prediction exactly"

    return run_check("classifier-free guidance", check,
                     "start from the unconditional prediction and move w times along (cond - uncond)",
                     verbose=verbose)


def check_diversity(fn, verbose: bool = True) -> Result:
    """``fn(images (P * k, 3, H, W), k) -> float``: the mean over prompts of the mean L2 distance
    between the ``k`` samples of each prompt (prompt-major: the ``k`` samples of prompt 0 first),
    Eq. (ch5-eq-diversity)."""

    def check():
        g = torch.Generator().manual_seed(51)
        for p, k, h in ((1, 2, 3), (3, 4, 4), (2, 5, 2)):
            x = torch.rand(p * k, 3, h, h, generator=g) * 2 - 1
            got = fn(x, k)
            assert isinstance(got, (int, float)) or (isinstance(got, torch.Tensor) and got.numel() == 1), \
                f"return one number, got {type(got).__name__}"
            per_prompt = []
            for i in range(p):
                grp = x[i * k:(i + 1) * k].double().numpy().reshape(k, -1)
                per_prompt.append(np.mean([np.sqrt(((grp[a] - grp[b]) ** 2).sum())
                                           for a, b in itertools.combinations(range(k), 2)]))
            want = float(np.mean(per_prompt))
            assert math.isclose(float(got), want, rel_tol=1e-5), f"P={p}, k={k}: got {float(got):.6f}, expected {want:.6f}"
        same = torch.rand(1, 3, 4, 4, generator=g).repeat(6, 1, 1, 1)
        assert abs(float(fn(same, 3))) < 1e-6, "identical samples must have diversity 0"

    return run_check("sample diversity", check,
                     "reshape to (P, k, pixels), take the L2 distance of every pair i < j inside a group "
                     "(torch.cdist), average the pairs, then the prompts", verbose=verbose)


# ---------------------------------------------------------------------------------------------
# 05_thresholding
# ---------------------------------------------------------------------------------------------
def check_canonical(fn, verbose: bool = True) -> Result:
    """``fn(caption) -> caption``: the caption that says the same with the relation ``left of`` or
    ``above`` (``A right of B`` -> ``B left of A``, ``A below B`` -> ``B above A``); captions that
    already use ``left of`` or ``above``, one-object captions and any other text come back unchanged."""

    def check():
        for p in all_captions():
            (ca, sa), rel = p.objects[0], p.relation
            text = p.text
            if rel in ("right of", "below"):                        # by hand, from the words
                (cb, sb) = p.objects[1]
                want = f"a {cb} {sb} {CONVERSE[rel]} a {ca} {sa}"
            else:
                want = text
            got = fn(text)
            assert isinstance(got, str), f"{text!r}: return a str, got {type(got).__name__}"
            assert got == want, f"{text!r}: got {got!r}, expected {want!r}"
        for other in ("a photo of a cat", "a red circle", ""):
            assert fn(other) == other, f"{other!r} must come back unchanged, got {fn(other)!r}"

    return run_check("canonical captions", check,
                     "parse the caption (data.captions.parse_caption; it raises ValueError outside the "
                     "grammar), and for 'right of' or 'below' swap the two objects and use the converse relation",
                     verbose=verbose)


def check_dynamic_threshold(fn, verbose: bool = True) -> Result:
    """``fn(x0 (B, ...), percentile) -> like x0``: dynamic thresholding, Eq. (ch5-eq-dynamic).

    Per sample: ``s = max(quantile(|x0|, percentile), 1)``, clip to ``[-s, s]``, divide by ``s``.
    """

    def check():
        g = torch.Generator().manual_seed(52)
        cases = [(torch.randn(4, 3, 5, 5, generator=g) * 2.5, 0.995),
                 (torch.randn(3, 10, generator=g) * 0.3, 0.9),          # inside [-1, 1]: s = 1
                 (torch.randn(2, 3, 8, 8, generator=g) * 4 + 1, 0.8)]
        for x0, p in cases:
            got = _as_tensor(fn(x0.clone(), p), f"percentile {p}")
            assert got.shape == x0.shape, f"shape {tuple(got.shape)}, expected {tuple(x0.shape)}"
            for i in range(x0.shape[0]):
                row = x0[i].double().numpy()
                s = max(float(np.quantile(np.abs(row), p)), 1.0)
                want = np.clip(row, -s, s) / s
                assert np.allclose(got[i].double().numpy(), want, atol=1e-5), \
                    f"sample {i} (percentile {p}, s = {s:.3f}): largest error " \
                    f"{np.abs(got[i].double().numpy() - want).max():.3g}"
            assert float(got.abs().max()) <= 1 + 1e-6, "the result must lie in [-1, 1]"

    return run_check("dynamic thresholding", check,
                     "flatten each sample, torch.quantile(x.abs(), p, dim=1), clamp(min=1), then "
                     "torch.maximum(torch.minimum(x0, s), -s) / s with s shaped (B, 1, ...)", verbose=verbose)


def check_x0_from_v(fn, verbose: bool = True) -> Result:
    """``fn(x_t, v, alpha_bar) -> x0``: the clean image a v-prediction implies, Eq. (ch5-eq-x0-from-v)."""

    def check():
        g = torch.Generator().manual_seed(53)
        for ab in (0.999, 0.5, 0.02):
            x0 = torch.rand(2, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
            eps = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
            xt = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps        # Eq. (4) of Ho et al.
            v = math.sqrt(ab) * eps - math.sqrt(1 - ab) * x0         # the v target of chapter 3
            got = _as_tensor(fn(xt, v, ab), f"alpha_bar={ab}")
            assert torch.allclose(got.double(), x0, atol=1e-9), \
                f"alpha_bar={ab}: did not recover x0 (largest error {float((got.double() - x0).abs().max()):.3g})"

    return run_check("x0 from a v-prediction", check,
                     "x_t and v are a rotation of (x0, eps) by the angle with cos = sqrt(alpha_bar): "
                     "x0 = sqrt(alpha_bar) x_t - sqrt(1 - alpha_bar) v", verbose=verbose)


# ---------------------------------------------------------------------------------------------
# 05_imagen_cascade
# ---------------------------------------------------------------------------------------------
def _abar(a, s=0.008):
    return min(max(math.cos((a + s) / (1 + s) * math.pi / 2) ** 2 / math.cos(s / (1 + s) * math.pi / 2) ** 2,
                   0.0), 1.0)


def check_aug_alpha_bar(fn, verbose: bool = True) -> Result:
    """``fn(level (B,)) -> (B,)``: ``abar(a)`` of the continuous cosine schedule, Eq. (ch5-eq-abar):
    ``f(a) / f(0)`` with ``f(a) = cos^2(((a + s) / (1 + s)) pi / 2)``, ``s = 0.008``."""

    def check():
        levels = torch.tensor([0.0, 0.05, 0.1, 0.25, 0.5, 0.9, 1.0], dtype=torch.float64)
        got = _as_tensor(fn(levels), "levels")
        assert tuple(got.shape) == (7,), f"shape {tuple(got.shape)}, expected (7,)"
        for a, y in zip(levels.tolist(), got.tolist()):
            assert math.isclose(y, _abar(a), abs_tol=1e-6), f"level {a}: got {y:.6f}, expected {_abar(a):.6f}"
        assert math.isclose(got[0].item(), 1.0, abs_tol=1e-9), "level 0 must give abar = 1 (no noise)"

    return run_check("augmentation schedule abar(a)", check,
                     "f = torch.cos((a + s) / (1 + s) * math.pi / 2) ** 2, divided by the same at a = 0",
                     verbose=verbose)


def check_augment_lowres(fn, verbose: bool = True) -> Result:
    """``fn(lowres (B, 3, h, w), level (B,), noise like lowres) -> like lowres``: noise-conditioning
    augmentation, Eq. (ch5-eq-nca): ``sqrt(abar(a)) x + sqrt(1 - abar(a)) noise`` per row."""

    def check():
        g = torch.Generator().manual_seed(54)
        x = torch.rand(4, 3, 6, 6, generator=g, dtype=torch.float64) * 2 - 1
        noise = torch.randn(4, 3, 6, 6, generator=g, dtype=torch.float64)
        level = torch.tensor([0.0, 0.1, 0.5, 1.0], dtype=torch.float64)
        got = _as_tensor(fn(x, level, noise), "augment")
        assert got.shape == x.shape, f"shape {tuple(got.shape)}, expected {tuple(x.shape)}"
        for i, a in enumerate(level.tolist()):
            ab = _abar(a)
            want = math.sqrt(ab) * x[i] + math.sqrt(1 - ab) * noise[i]
            assert torch.allclose(got[i].double(), want, atol=1e-6), \
                f"row {i} (level {a}): largest error {float((got[i].double() - want).abs().max()):.3g}"
        assert torch.allclose(got[0].double(), x[0], atol=1e-9), "level 0 must return the image unchanged"

    return run_check("noise-conditioning augmentation", check,
                     "abar = aug_alpha_bar(level) reshaped to (B, 1, 1, 1); then the forward process "
                     "abar.sqrt() * x + (1 - abar).sqrt() * noise", verbose=verbose)


# ---------------------------------------------------------------------------------------------
# Reference solutions: the chapter's hidden solution cells and the appendix render these with
# imagen_edu.viz.show_source, and each one passes the check of the same name.
# ---------------------------------------------------------------------------------------------
def solution_guide(cond_out, uncond_out, w):
    """Eq. ch5-eq-cfg: ``uncond + w (cond - uncond)``. At ``w = 1`` the two unconditional terms
    cancel exactly; ``w > 1`` extrapolates past the conditional prediction, away from the unconditional one."""
    return uncond_out + w * (cond_out - uncond_out)


def solution_diversity(images, k):
    """Eq. ch5-eq-diversity: group the prompt-major batch into ``(P, k, pixels)``, take every pair's
    L2 distance inside a group with ``cdist``, keep the ``k (k - 1) / 2`` pairs above the diagonal, average."""
    x = images.double().reshape(-1, k, images[0].numel())
    d = torch.cdist(x, x)
    i, j = torch.triu_indices(k, k, offset=1)
    return float(d[:, i, j].mean())


def solution_canonical(caption):
    """Only two relations need rewriting. Parse the caption; if it is outside the grammar (or has
    one object, or already reads ``left of`` / ``above``) return it as it is; otherwise name the
    second object first and replace the relation by its converse (``data.captions.CONVERSE``)."""
    try:
        p = parse_caption(caption)
    except ValueError:
        return caption
    if p.relation in ("right of", "below"):
        return make_caption(p.objects[::-1], CONVERSE[p.relation])
    return caption


def solution_dynamic_threshold(x0, percentile=0.995):
    """Eq. ch5-eq-dynamic: one ``s`` per sample (the percentile of ``|x0|`` over all its pixels and
    channels, at least 1), reshaped so it broadcasts over the sample's other dimensions."""
    flat = x0.reshape(x0.shape[0], -1).abs().float()
    s = torch.quantile(flat, percentile, dim=1).clamp(min=1.0)
    s = s.reshape(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return torch.maximum(torch.minimum(x0, s), -s) / s


def solution_x0_from_v(x_t, v, alpha_bar):
    """Eq. ch5-eq-x0-from-v: with ``c = sqrt(abar)`` and ``s = sqrt(1 - abar)``, ``x_t = c x0 + s eps``
    and ``v = c eps - s x0``, so ``c x_t - s v = (c^2 + s^2) x0 = x0``."""
    return math.sqrt(alpha_bar) * x_t - math.sqrt(1 - alpha_bar) * v


def solution_aug_alpha_bar(level, s=0.008):
    """Eq. ch5-eq-abar: the cosine schedule of Nichol and Dhariwal with continuous time ``a`` in
    [0, 1], normalised so that ``abar(0) = 1``."""
    f = torch.cos((level + s) / (1 + s) * math.pi / 2) ** 2
    return f / math.cos(s / (1 + s) * math.pi / 2) ** 2


def solution_augment_lowres(lowres, level, noise):
    """Eq. ch5-eq-nca: the forward process of chapter 3 at continuous level ``a``, one level per row."""
    ab = solution_aug_alpha_bar(level).to(lowres.dtype).reshape(-1, 1, 1, 1)
    return ab.sqrt() * lowres + (1 - ab).sqrt() * noise
