"""The 2-D toy of chapter 3: two moons, a swiss roll, and a tiny MLP denoiser.

Chapter 3 (``book/03_ddpm.ipynb``) trains :class:`ToyDenoiser` on :func:`make_moons` with
:func:`imagen_edu.ddpm_train.fit` and samples it with :class:`imagen_edu.diffusion.GaussianDiffusion`:
points in the plane make every step of the reverse process visible.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .unet import timestep_embedding

__all__ = ["make_moons", "make_swiss_roll", "ToyDenoiser"]


def make_moons(n: int, *, noise: float = 0.05, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` points ``(n, 2)`` on two interleaved half circles, scaled to about [-1, 1]."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    n1 = n // 2
    u = torch.rand(n, generator=generator) * math.pi
    x = torch.empty(n, 2)
    x[:n1, 0], x[:n1, 1] = torch.cos(u[:n1]), torch.sin(u[:n1])
    x[n1:, 0], x[n1:, 1] = 1 - torch.cos(u[n1:]), 0.5 - torch.sin(u[n1:])
    x = x + noise * torch.randn(n, 2, generator=generator)
    return (x - torch.tensor([0.5, 0.25])) * 0.9


def make_swiss_roll(n: int, *, noise: float = 0.03, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` points ``(n, 2)`` on a 2-D swiss roll, scaled to about [-1, 1]."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    u = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator))
    x = torch.stack([u * torch.cos(u), u * torch.sin(u)], 1) / 14.0
    return x + noise * torch.randn(n, 2, generator=generator)


class ToyDenoiser(nn.Module):
    """A tiny MLP ``f(x_t (B, 2), t (B,)) -> (B, 2)`` for the 2-D toy of chapter 3.

    The timestep enters as a sinusoidal embedding (as in the U-Net), concatenated to the input.
    """

    def __init__(self, dim: int = 2, hidden: int = 128, time_dim: int = 32, n_layers: int = 3):
        super().__init__()
        self.dim, self.time_dim = dim, time_dim
        layers, width = [], dim + time_dim
        for _ in range(n_layers):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x_t (B, dim)``, ``t (B,)`` -> prediction ``(B, dim)``."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must be (B, {self.dim}), got {tuple(x.shape)}")
        return self.net(torch.cat([x, timestep_embedding(t, self.time_dim)], 1))
