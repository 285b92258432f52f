"""The command line: ``python -m imagen_edu train | sample | eval | bench`` (chapter 5).

* ``train --stage base|sr1|sr2 --profile P --out DIR [--resume]``: train one stage of the cascade
  with the profile's recipe; writes ``DIR/imagen_STAGE.safetensors`` (EMA weights, for sampling),
  ``DIR/imagen_STAGE.resume.safetensors`` (to resume) and an ``imagen_STAGE`` entry in
  ``DIR/manifest.json``. The stages train independently (a super-resolution stage learns from
  exact low/high-resolution renders), so they can train one after the other or side by side.
* ``sample --prompt TEXT --n N --seed S --guidance W --steps K --out DIR [--checkpoint-dir DIR]``:
  ``N`` PNG files at the cascade's final resolution, ``DIR/0_K.png``; with
  ``--prompts-file FILE`` every line of FILE is sampled (in batches), ``DIR/LINE_K.png`` with
  ``LINE`` the 0-based line number and ``K`` the sample index.
* ``eval``: the analytic judge's accuracies on ``--n`` (>= 200 for the book's figures) ``test``
  and ``heldout`` captions (one- and two-object half and half), printed as JSON.
* ``bench``: training images/s of each stage and sampling seconds per image of the cascade.

Without ``--checkpoint-dir``, ``sample``/``eval``/``bench`` use the shipped toy cascade in
``data/checkpoints``; if it is missing, the error names the file and the train command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

__all__ = ["main", "build_parser", "save_png", "read_prompts"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m imagen_edu",
                                description="Imagen from scratch: train, sample and evaluate the toy cascade.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train one stage of the cascade")
    t.add_argument("--stage", required=True, choices=["base", "sr1", "sr2"])
    t.add_argument("--profile", default=None, help="compute profile: ci, cpu or gpu (default: the current one)")
    t.add_argument("--out", required=True, help="output folder (checkpoints and manifest.json)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/imagen_STAGE.resume.safetensors")
    t.add_argument("--seed", type=int, default=None, help="seed (default: the recipe's)")
    t.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    t.add_argument("--device", default=None, help="cpu or cuda (default: the profile's)")

    s = sub.add_parser("sample", help="generate PNG images for prompts")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--prompt", help="one prompt, e.g. 'a red circle left of a blue square'")
    g.add_argument("--prompts-file", help="a text file with one prompt per line")
    s.add_argument("--n", type=int, default=4, help="samples per prompt")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--guidance", type=float, default=None, help="classifier-free guidance w >= 0 (base stage)")
    s.add_argument("--steps", type=int, default=None, help="DDIM steps per stage")
    s.add_argument("--out", required=True, help="output folder for the PNG files")
    s.add_argument("--checkpoint-dir", default=None, help="folder with the cascade (default: shipped)")
    s.add_argument("--batch-size", type=int, default=256, help="images generated at once")
    s.add_argument("--threshold", default=None, choices=["dynamic", "static", "none"],
                   help="x0 thresholding (default: each stage's own)")

    e = sub.add_parser("eval", help="judge accuracies on test and heldout captions (JSON)")
    e.add_argument("--checkpoint-dir", default=None, help="folder with the cascade (default: shipped)")
    e.add_argument("--n", type=int, default=200, help="captions per set (one- and two-object half and half)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--guidance", type=float, default=None)
    e.add_argument("--steps", type=int, default=None)
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--threshold", default=None, choices=["dynamic", "static", "none"],
                   help="x0 thresholding (default: each stage's own)")
    e.add_argument("--out", default=None, help="also write the JSON to this file")

    b = sub.add_parser("bench", help="training images/s per stage and sampling seconds per image (JSON)")
    b.add_argument("--checkpoint-dir", default=None)
    b.add_argument("--profile", default=None)
    b.add_argument("--n", type=int, default=64, help="images to sample")
    b.add_argument("--train-steps", type=int, default=5, help="training steps timed per stage")
    b.add_argument("--guidance", type=float, default=None)
    b.add_argument("--steps", type=int, default=None)
    return p


def save_png(image, path) -> Path:
    """Write one image ``(3, H, W)`` in [-1, 1] as an 8-bit RGB PNG."""
    from PIL import Image

    arr = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    path = Path(path)
    Image.fromarray(arr, mode="RGB").save(path)
    return path


def read_prompts(path) -> list[str]:
    """The prompts of a file, one per line (a trailing newline is fine; an empty line is an error)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"prompts file {path} does not exist")
    lines = path.read_text().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise ValueError(f"prompts file {path} holds no prompt")
    for i, line in enumerate(lines):
        if not line.strip():
            raise ValueError(f"line {i} of {path} is empty: write one prompt per line")
    return lines


def _cascade(args):
    from .imagen import ImagenCascade

    return ImagenCascade.from_dir(args.checkpoint_dir)


def _train(args) -> int:
    import torch

    from . import profiles
    from .imagen import stage_config, train_command, train_stage

    if args.profile is not None:
        os.environ[profiles.ENV_VAR] = profiles.get(args.profile).name
    prof = profiles.current()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = stage_config(args.stage, prof)
    changes = {}
    if args.seed is not None:
        changes["seed"] = args.seed
    if args.steps is not None:
        changes["steps"] = args.steps
    if changes:
        cfg = cfg.replace(**changes)
    cmd = train_command(args.stage, prof.name, args.out)
    if args.seed is not None:
        cmd += f" --seed {args.seed}"
    if args.steps is not None:
        cmd += f" --steps {args.steps}"
    res = train_stage(cfg, out_dir=args.out, resume=args.resume, device=args.device or prof.device,
                      command=cmd, profile=prof.name)
    print(json.dumps({"stage": args.stage, "profile": prof.name, "steps": res["steps"],
                      "seconds": round(res["seconds"], 1), "images_per_s": round(res["images_per_s"], 1),
                      "final_loss": round(sum(res["losses"][-50:]) / max(1, len(res["losses"][-50:])), 5)
                      if res["losses"] else None, "path": str(res["path"])}))
    return 0


def _sample(args) -> int:
    from .imagen import _check_pos_int

    _check_pos_int(args.n, "--n")
    if args.guidance is not None and args.guidance < 0:
        raise ValueError(f"--guidance must be >= 0, got {args.guidance}")
    if args.steps is not None:
        _check_pos_int(args.steps, "--steps")
    prompts = [args.prompt] if args.prompt is not None else read_prompts(args.prompts_file)
    if args.prompt is not None and not args.prompt.strip():
        raise ValueError("empty prompt: describe the image, e.g. --prompt 'a red circle left of a blue square'")
    cascade = _cascade(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images = cascade.sample(prompts, n=args.n, guidance=args.guidance, steps=args.steps, seed=args.seed,
                            batch_size=args.batch_size, threshold=args.threshold)
    written = []
    for i, img in enumerate(images):
        line, k = divmod(i, args.n)
        written.append(str(save_png(img, out / f"{line}_{k}.png")))
    print(json.dumps({"written": len(written), "out": str(out), "resolution": cascade.resolution}))
    return 0


def _eval(args) -> int:
    from .imagen import evaluate_cascade

    cascade = _cascade(args)
    res = evaluate_cascade(cascade, n=args.n, guidance=args.guidance, steps=args.steps, seed=args.seed,
                           batch_size=args.batch_size, threshold=args.threshold)
    res.update({"guidance": args.guidance, "steps": args.steps, "seed": args.seed,
                "checkpoint_dir": str(args.checkpoint_dir or "shipped")})
    text = json.dumps(res, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


def _bench(args) -> int:
    import platform

    import torch

    from . import profiles
    from .imagen import ImagenStage, TextCache, eval_captions

    if args.profile is not None:
        os.environ[profiles.ENV_VAR] = profiles.get(args.profile).name
    cascade = _cascade(args)
    out = {"threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "machine": platform.processor() or platform.machine(), "train_images_per_s": {}}
    from .data.shapes import make_batch

    caps = eval_captions("test", max(2, args.n))
    cache = TextCache(cascade.encoder, caps)
    for st in cascade.stages:
        cfg = st.config
        model = ImagenStage(cfg)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        res = (cfg.lowres_resolution, cfg.resolution) if cfg.is_sr else cfg.resolution
        imgs, bcaps = make_batch(cfg.batch_size, "train", res)
        low, high = (imgs if cfg.is_sr else (None, imgs))
        emb, mask = cache.lookup(bcaps)
        t0 = None
        for i in range(args.train_steps + 1):
            if i == 1:
                t0 = time.perf_counter()
            loss = model.training_loss(high, emb, mask, lowres=low)
            opt.zero_grad()
            loss.backward()
            opt.step()
        out["train_images_per_s"][cfg.name] = round(args.train_steps * cfg.batch_size / (time.perf_counter() - t0), 1)
    t0 = time.perf_counter()
    cascade.sample(caps[:args.n], n=1, guidance=args.guidance, steps=args.steps, seed=0)
    out["sample_seconds_per_image"] = round((time.perf_counter() - t0) / args.n, 4)
    out["n_sampled"] = args.n
    out["sample_steps"] = [args.steps or s.config.sample_steps for s in cascade.stages]
    print(json.dumps(out, indent=1))
    return 0


def main(argv=None) -> int:
    """Entry point of ``python -m imagen_edu`` (and the ``imagen-edu`` script). Returns the exit status."""
    from .imagen import MissingCheckpointError

    args = build_parser().parse_args(argv)
    try:
        return {"train": _train, "sample": _sample, "eval": _eval, "bench": _bench}[args.command](args)
    except MissingCheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
