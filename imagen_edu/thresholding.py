"""Thresholding the predicted ``x0`` at each sampling step (chapter 3 clips; chapter 5 is Imagen's).

Saharia et al. 2022, Section 2.3 (``saharia2022imagen``). Image data live in ``[-1, 1]``, so a
sampler may clip its prediction of the clean image before it computes the next state:

* :func:`static_threshold` clips elementwise (chapter 3's samplers do this by default);
* :func:`dynamic_threshold` rescales a saturated sample back inside (Imagen, chapter 5).

The samplers in :mod:`imagen_edu.diffusion` call these functions (``model_predictions``); nothing
else clips ``x0``.
"""

from __future__ import annotations

import torch
from einops import rearrange

__all__ = ["THRESHOLDS", "static_threshold", "dynamic_threshold"]


def static_threshold(x0: torch.Tensor) -> torch.Tensor:
    """Static thresholding: clip the predicted ``x0 (B, ...)`` to ``[-1, 1]`` elementwise.

    Chapter 3's samplers clip with it (``clip_denoised=True``); derived in chapter 5,
    Eq. (ch5-eq-static). Saharia et al. 2022, Section 2.3.
    """
    return x0.clamp(-1.0, 1.0)


def dynamic_threshold(x0: torch.Tensor, percentile: float = 0.995) -> torch.Tensor:
    """Dynamic thresholding of the predicted ``x0 (B, ...)`` (Saharia et al. 2022, Section 2.3).

    Per sample, ``s`` is the ``percentile`` quantile of ``|x0|``, then ``s = max(s, 1)``;
    ``x0`` is clipped to ``[-s, s]`` and divided by ``s``. So a sample whose values already lie in
    ``[-1, 1]`` (``s = 1``) is only clipped (static thresholding), and a saturated one is pushed
    back inside by rescaling instead of being flattened at +-1.

    Derived in chapter 5, Eq. (ch5-eq-dynamic). Returns a tensor like ``x0`` in ``[-1, 1]``.
    """
    if not isinstance(x0, torch.Tensor) or x0.dim() < 2:
        raise ValueError(f"x0 must be a tensor (B, ...) with a batch dimension, got "
                         f"{getattr(x0, 'shape', type(x0).__name__)}")
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not 0.0 < percentile <= 1.0:
        raise ValueError(f"percentile must be a number in (0, 1], got {percentile!r}")
    flat = rearrange(x0, "b ... -> b (...)").abs().float()
    s = torch.quantile(flat, float(percentile), dim=1).clamp(min=1.0).to(x0.dtype)   # (B,)
    s = s.reshape(-1, *([1] * (x0.dim() - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) / s


THRESHOLDS = ("dynamic", "static", "none")
