"""Checked exercises of chapter 4 (``book/04_clip.ipynb``).

Each check takes the reader's function, compares it with an independent computation on a few
inputs and prints PASS or FAIL with a hint; it returns a truthy/falsy :class:`Result`.
"""

from __future__ import annotations

import math

import torch

from ..vit import PatchEmbedding
from . import Result, run_check

__all__ = ["check_clip_loss", "check_recall_at_k", "check_zero_shot", "check_patchify"]


def _loop_loss(u, v, s):
    b = u.shape[0]
    u = u / u.norm(dim=1, keepdim=True)
    v = v / v.norm(dim=1, keepdim=True)
    sim = s * (u @ v.T)
    total = 0.0
    for i in range(b):
        total += float(torch.logsumexp(sim[i], 0) - sim[i, i]) / (2 * b)      # image i -> captions
        total += float(torch.logsumexp(sim[:, i], 0) - sim[i, i]) / (2 * b)   # caption i -> images
    return total


def check_clip_loss(fn, verbose: bool = True) -> Result:
    """``fn(image_emb (B, D), text_emb (B, D), logit_scale) -> scalar``: Eq. (ch4-eq-infonce)."""

    def check():
        g = torch.Generator().manual_seed(4)
        for b, d, s in ((2, 3, 1.0), (5, 8, 14.3), (9, 4, 60.0)):
            u = torch.randn(b, d, generator=g, dtype=torch.float64) * 3
            v = torch.randn(b, d, generator=g, dtype=torch.float64) * 0.5
            got = fn(u, v, s)
            assert isinstance(got, torch.Tensor) and got.numel() == 1, \
                f"return a scalar tensor, got {type(got).__name__} {tuple(getattr(got, 'shape', ()))}"
            want = _loop_loss(u, v, s)
            assert math.isclose(float(got), want, rel_tol=1e-5, abs_tol=1e-6), \
                f"B={b}, scale={s}: got {float(got):.6f}, expected {want:.6f}"

    return run_check("symmetric InfoNCE loss", check,
                     "normalise both embeddings to unit length, logits = scale * u @ v.T, then average "
                     "F.cross_entropy(logits, arange(B)) and F.cross_entropy(logits.T, arange(B))",
                     verbose=verbose)


def check_recall_at_k(fn, verbose: bool = True) -> Result:
    """``fn(sim (N, N), k) -> float``: the fraction of rows ``i`` (captions) whose column ``i``
    (their own image) is among the ``k`` largest entries of the row."""

    def check():
        g = torch.Generator().manual_seed(5)
        for n, k in ((4, 1), (10, 1), (10, 3), (25, 5), (6, 6)):
            sim = torch.randn(n, n, generator=g)
            sim += torch.eye(n) * torch.rand(n, generator=g) * 3   # some rows find their image
            got = fn(sim, k)
            want = sum(int((sim[i] > sim[i, i]).sum()) < k for i in range(n)) / n
            assert isinstance(got, (float, int)) or (isinstance(got, torch.Tensor) and got.numel() == 1), \
                f"return a float, got {type(got).__name__}"
            assert math.isclose(float(got), want, abs_tol=1e-6), f"N={n}, k={k}: got {float(got)}, expected {want}"

    return run_check("recall@k", check, "for each row i take sim[i].topk(k).indices and check whether i is "
                     "among them; average over rows", verbose=verbose)


def check_zero_shot(fn, verbose: bool = True) -> Result:
    """``fn(image_emb (B, E), class_emb (C, E)) -> (B,)`` long: the class of highest *cosine* similarity."""

    def check():
        g = torch.Generator().manual_seed(6)
        for b, c, e in ((3, 4, 5), (20, 18, 8)):
            u = torch.randn(b, e, generator=g)
            v = torch.randn(c, e, generator=g) * torch.rand(c, 1, generator=g) * 10  # very different lengths
            got = fn(u, v)
            assert isinstance(got, torch.Tensor) and tuple(got.shape) == (b,), \
                f"return a (B,) = ({b},) tensor of class indices, got {tuple(getattr(got, 'shape', ()))}"
            want = (torch.nn.functional.normalize(u, dim=1) @ torch.nn.functional.normalize(v, dim=1).T).argmax(1)
            assert torch.equal(got.long(), want), \
                f"{int((got.long() != want).sum())} of {b} predictions differ (did you normalise the class embeddings?)"

    return run_check("zero-shot classification", check, "normalise the class embeddings (the image's length "
                     "does not change the argmax, theirs does) and take the argmax of u @ v.T over classes",
                     verbose=verbose)


def check_patchify(fn, verbose: bool = True) -> Result:
    """``fn(images (B, C, R, R), P) -> (B, N, C P P)``: the ViT's flattened patches in raster order
    (Eq. ch4-eq-vit). A linear map of them must give :class:`imagen_edu.vit.PatchEmbedding` (a conv
    with kernel = stride = P)."""

    def check():
        g = torch.Generator().manual_seed(7)
        for b, c, r, p in ((2, 3, 8, 4), (1, 3, 12, 3), (3, 2, 6, 1)):
            x = torch.randn(b, c, r, r, generator=g, dtype=torch.float64)
            got = fn(x, p)
            n = (r // p) ** 2
            assert isinstance(got, torch.Tensor) and tuple(got.shape) == (b, n, c * p * p), \
                f"R={r}, P={p}: return (B, N, C*P*P) = {(b, n, c * p * p)}, got {tuple(getattr(got, 'shape', ()))}"
            with torch.random.fork_rng(devices=[]):   # a fixed embedding; the reader's global seed untouched
                torch.manual_seed(0)
                pe = PatchEmbedding(r, p, 5, in_channels=c).double()
            want = pe(x)                                                          # (B, N, 5)
            lin = got @ pe.proj.weight.reshape(5, -1).T + pe.proj.bias
            assert torch.allclose(lin, want, atol=1e-10), \
                (f"R={r}, P={p}: your patches, times the conv's weight, do not give the conv's tokens: check "
                 "the order of the patches (row by row) and of the numbers inside one (channel, row, column)")

    return run_check("ViT patches", check, "reshape to (B, C, R/P, P, R/P, P), move the two grid axes to the "
                     "front with permute(0, 2, 4, 1, 3, 5), then reshape to (B, N, C*P*P)", verbose=verbose)


# ---------------------------------------------------------------------------------------------
# Reference solutions: the chapter's hidden solution cells and the appendix render these with
# imagen_edu.viz.show_source, and each one passes the check of the same name.
# ---------------------------------------------------------------------------------------------
def solution_clip_loss(image_emb, text_emb, logit_scale) -> torch.Tensor:
    """Eq. ch4-eq-infonce: ``(B, D)``, ``(B, D)``, scale -> scalar. Row i of the logits classifies
    image i among the captions, column i caption i among the images; the right answer is the diagonal."""
    F = torch.nn.functional
    u = F.normalize(image_emb, dim=1)
    v = F.normalize(text_emb, dim=1)
    logits = logit_scale * u @ v.T
    t = torch.arange(u.shape[0])
    return (F.cross_entropy(logits, t) + F.cross_entropy(logits.T, t)) / 2


def solution_recall_at_k(sim, k: int) -> float:
    """``sim (N, N)`` -> the share of rows i whose own column i is among the row's k largest entries."""
    top = sim.topk(k, dim=1).indices  # (N, k)
    return (top == torch.arange(sim.shape[0])[:, None]).any(dim=1).float().mean().item()


def solution_zero_shot(image_emb, class_emb) -> torch.Tensor:
    """Eq. ch4-eq-zeroshot: ``(B, E)``, ``(C, E)`` -> ``(B,)``. The image's length scales a whole
    row of scores (the argmax does not change); a class's length scales a column (it does), so only
    the class embeddings must be normalised."""
    return (image_emb @ torch.nn.functional.normalize(class_emb, dim=1).T).argmax(dim=1)


def solution_patchify(images, patch_size: int) -> torch.Tensor:
    """The ViT's patches (Dosovitskiy et al. Eq. 1): ``(B, C, R, R)`` -> ``(B, N, C * P * P)``, patch
    ``(row, col)`` at index ``row * (R / P) + col``, each flattened channel first (as a conv weight)."""
    b, c, r, _ = images.shape
    g = r // patch_size
    x = images.reshape(b, c, g, patch_size, g, patch_size)          # (B, C, row, i, col, j)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, c * patch_size * patch_size)
