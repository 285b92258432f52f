"""Tiny training problems for the tests of :mod:`imagen_edu.train`, and a script that runs one.

Part of the test suite, not of the package. ``tests/test_distributed.py`` launches it with
``torchrun --nproc_per_node=2 tests/support/ddp_smoke.py ...`` (gloo on the CPU), and
``tests/test_train.py`` runs it in a subprocess that kills itself mid-run; :data:`SCRIPT` is its path.

Two problems, each returned as ``(model, loss_fn, batch_fn)``:

* ``regression``: a small MLP fitted to a fixed smooth function; the data of step ``s`` is a
  pure function of the global example index, so ``N`` ranks with ``B / N`` examples each see
  exactly what one process with ``B`` sees, and the loss uses no randomness.
* ``diffusion``: a tiny U-Net trained with the DDPM loss on 8 px shapes-benchmark scenes; the
  batch function draws a flip from the trainer's generator and a brightness jitter from
  Python's ``random`` and NumPy, and the loss draws ``t`` and the noise from torch's global
  generator, so an exact resume must restore every generator.
"""

from __future__ import annotations

import argparse
import os
import random
import signal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from imagen_edu.data.shapes import make_batch
from imagen_edu.diffusion import GaussianDiffusion
from imagen_edu.train import TrainConfig, Trainer
from imagen_edu.unet import UNet, UNetConfig

#: this file, for ``python SCRIPT ...`` or ``torchrun ... SCRIPT ...`` in a subprocess
SCRIPT = os.path.abspath(__file__)


def regression_problem(seed: int = 0, batch_size: int = 8, dim: int = 4, hidden: int = 16, dtype=torch.float32):
    """``(model, loss_fn, batch_fn)`` of a deterministic regression; ``batch_fn`` returns ``(x, y)``."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, dim)).to(dtype)

    def data(index: torch.Tensor):
        i = index.to(dtype)[:, None]
        x = torch.sin(0.37 * i + torch.arange(dim, dtype=dtype)[None] * 1.3)
        y = torch.cos(2.0 * x) + 0.5 * x.roll(1, dims=1)
        return x, y

    def batch_fn(step, rank, world_size, generator):
        b = batch_size // world_size
        start = step * batch_size + rank * b
        return data(torch.arange(start, start + b))

    def loss_fn(m, batch):
        x, y = batch
        return F.mse_loss(m(x), y)

    return model, loss_fn, batch_fn


def diffusion_problem(seed: int = 0, batch_size: int = 4, resolution: int = 8):
    """``(model, loss_fn, batch_fn)``: tiny U-Net, DDPM loss, shapes scenes with random augmentation."""
    torch.manual_seed(seed)
    model = UNet(UNetConfig(image_size=resolution, channels=8, channel_mults=(1, 2),
                            attention_resolutions=(resolution // 2,), num_heads=2, groups=4))
    diffusion = GaussianDiffusion("cosine", 50)

    def batch_fn(step, rank, world_size, generator):
        b = batch_size // world_size
        x, _ = make_batch(b, resolution=resolution, seed=seed, start=step * batch_size + rank * b)
        flip = torch.rand(b, generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        scale = 0.9 + 0.1 * random.random() + 0.05 * float(np.random.rand())
        return x * scale

    def loss_fn(m, x0):
        return diffusion.loss(m, x0)

    return model, loss_fn, batch_fn


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problem", choices=("regression", "diffusion"), default="regression")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--checkpoint-every", type=int, default=0)
    p.add_argument("--kill-at", type=int, default=None, help="SIGKILL this process when batch_fn reaches this step")
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.problem == "regression":
        model, loss_fn, batch_fn = regression_problem(batch_size=args.batch)
        cfg = regression_config(args.out, steps=args.steps, batch_size=args.batch, lr=args.lr,
                                grad_accum=args.grad_accum, checkpoint_every=args.checkpoint_every)
    else:
        model, loss_fn, batch_fn = diffusion_problem(batch_size=args.batch)
        cfg = diffusion_config(args.out, steps=args.steps, batch_size=args.batch,
                               checkpoint_every=args.checkpoint_every)
    inner = batch_fn
    if args.kill_at is not None:
        def batch_fn(step, rank, world_size, generator):
            if step == args.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)  # a crash or a Colab disconnect: no chance to clean up
            return inner(step, rank, world_size, generator)
    trainer = Trainer(model, loss_fn, batch_fn, cfg, resume=args.resume, device="cpu", progress=False)
    trainer.train()
    trainer.close()


def regression_config(out_dir, steps: int = 6, batch_size: int = 8, lr: float = 1e-2, grad_accum: int = 1,
                      checkpoint_every: int = 0):
    """The TrainConfig of :func:`regression_problem` runs (script and tests)."""
    return TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=2, grad_clip=1.0, ema_decay=0.9,
                       grad_accum=grad_accum, checkpoint_every=checkpoint_every, out_dir=out_dir, seed=0,
                       weight_decay=0.01)


def diffusion_config(out_dir, steps: int = 8, batch_size: int = 4, checkpoint_every: int = 0):
    """The TrainConfig the tests use with :func:`diffusion_problem`."""
    return TrainConfig(steps=steps, batch_size=batch_size, lr=3e-3, weight_decay=0.01, warmup_steps=3,
                       min_lr_ratio=0.1, grad_clip=0.5, ema_decay=0.9, checkpoint_every=checkpoint_every,
                       out_dir=out_dir, seed=3, log_every=2)


if __name__ == "__main__":
    main()
