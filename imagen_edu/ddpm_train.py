"""Training a denoiser on the diffusion loss (chapter 3), through the book's one trainer.

:func:`fit` is chapter 3's entry point: Algorithm 1 of Ho et al. (draw ``t`` and ``eps``, noise
``x_0`` in one jump, regress the objective; :meth:`imagen_edu.diffusion.GaussianDiffusion.loss`)
run by :class:`imagen_edu.train.Trainer`, which brings Adam, the warm-up, gradient clipping, the
NaN guard and the EMA of the weights (:func:`imagen_edu.optim.ema_update`). Chapter 6 derives
the trainer; chapter 3 only needs to call it.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .diffusion import GaussianDiffusion
from .profiles import torch_threads
from .train import TrainConfig, Trainer

__all__ = ["fit"]


def fit(model: nn.Module, diffusion: GaussianDiffusion, batches: Callable[[int], torch.Tensor], *,
        steps: int, lr: float = 1e-3, warmup: int = 0, grad_clip: float | None = 1.0,
        generator: torch.Generator | None = None, progress: bool = True,
        ema: nn.Module | None = None, ema_decay: float = 0.999,
        max_seconds: float | None = None, threads: int | None = None, seed: int = 0) -> list[float]:
    """Train ``model`` on :meth:`GaussianDiffusion.loss` for ``steps`` optimizer steps; returns the losses.

    ``batches(step) -> x0 (B, ...)`` supplies data; the timesteps and noise of each step are
    drawn from ``generator`` (the trainer's seeded generator if omitted), ``t`` first. The
    trainer runs Adam (AdamW without weight decay) at ``lr`` after a linear warm-up over
    ``warmup`` steps, clips the gradient norm to ``grad_clip`` and stops with
    ``FloatingPointError`` naming the step if the loss is not finite. Training runs in float32
    on the model's device.

    If ``ema`` (a copy of ``model``) is given, the trainer keeps an exponential moving average of
    the weights starting from ``ema``'s, ``ema <- d ema + (1 - d) model`` with
    ``d = min(ema_decay, (1 + s) / (10 + s))`` after step ``s``, and ``ema`` holds it at the end.

    With ``max_seconds`` training also stops once that much wall time has passed (so a chapter
    keeps its time budget on a slow machine; ``len(losses)`` says how many steps ran).
    ``threads`` limits torch's CPU threads during training (:func:`imagen_edu.profiles.torch_threads`):
    ``1`` is fastest for tiny models such as the 2-D toy. ``seed`` seeds the trainer's generators.
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    device = next(model.parameters()).device
    first = {0: batches(0)} if steps else {}   # step 0's batch, read once to learn the batch size

    def batch_fn(step: int, rank: int, world_size: int, g: torch.Generator):
        x0 = first.pop(step) if step in first else batches(step)
        gen = generator if generator is not None else g
        t = torch.randint(0, diffusion.num_timesteps, (x0.shape[0],), generator=gen, device=gen.device)
        noise = torch.randn(x0.shape, generator=gen, dtype=x0.dtype, device=gen.device)
        return x0, t, noise

    def loss_fn(m, batch):
        x0, t, noise = batch
        return diffusion.loss(m, x0, t, noise)

    config = TrainConfig(steps=steps, batch_size=len(first[0]) if steps else 1, lr=lr, warmup_steps=warmup,
                         min_lr_ratio=1.0, grad_clip=grad_clip, ema_decay=ema_decay if ema is not None else None,
                         amp="off", max_seconds=max_seconds, seed=seed)
    trainer = Trainer(model, loss_fn, batch_fn, config, device=device, progress=progress)
    if ema is not None:
        trainer.ema_model().load_state_dict(ema.state_dict())
    with torch_threads(threads, device):
        losses = trainer.train()
    if ema is not None:
        ema.load_state_dict(trainer.ema_model().state_dict())
    model.eval()
    return losses
