"""Noise-conditioning augmentation of a super-resolution stage's low-resolution input (chapter 5).

Saharia et al. 2022, Section 2.4 (``saharia2022imagen``): in training the conditioning image
is noised by the forward process to a random level ``a`` uniform in ``[0, aug_max_level]``, and
``a`` is given to the network; at sampling a fixed level (``aug_sample_level``) is used. The
stage then does not rely on details of the previous stage's output that the previous stage may
get wrong.

Derived in chapter 5 (``book/05_imagen_cascade.ipynb``), Eq. (ch5-eq-nca).
"""

from __future__ import annotations

import torch

from .diffusion import Generators, cosine_alpha_bar, gaussian_noise

__all__ = ["aug_alpha_bar", "augment_lowres"]


def aug_alpha_bar(level: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """``abar(a)`` of the continuous cosine forward process at augmentation level ``a`` in [0, 1].

    :func:`imagen_edu.diffusion.cosine_alpha_bar` (Nichol and Dhariwal, Eq. 17, with continuous
    time) clamped to ``[0, 1]``: ``abar(0) = 1`` (no noise), ``abar(1) ~ 0``.
    """
    return cosine_alpha_bar(level, s).clamp(0.0, 1.0)


def augment_lowres(lowres: torch.Tensor, level, *, noise: torch.Tensor | None = None,
                   generator: Generators = None) -> torch.Tensor:
    """Noise the low-resolution conditioning image to augmentation level ``level``.

    ``z_a = sqrt(abar(a)) x + sqrt(1 - abar(a)) eps``: the forward process, Eq. (4) of Ho et al.,
    in continuous time (:func:`aug_alpha_bar`). ``lowres (B, C, h, w)``, ``level`` a float or
    ``(B,)`` in [0, 1]. Level 0 returns ``lowres`` unchanged. Derived in chapter 5, Eq. (ch5-eq-nca).

    ``eps`` is ``noise`` if given, else drawn with ``generator``: one ``torch.Generator``, or a
    sequence of ``B`` (row ``r`` from generator ``r``; :func:`imagen_edu.diffusion.gaussian_noise`).

    The range of ``level`` is checked when it is a number or a CPU tensor; a tensor on an
    accelerator is not read back (that would stall every training step).
    """
    b = lowres.shape[0]
    level = torch.as_tensor(level, dtype=torch.float32)
    if level.dim() == 0:
        level = level.expand(b)
    if level.shape != (b,):
        raise ValueError(f"level must be a float or (B,) = ({b},), got {tuple(level.shape)}")
    if level.device.type == "cpu" and level.numel() and (not bool(torch.isfinite(level).all())
                                                         or float(level.min()) < 0 or float(level.max()) > 1):
        raise ValueError(f"augmentation levels must be finite and lie in [0, 1], got min {float(level.min())}, "
                         f"max {float(level.max())}")
    if noise is None:
        noise = gaussian_noise(lowres.shape, generator, lowres.device, lowres.dtype)
    ab = aug_alpha_bar(level).to(device=lowres.device, dtype=lowres.dtype).reshape(b, *([1] * (lowres.dim() - 1)))
    return ab.sqrt() * lowres + (1 - ab).sqrt() * noise
