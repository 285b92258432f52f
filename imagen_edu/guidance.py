"""Text conditioning and classifier-free guidance (chapter 5).

Saharia et al. 2022, Sections 2.1 and 2.2 (``saharia2022imagen``); Ho and Salimans 2022
(``ho2022classifierfree``):

* :func:`masked_mean` pools the text tokens ``(B, T, D)`` into the vector ``(B, D)`` that a stage
  adds to its timestep embedding (padding does not count); :class:`AttentionPool` is the learned
  alternative the paper compares it with (a query that attends over the tokens, Appendix A.13a);
* :func:`guide` is classifier-free guidance, ``out = out_uncond + w (out_cond - out_uncond)``;
* :class:`GuidedDenoiser` wraps a stage as the denoiser ``f(x_t, t)`` that the sampler calls,
  running the conditional and the unconditional prediction as one doubled batch.

**Where guidance acts.** :class:`GuidedDenoiser` combines the two predictions in the space of
whatever the network outputs (eps, x0 or v; see :mod:`imagen_edu.diffusion`). For a fixed
``x_t`` and ``t`` the predicted eps and x0 are *affine* functions of the network output
(``x0 = sqrt(abar) x_t - sqrt(1 - abar) v``, ``eps = sqrt(1 - abar) x_t + sqrt(abar) v``, or the
identity), and guidance is an affine combination (weights ``1 - w`` and ``w`` sum to 1), so
guiding the output is *exactly* the same as guiding eps (or x0): the paper's formula holds
whatever the objective.

Derived in chapter 5 (``book/05_guidance.ipynb``), Eq. (ch5-eq-cfg).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .attention import MultiHeadAttention

__all__ = ["masked_mean", "AttentionPool", "POOLINGS", "guide", "GuidedDenoiser"]

#: how a stage pools its text tokens into the vector added to the timestep embedding
POOLINGS = ("mean", "attention")


def masked_mean(emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the real tokens: ``emb (B, T, D)``, ``mask (B, T)`` bool -> ``(B, D)``.

    The pooled text vector added to the U-Net's timestep embedding (Saharia et al. 2022,
    Appendix B). Padding tokens do not count.
    """
    if emb.dim() != 3 or mask.shape != emb.shape[:2]:
        raise ValueError(f"emb must be (B, T, D) and mask (B, T), got {tuple(emb.shape)} and {tuple(mask.shape)}")
    m = mask.to(emb.dtype)[..., None]
    return (emb * m).sum(1) / m.sum(1).clamp(min=1.0)


class AttentionPool(nn.Module):
    """Attention pooling: one learned query attends over the real tokens, ``(B, T, D) -> (B, D)``.

    Saharia et al. 2022, Appendix A.13a compare it with the masked mean (:func:`masked_mean`) as
    the pooled text vector. The query is a parameter ``q (D)``, the same for every caption; the
    pooled vector is chapter 1's multi-head attention (Eq. (ch1-eq-mha)) from ``q`` to the tokens,
    with padding masked out: ``softmax(q W_q (X W_k)^T / sqrt(d)) X W_v W_o`` per head. Unlike the
    mean, the weights depend on the words, so it can learn which ones to listen to.
    """

    def __init__(self, dim: int, n_heads: int = 4):
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        heads = n_heads if dim % n_heads == 0 else 1
        self.query = nn.Parameter(torch.randn(dim) * dim ** -0.5)
        self.attn = MultiHeadAttention(dim, heads)

    def forward(self, emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``emb (B, T, D)``, ``mask (B, T)`` bool with at least one True per row -> ``(B, D)``."""
        if emb.dim() != 3 or mask.shape != emb.shape[:2] or mask.dtype != torch.bool:
            raise ValueError(f"emb must be (B, T, D) and mask bool (B, T), got {tuple(emb.shape)} and "
                             f"{mask.dtype} {tuple(mask.shape)}")
        if not bool(mask.any(1).all()):
            raise ValueError("every row of mask needs at least one real token to attend to")
        q = self.query.to(emb.dtype).expand(emb.shape[0], 1, -1)
        out, _ = self.attn(q, emb, key_mask=mask, need_weights=False)
        return out[:, 0]


def guide(cond_out: torch.Tensor, uncond_out: torch.Tensor, w: float) -> torch.Tensor:
    """Classifier-free guidance, Eq. (ch5-eq-cfg): ``uncond + w (cond - uncond)``.

    Ho and Salimans 2022; Saharia et al. 2022, Section 2.2. ``w = 1`` gives the conditional
    prediction, ``w = 0`` the unconditional one, ``w > 1`` over-emphasises the text.
    """
    return uncond_out + w * (cond_out - uncond_out)


class GuidedDenoiser:
    """Classifier-free guidance as a denoiser ``f(x_t, t) -> output`` for :meth:`GaussianDiffusion.sample`.

    ``stage`` is an :class:`~imagen_edu.stage.ImagenStage` (anything called as
    ``stage(x_t, t, text_emb=, text_mask=, drop=, lowres=, lowres_noise_level=)``). One forward
    pass on the doubled batch ``[x_t; x_t]`` with ``[text; null]``, then
    ``out = out_uncond + w (out_cond - out_uncond)`` (:func:`guide`), in the network's output
    space (equivalent to guiding eps: see the module docstring). With ``w == 1`` and
    ``skip_uncond=True`` (the default) only the conditional half is computed.

    Derived in chapter 5, Eq. (ch5-eq-cfg).
    """

    def __init__(self, stage, text_emb: torch.Tensor, text_mask: torch.Tensor, guidance: float,
                 lowres: torch.Tensor | None = None, lowres_noise_level: torch.Tensor | None = None,
                 skip_uncond: bool = True):
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance) \
                or guidance < 0:
            raise ValueError(f"guidance must be a finite number >= 0, got {guidance!r}")
        self.stage, self.w = stage, float(guidance)
        self.text_emb, self.text_mask = text_emb, text_mask
        self.lowres, self.level = lowres, lowres_noise_level
        self.skip_uncond = skip_uncond

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        lowres = {}
        if self.lowres is not None:
            lowres = {"lowres": self.lowres, "lowres_noise_level": self.level}
        if self.w == 1.0 and self.skip_uncond:
            return self.stage(x, t, text_emb=self.text_emb, text_mask=self.text_mask, **lowres)
        # rows b.. see the null text; built on x's device (no host-to-device copy per step)
        drop = torch.arange(2 * b, device=x.device) >= b
        two = {k: torch.cat([v, v]) for k, v in lowres.items()}
        out = self.stage(torch.cat([x, x]), torch.cat([t, t]), text_emb=torch.cat([self.text_emb, self.text_emb]),
                         text_mask=torch.cat([self.text_mask, self.text_mask]), drop=drop, **two)
        cond, uncond = out.chunk(2)
        return guide(cond, uncond, self.w)
