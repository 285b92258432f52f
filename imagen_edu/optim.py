"""The learning-rate schedule and the EMA of the weights: pure functions of the step (chapter 6).

Every model of the book trains with the same two rules, derived in chapter 6
(``book/06_scaling.ipynb``) and used by :class:`imagen_edu.train.Trainer`, the chapter-2 language
model and chapter 4's CLIP:

* :func:`lr_at`, Eq. (ch6-eq-lr): a linear warm-up to the peak, then a half cosine down to
  ``min_lr_ratio`` of it (SGDR, Loshchilov & Hutter 2017, without restarts);
* :func:`ema_update`, Eq. (ch6-eq-ema): ``ema <- d * ema + (1 - d) * weights``, with the decay
  :func:`ema_decay_at` warmed up as ``min(d, (1 + s) / (10 + s))``.

Both are functions of the step alone, so a resumed run needs no scheduler object.
"""

from __future__ import annotations

import math
from numbers import Integral

import torch
from torch import nn

__all__ = ["lr_at", "ema_decay_at", "ema_update"]


def lr_at(step: int, *, base_lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Learning rate at 0-based optimizer step ``step``: linear warm-up, then cosine decay.

    Eq. (ch6-eq-lr): ``lr = base_lr * (step + 1) / warmup_steps`` while ``step < warmup_steps``;
    afterwards, with ``p = (step - warmup_steps) / (total_steps - warmup_steps)`` clipped to [0, 1]
    and ``lr_min = min_lr_ratio * base_lr``: ``lr = lr_min + (base_lr - lr_min) (1 + cos(pi p)) / 2``.
    """
    if not isinstance(step, Integral) or isinstance(step, bool) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    lr_min = base_lr * min_lr_ratio
    return lr_min + (base_lr - lr_min) * 0.5 * (1.0 + math.cos(math.pi * progress))


def ema_decay_at(step: int, decay: float, warmup: bool = True) -> float:
    """EMA decay after optimizer step ``step`` (0-based): ``min(decay, (1 + step) / (10 + step))``.

    The warm-up keeps the first averages from remembering the random initialisation (0.1 after
    the first step, 0.5 after the ninth...). Without ``warmup`` it is ``decay``.
    """
    return min(decay, (1.0 + step) / (10.0 + step)) if warmup else decay


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model`` for every floating-point parameter, in place.

    Eq. (ch6-eq-ema). Buffers (e.g. normalisation statistics, integer counters) are copied.
    Parameters are paired by name, so ``ema`` must be a copy of ``model`` (``copy.deepcopy``).
    """
    params = dict(model.named_parameters())
    for name, pe in ema.named_parameters():
        pm = params[name]
        if pe.dtype.is_floating_point:
            pe.lerp_(pm.detach(), 1.0 - decay)  # pe + (1 - d) (pm - pe) = d pe + (1 - d) pm
        else:
            pe.copy_(pm)
    buffers = dict(model.named_buffers())
    for name, be in ema.named_buffers():
        be.copy_(buffers[name])
