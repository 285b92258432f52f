"""Image tensors as pictures: the one conversion every figure and widget of the book shows.

The package's images are ``(N, C, H, W)`` tensors in [-1, 1] (the data layer, chapter "shapes");
matplotlib wants ``(N, H, W, 3)`` arrays in [0, 1] and an HTML widget wants a PNG. Used by
:mod:`imagen_edu.viz` (static figures) and :mod:`imagen_edu.widgets` (the explorers).
"""

from __future__ import annotations

import base64
import io

import matplotlib.pyplot as plt
import torch
from einops import rearrange


def to_display(images):
    """Images in [-1, 1], ``(N, 3, H, W)``, ``(3, H, W)`` or ``(N, 1, H, W)`` -> numpy ``(N, H, W, 3)`` in [0, 1]."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor in [-1, 1], got {type(images).__name__}")
    x = images.detach().float().cpu()
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (N, 3, H, W), (N, 1, H, W) or (3, H, W), got {tuple(images.shape)}")
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return rearrange(((x + 1) / 2).clamp(0, 1), "n c h w -> n h w c").numpy()


def png_data_uri(img) -> str:
    """A numpy ``(H, W, 3)`` image in [0, 1] (one entry of :func:`to_display`) as an inline PNG ``data:`` URI."""
    buf = io.BytesIO()
    plt.imsave(buf, img, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
