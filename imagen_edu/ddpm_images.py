"""Chapter 3's image experiments: an unconditional U-Net on the shapes benchmark and the sampler benchmark.

Derived in ``book/03b_ddpm_images.ipynb``: :func:`train_shapes` trains the page's U-Net with
:func:`imagen_edu.ddpm_train.fit`, :func:`clean_object_share` judges samples with
:mod:`imagen_edu.evaluate`, and :func:`benchmark_samplers` times DDPM against DDIM. From a shell::

    python -m imagen_edu.ddpm_images bench --help
"""

from __future__ import annotations

import json
import os
import platform
import time

import torch

from . import profiles
from .arguments import ArgumentParser, check_count, check_seconds, check_seed, input_file, output_file
from .data.shapes import make_batch
from .ddpm_train import fit
from .diffusion import GaussianDiffusion
from .errors import run_cli
from .evaluate import detect_objects_batch
from .unet import UNet, UNetConfig, load_unet, save_unet

__all__ = ["clean_object_share", "shapes_unet_config", "train_shapes", "benchmark_samplers"]


def clean_object_share(images: torch.Tensor) -> dict:
    """How many of ``images (N, 3, H, W)`` in [-1, 1] the judge finds to hold 1 or 2 clean objects.

    An image counts when :func:`imagen_edu.evaluate.detect_objects_batch` finds one or two
    objects and every one of them is *clean* (one saturated colour, a roughly square box, shape
    features near a prototype). Returns ``{"clean_1_2": share, "n": N, "mean_objects": ...}``.
    """
    objs = detect_objects_batch(images.clamp(-1, 1).float().cpu())
    ok = [1 <= len(o) <= 2 and all(d.clean for d in o) for o in objs]
    return {"clean_1_2": sum(ok) / max(1, len(ok)), "n": len(ok),
            "mean_objects": sum(len(o) for o in objs) / max(1, len(objs))}


def shapes_unet_config(settings: profiles.DiffusionSettings | None = None) -> UNetConfig:
    """The :class:`imagen_edu.unet.UNetConfig` of the chapter's shapes model for a profile's settings.

    Self-attention at the lowest resolution; heads and groups follow the U-Net's own rule
    (:func:`imagen_edu.unet.heads_and_groups`).
    """
    s = settings if settings is not None else profiles.current().diffusion
    return UNetConfig(image_size=s.image_size, channels=s.unet_channels, channel_mults=tuple(s.unet_mults),
                      attention_resolutions=(s.image_size // 2 ** (len(s.unet_mults) - 1),))


def train_shapes(settings: profiles.DiffusionSettings | None = None, *, steps: int | None = None,
                 max_seconds: float | None = -1.0, seed: int = 0, device=None, progress: bool = True) -> dict:
    """Train the unconditional shapes U-Net (chapter 3) with a profile's settings.

    ``settings`` is a :class:`imagen_edu.profiles.DiffusionSettings` (default: the current
    profile's). ``steps`` and ``max_seconds`` override ``settings.image_steps`` and
    ``settings.image_max_seconds`` (``None``: no time cap). Returns a dict with ``model`` (the
    EMA weights, eval mode), ``raw_model``, ``diffusion``, ``losses``, ``seconds``, ``steps``
    (steps run), ``render_seconds`` and ``config``.
    """
    prof = profiles.current()
    s = settings if settings is not None else prof.diffusion
    device = device or prof.device
    steps = s.image_steps if steps is None else steps
    max_seconds = s.image_max_seconds if max_seconds == -1.0 else max_seconds
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    data, _ = make_batch(s.n_train_images, resolution=s.image_size, seed=seed)
    render_seconds = time.perf_counter() - t0
    diffusion = GaussianDiffusion(s.schedule, s.timesteps, objective=s.objective)
    model = UNet(shapes_unet_config(s)).to(device)
    ema = UNet(model.config).to(device)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)

    def batches(step):
        return data[torch.randint(0, len(data), (s.image_batch,), generator=g)]

    t0 = time.perf_counter()
    losses = fit(model, diffusion, batches, steps=steps, lr=s.lr, warmup=min(100, max(1, steps // 10)),
                 generator=g, progress=progress, ema=ema, ema_decay=s.ema_decay, max_seconds=max_seconds)
    seconds = time.perf_counter() - t0
    ema.eval()
    return {"model": ema, "raw_model": model, "diffusion": diffusion, "losses": losses, "seconds": seconds,
            "steps": len(losses), "render_seconds": render_seconds, "config": model.config}


def benchmark_samplers(model, diffusion: GaussianDiffusion, *, n_images: int = 64, batch_size: int = 64,
                       configs=(("ddpm", 1000), ("ddim", 250), ("ddim", 100), ("ddim", 50), ("ddim", 25)),
                       seed: int = 0, progress: bool = False) -> list[dict]:
    """Seconds per image and judge quality for each ``(sampler, steps)`` (steps capped at ``T``).

    Every configuration starts from the same ``x_T`` (same seed). DDIM uses ``eta = 0``.
    Returns one dict per configuration: ``sampler``, ``steps``, ``seconds_per_image``,
    ``clean_1_2`` (share of samples with one or two clean objects) and ``mean_objects``.
    """
    check_count(n_images, "n_images")
    check_count(batch_size, "batch_size")
    device = next(model.parameters()).device
    c = model.config
    rows = []
    for sampler, steps in configs:
        steps = min(int(steps), diffusion.num_timesteps)
        outs, t0 = [], time.perf_counter()
        g = torch.Generator().manual_seed(seed)
        for start in range(0, n_images, batch_size):
            b = min(batch_size, n_images - start)
            outs.append(diffusion.sample(model, (b, c.in_channels, c.image_size, c.image_size), sampler=sampler,
                                         steps=steps, eta=0.0, generator=g, progress=progress, device=device).cpu())
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        q = clean_object_share(torch.cat(outs))
        rows.append({"sampler": sampler, "steps": steps, "seconds_per_image": round(dt / n_images, 4),
                     "clean_1_2": round(q["clean_1_2"], 3), "mean_objects": round(q["mean_objects"], 2),
                     "n_images": n_images})
    return rows


PROG = "python -m imagen_edu.ddpm_images"


def _main(argv=None) -> None:
    """The ``bench`` command without its error handling: raises on a user's mistake (see :func:`main`)."""
    parser = ArgumentParser(prog=PROG, description="Chapter 3 tools: the sampler benchmark.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench", help="seconds per image and sample quality, DDPM 1000 vs DDIM 250/100/50/25 "
                                     "(prints JSON)")
    b.add_argument("--checkpoint", help="a UNet saved by save_unet (with its diffusion settings); "
                                        "without it a model is trained first")
    b.add_argument("--train-steps", type=int, default=None, help="training steps (default: the profile's)")
    b.add_argument("--max-seconds", type=float, default=None,
                   help="cap on training time in seconds (default: the profile's; 0 = no cap)")
    b.add_argument("--save", help="where to save the trained model (safetensors); not with --checkpoint")
    b.add_argument("--n-images", type=int, default=64)
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--steps", default="1000,250,100,50,25",
                   help="comma-separated step counts; the first is DDPM, the rest DDIM")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (1 is often faster on a busy or 2-core machine)")
    args = parser.parse_args(argv)
    _check_bench_args(args)
    with profiles.torch_threads(args.threads):
        out = _bench(args)
    print(json.dumps(out, indent=1))


def _check_bench_args(args) -> None:
    """Every argument of ``bench``, checked before any training or sampling; ``args.steps`` becomes a list."""
    try:
        steps = [int(x) for x in args.steps.split(",")]
        if not steps or min(steps) < 1:
            raise ValueError
    except ValueError:
        raise ValueError(f"--steps must be comma-separated positive ints, e.g. 1000,250,50; "
                         f"got {args.steps!r}") from None
    args.steps = steps
    for name in ("n_images", "batch_size"):
        check_count(getattr(args, name), "--" + name.replace("_", "-"))
    check_seed(args.seed, "--seed")
    if args.threads is not None:
        check_count(args.threads, "--threads")
    if args.train_steps is not None:
        check_count(args.train_steps, "--train-steps")
    if args.max_seconds is not None:
        check_seconds(args.max_seconds, "--max-seconds")
    profiles.current()  # an unknown IMAGEN_EDU_PROFILE fails now
    if args.checkpoint is not None:
        input_file(args.checkpoint, "--checkpoint")
        if args.save is not None:
            raise ValueError("--save saves the model trained without --checkpoint; with --checkpoint nothing is "
                             "trained: drop one of them")
        if args.train_steps is not None or args.max_seconds is not None:
            raise ValueError("--train-steps and --max-seconds set the training done without --checkpoint; "
                             "with --checkpoint nothing is trained: drop one of them")
    if args.save is not None:
        output_file(args.save, "--save")  # before training: a bad --save never costs the trained model


def main(argv=None) -> int:
    """``python -m imagen_edu.ddpm_images bench ...``: the exit status (2 with one line on stderr for a
    bad argument, checked before any training; :func:`imagen_edu.errors.run_cli`)."""
    return run_cli(lambda: _main(argv), prog=PROG)


def _bench(args) -> dict:
    """The ``bench`` command's JSON: train (or load) chapter 3's model, then time each sampler."""
    prof = profiles.current()
    out: dict = {"profile": prof.name, "device": prof.device, "torch_threads": torch.get_num_threads(),
                 "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    if args.checkpoint:
        try:
            model, extra = load_unet(args.checkpoint, device=prof.device)
        except (ValueError, TypeError, RuntimeError) as err:  # RuntimeError: tensors that do not fit the config
            raise ValueError(f"--checkpoint {args.checkpoint}: {err}") from None
        diffusion = GaussianDiffusion(extra.get("schedule", "cosine"), int(extra.get("timesteps", 1000)),
                                      objective=extra.get("objective", "eps"))
        out["checkpoint"] = args.checkpoint
        out["train"] = extra.get("train", {})
    else:
        max_s = prof.diffusion.image_max_seconds if args.max_seconds is None else args.max_seconds
        max_s = None if max_s is not None and max_s <= 0 else max_s  # 0: no time cap
        res = train_shapes(steps=args.train_steps, max_seconds=max_s, seed=args.seed, progress=False)
        model, diffusion = res["model"], res["diffusion"]
        out["train"] = {"steps": res["steps"], "seconds": round(res["seconds"], 1),
                        "final_loss": round(sum(res["losses"][-50:]) / len(res["losses"][-50:]), 4)}
        if args.save:
            s = prof.diffusion
            save_unet(model, args.save, extra={"schedule": s.schedule, "timesteps": s.timesteps,
                                               "objective": s.objective, "train": out["train"]})
            out["saved"] = args.save
    steps = args.steps
    configs = [("ddpm", steps[0])] + [("ddim", k) for k in steps[1:]]
    out["results"] = benchmark_samplers(model, diffusion, n_images=args.n_images, batch_size=args.batch_size,
                                        configs=configs, seed=args.seed)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
