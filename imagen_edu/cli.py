"""The command line: ``python -m imagen_edu train | sample | eval | bench | configs | embed`` (chapters 5, 6).

* ``train --stage base|sr1|sr2 --profile P --out DIR [--resume]``: train one stage of the cascade
  with the profile's recipe; writes ``DIR/imagen_STAGE.safetensors`` (EMA weights, for sampling),
  ``DIR/imagen_STAGE.resume.safetensors`` (to resume) and an ``imagen_STAGE`` entry in
  ``DIR/manifest.json``. The stages train independently (a super-resolution stage learns from
  exact low/high-resolution renders), so they can train one after the other or side by side.
  Under ``torchrun --nproc_per_node=N -m imagen_edu train ...`` the stage trains on ``N``
  processes (one per GPU; gloo on the CPU) with DistributedDataParallel, or with ``--fsdp`` the
  model sharded over them (:mod:`imagen_edu.stage_training`); rank 0 alone writes, and
  ``--resume`` continues after any rank died. ``--save-every K``: the resume file's period;
  ``--config NAME``: a named config (e.g. ``paper/base64``, the case for ``--fsdp``) instead of
  the profile's stage.
* ``sample --prompt TEXT --n N --seed S --guidance W --steps K --out DIR [--checkpoint-dir DIR]``:
  ``N`` PNG files at the cascade's final resolution, ``DIR/0_K.png``; with
  ``--prompts-file FILE`` every line of FILE is sampled (in batches), ``DIR/LINE_K.png`` with
  ``LINE`` the 0-based line number and ``K`` the sample index.
* ``eval``: the analytic judge's accuracies on ``--n`` (>= 200 for the book's figures) ``test``
  and ``heldout`` captions (one- and two-object half and half), printed as JSON.
  Chapter 6 adds ``--data shapes|folder:PATH|cifar10:ROOT|mnist:ROOT|fashion_mnist:ROOT``
  (real captioned images, :mod:`imagen_edu.data.real`; ``--download`` lets torchvision fetch a
  missing data set), ``--set FIELD=VALUE`` (repeatable; any :class:`~imagen_edu.stage.StageConfig`
  field, or ``unet.FIELD`` of its U-Net, e.g. ``--set aug_max_level=0 --set aug_sample_level=0``),
  ``--text-encoder NAME`` (e.g. ``t5:t5-small``; the stage's text width follows) and
  ``--text-cache DIR`` (precomputed embeddings from ``embed``: the encoder is never run).
* ``bench``: training images/s of each stage and sampling seconds per image of the cascade;
  ``--device cuda|cpu``, ``--amp bf16|fp16|none``; FLOPs per step, achieved TFLOP/s and, on
  CUDA, the model FLOPs utilisation (:mod:`imagen_edu.bench`). ``--config NAME`` (repeatable)
  benchmarks named configs (e.g. ``paper/sr256``) with synthetic inputs instead of the cascade.
* ``configs [--json]``: every named config (:mod:`imagen_edu.configs`) with its resolution,
  parameter count (counted on the ``meta`` device: nothing is allocated) and text encoder.
* ``embed --encoder NAME --captions FILE --out DIR``: encode every caption of FILE (one per
  line, or a ``captions.jsonl``) once and write a memory-mapped cache (:mod:`imagen_edu.embcache`).

Without ``--checkpoint-dir``, ``sample``/``eval``/``bench`` use the shipped toy cascade in
``data/checkpoints``; if it is missing, the error names the file and the train command.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from dataclasses import fields
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from . import checkpoints, configs, profiles, text_encoders
from .bench import bench_stage
from .cascade import ImagenCascade, check_positive_int
from .embcache import EmbeddingCache, build_cache, read_captions
from .evaluate import eval_captions, evaluate_cascade
from .arguments import ArgumentParser, check_real, check_seed
from .errors import USER_ERRORS, UsageError, run_cli
from .outputs import FolderLock, atomic_write, atomic_write_text, check_output_dir, check_output_file
from .stage_training import check_stage_folder, train_command, train_stage
from .train import agree, dist_info, init_distributed, resolve_amp, resolve_device
from .unet import UNetConfig

__all__ = ["main", "build_parser", "save_png", "read_prompts", "parse_overrides", "apply_overrides", "data_pool"]


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m imagen_edu",
                                description="Imagen from scratch: train, sample, evaluate and benchmark the "
                                            "cascade; list model configs; precompute text embeddings.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train one stage of the cascade")
    t.add_argument("--stage", required=True, choices=["base", "sr1", "sr2"])
    t.add_argument("--profile", default=None, help="compute profile: ci, cpu or gpu (default: the current one)")
    t.add_argument("--config", default=None, metavar="NAME",
                   help="train a named config (see 'configs', e.g. paper/base64 with --stage base) instead of the "
                        "profile's stage; the profile still chooses the device")
    t.add_argument("--out", required=True, help="output folder (checkpoints and manifest.json)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/imagen_STAGE.resume.safetensors")
    t.add_argument("--overwrite", action="store_true",
                   help="start afresh although OUT holds a run of this stage (its files stay until the new run "
                        "writes its own)")
    t.add_argument("--seed", type=int, default=None, help="seed (default: the recipe's)")
    t.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    t.add_argument("--device", default=None, help="cpu or cuda (default: the profile's)")
    t.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"],
                   help="mixed precision on CUDA (auto: bf16 where supported, else fp16; off on the CPU)")
    t.add_argument("--data", default="shapes",
                   help="training images: shapes (default), folder:PATH (a captions.jsonl folder), "
                        "cifar10:ROOT, mnist:ROOT or fashion_mnist:ROOT (torchvision, class captions)")
    t.add_argument("--download", action="store_true", help="let torchvision download a missing data set into ROOT")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a StageConfig field (repeatable), e.g. --set aug_max_level=0 or "
                        "--set unet.channels=64")
    t.add_argument("--text-encoder", default=None,
                   help="text encoder name (toyt5, toyt5:PATH, lm, lm+words, canonical:NAME, t5:NAME_OR_PATH); the stage's text width follows it")
    t.add_argument("--text-cache", default=None, help="a folder written by 'embed': read embeddings from it")
    t.add_argument("--save-every", type=int, default=200,
                   help="write the resume file every this many steps (default 200; also at the end)")
    t.add_argument("--fsdp", action="store_true",
                   help="under torchrun: shard the weights, gradients, Adam state and EMA over the processes "
                        "(torch's fully_shard) instead of a full copy on each; for models too big to replicate")

    s = sub.add_parser("sample", help="generate PNG images for prompts")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--prompt", help="one prompt, e.g. 'a red circle left of a blue square'")
    g.add_argument("--prompts-file", help="a text file with one prompt per line")
    s.add_argument("--n", type=int, default=4, help="samples per prompt")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--guidance", type=float, default=None, help="classifier-free guidance w >= 0 (base stage)")
    s.add_argument("--steps", type=int, default=None, help="DDIM steps per stage")
    s.add_argument("--out", required=True, help="output folder for the PNG files")
    s.add_argument("--threads", type=int, default=None, help="torch CPU threads (the toy models are often fastest with 1)")
    s.add_argument("--checkpoint-dir", default=None, help="folder with the cascade (default: shipped)")
    s.add_argument("--batch-size", type=int, default=256, help="images generated at once")
    s.add_argument("--threshold", default=None, choices=["dynamic", "static", "none"],
                   help="x0 thresholding (default: each stage's own)")
    s.add_argument("--overwrite", action="store_true",
                   help="replace the images in OUT although they were sampled with other settings (the old "
                        "files stay until the new ones are all written)")

    e = sub.add_parser("eval", help="judge accuracies on test and heldout captions (JSON)")
    e.add_argument("--threads", type=int, default=None, help="torch CPU threads (the toy models are often fastest with 1)")
    e.add_argument("--checkpoint-dir", default=None, help="folder with the cascade (default: shipped)")
    e.add_argument("--n", type=int, default=200, help="captions per set (one- and two-object half and half)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--guidance", type=float, default=None)
    e.add_argument("--steps", type=int, default=None)
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--threshold", default=None, choices=["dynamic", "static", "none"],
                   help="x0 thresholding (default: each stage's own)")
    e.add_argument("--out", default=None, help="also write the JSON to this file")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --out file")

    b = sub.add_parser("bench", help="training images/s per stage and sampling seconds per image (JSON)")
    b.add_argument("--threads", type=int, default=None, help="torch CPU threads (the toy models are often fastest with 1)")
    b.add_argument("--checkpoint-dir", default=None)
    b.add_argument("--profile", default=None)
    b.add_argument("--n", type=int, default=64, help="images to sample")
    b.add_argument("--train-steps", type=int, default=5, help="training steps timed per stage")
    b.add_argument("--guidance", type=float, default=None)
    b.add_argument("--steps", type=int, default=None)
    b.add_argument("--device", default=None, choices=["cuda", "cpu"], help="default: cuda if available")
    b.add_argument("--amp", default=None, choices=["bf16", "fp16", "none"],
                   help="autocast format of the timed training steps (default: bf16 on CUDA if supported, "
                        "else fp16; none on the CPU)")
    b.add_argument("--config", dest="configs", action="append", default=[], metavar="NAME",
                   help="benchmark a named config (see 'configs') instead of the cascade (repeatable)")
    b.add_argument("--batch-size", type=int, default=None, help="training batch (default: each stage's)")
    b.add_argument("--no-sample", action="store_true", help="skip the sampling benchmark")

    c = sub.add_parser("configs", help="every named config: resolution, parameter count, text encoder")
    c.add_argument("--json", action="store_true", help="print JSON")

    m = sub.add_parser("embed", help="precompute text embeddings into a memory-mapped cache")
    m.add_argument("--encoder", required=True, help="toyt5, toyt5:PATH, lm, lm+words, canonical:NAME or t5:NAME_OR_PATH (e.g. t5:google/t5-v1_1-xxl)")
    m.add_argument("--captions", required=True, help="a text file (one caption per line) or a captions.jsonl")
    m.add_argument("--out", required=True, help="the cache folder")
    m.add_argument("--batch-size", type=int, default=64)
    m.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    m.add_argument("--device", default="cpu")
    m.add_argument("--overwrite", action="store_true", help="replace an existing cache in OUT")
    return p


def save_png(image, path) -> Path:
    """Write one image ``(3, H, W)`` in [-1, 1] as an 8-bit RGB PNG (atomically: a reader never sees half a file)."""
    arr = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return atomic_write(path, lambda tmp: Image.fromarray(arr, mode="RGB").save(tmp, format="PNG"))


def read_prompts(path) -> list[str]:
    """The prompts of a file, one per line (a trailing newline is fine; an empty line is an error)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--prompts-file {path} is a folder: give a text file with one prompt per line")
    if not path.is_file():
        raise ValueError(f"--prompts-file {path} does not exist")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"--prompts-file {path} is not UTF-8 text: give a text file with one prompt per line") from None
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise ValueError(f"prompts file {path} holds no prompt")
    for i, line in enumerate(lines):
        if not line.strip():
            raise ValueError(f"line {i} of {path} is empty: write one prompt per line")
    return lines


def _cascade(args):
    return ImagenCascade.from_dir(args.checkpoint_dir)


def _check_common(args) -> None:
    """The arguments every sampling command shares, checked before anything is loaded."""
    if getattr(args, "seed", None) is not None:
        check_seed(args.seed, "--seed")
    if getattr(args, "guidance", None) is not None:
        check_real(args.guidance, "--guidance", low=0)
    if getattr(args, "steps", None) is not None:
        check_positive_int(args.steps, "--steps")
    if getattr(args, "batch_size", None) is not None:
        check_positive_int(args.batch_size, "--batch-size")
    if getattr(args, "n", None) is not None:
        check_positive_int(args.n, "--n")


def parse_overrides(items) -> dict:
    """``["aug_max_level=0", "unet.channels=64"]`` -> ``{"aug_max_level": 0, "unet": {"channels": 64}}``.

    Values are read as Python literals (ints, floats, ``None``, ``True``, tuples like ``(8, 4)``
    or ``8,4``), anything else as a string. Field names are checked by :func:`apply_overrides`.
    """
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects FIELD=VALUE, got {item!r}")
        key, raw = (x.strip() for x in item.split("=", 1))
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        if isinstance(value, list):
            value = tuple(value)
        if key.startswith("unet."):
            out.setdefault("unet", {})[key[5:]] = value
        else:
            out[key] = value
    return out


def apply_overrides(cfg, overrides: dict):
    """A copy of the :class:`~imagen_edu.stage.StageConfig` ``cfg`` with ``overrides`` (from
    :func:`parse_overrides`) applied. An unknown field raises ``ValueError`` listing the valid ones;
    an int given for a float field becomes a float; the new config is validated as usual."""
    if not overrides:
        return cfg
    stage_fields = {f.name: f for f in fields(cfg)}
    unet_fields = {f.name for f in fields(UNetConfig)}
    changes = dict(overrides)
    unet = dict(changes.pop("unet", {}) or {})
    bad = [k for k in changes if k not in stage_fields or k == "unet"]
    if bad:
        raise ValueError(f"--set: unknown StageConfig field(s) {bad}; fields: "
                         f"{sorted(k for k in stage_fields if k != 'unet')} (U-Net fields as unet.FIELD: "
                         f"{sorted(unet_fields)})")
    bad = [k for k in unet if k not in unet_fields]
    if bad:
        raise ValueError(f"--set: unknown U-Net field(s) {['unet.' + k for k in bad]}; fields: {sorted(unet_fields)}")
    for k, v in changes.items():
        if isinstance(getattr(cfg, k), float) and isinstance(v, int) and not isinstance(v, bool):
            changes[k] = float(v)
    if unet:
        changes["unet"] = unet
    return cfg.replace(**changes)


DATA_KINDS = ("shapes", "folder", "cifar10", "mnist", "fashion_mnist")


def data_pool(spec: str, cfg, *, download: bool = False, progress: bool = True):
    """The training pool of a real data set for stage ``cfg``: ``(lows or None, highs, captions)``.

    ``spec`` is ``folder:PATH`` (a :class:`~imagen_edu.data.real.CaptionedImageFolder`) or
    ``cifar10:ROOT``, ``mnist:ROOT``, ``fashion_mnist:ROOT`` (torchvision, class-name captions).
    The first ``cfg.n_train_images`` examples (or all, if fewer) are loaded at ``cfg.resolution``:
    ``highs (N, 3, R, R)`` in [-1, 1]. For a super-resolution stage ``lows`` are the highs
    area-downsampled to ``cfg.lowres_resolution`` (each low pixel the mean of the high pixels it
    covers), so a stage trains on exact (low, high) pairs as with the shapes benchmark.
    Returns ``None`` for ``"shapes"`` (the stage renders its own pool).
    """
    # torchvision (behind data.real) takes seconds to import and only --data needs it: imported here
    from .data import real

    kind, _, where = str(spec).partition(":")
    kind = kind.strip().lower().replace("-", "_")
    if kind == "shapes" and not where:
        return None
    if kind not in DATA_KINDS or kind == "shapes" or not where:
        raise ValueError(f"--data must be shapes, folder:PATH, cifar10:ROOT, mnist:ROOT or fashion_mnist:ROOT, "
                         f"got {spec!r}")
    if kind == "folder":
        ds = real.CaptionedImageFolder(where, resolution=cfg.resolution)
    else:
        ds = real.torchvision_captioned(kind, where, train=True, download=download, resolution=cfg.resolution)
    n = min(len(ds), cfg.n_train_images)
    it = range(n)
    if progress:
        it = tqdm(it, desc=f"loading {n} images of {spec}", leave=False)
    highs = torch.empty(n, 3, cfg.resolution, cfg.resolution)
    caps = []
    for i in it:
        x, c = ds[i]
        highs[i] = x
        caps.append(c)
    lows = None
    if cfg.is_sr:
        lows = F.interpolate(highs, size=(cfg.lowres_resolution, cfg.lowres_resolution), mode="area")
    return lows, highs, caps


def _warn_unknown_words(encoder, captions) -> None:
    stoi = getattr(getattr(encoder, "tokenizer", None), "stoi", None)
    if stoi is None:
        return
    unknown = sorted({w for c in set(captions) for w in c.lower().split() if w not in stoi})
    if unknown:
        warnings.warn(f"{len(unknown)} caption word(s) are outside the text encoder's vocabulary (e.g. "
                      f"{unknown[:8]}): they are read as <unk>. For real captions use a T5 encoder, "
                      "e.g. --text-encoder t5:t5-small", UserWarning, stacklevel=2)


def _train(args) -> int:
    """Every rank makes every check, then (under torchrun) the ranks meet and agree: a mistake any
    rank found stops each of them with the same line (exit 2) before any work. Checked one by
    one, a rank that finished first would exit and torchrun would kill the slower ones mid-way."""
    info = dist_info()
    error = setup = None
    try:
        setup = _train_setup(args, info)
    except USER_ERRORS as err:
        error = err
    own_group = False
    if info.world_size > 1:
        device = resolve_device(setup["device"] if setup else "cpu")
        try:
            own_group = init_distributed(device)
        except USER_ERRORS:
            if error is not None:  # not a real torchrun job: report the mistake itself
                raise error from None
            raise
    try:
        if info.world_size > 1:
            agree(error, device)
        elif error is not None:
            raise error
        res = train_stage(**setup["train"])
    finally:
        if own_group and dist.is_initialized():
            dist.destroy_process_group()
    if not info.is_main:  # rank 0 reports for the job
        return 0
    print(json.dumps({"stage": args.stage, "profile": setup["profile"], "steps": res["steps"], "data": args.data,
                      "seconds": round(res["seconds"], 1), "images_per_s": round(res["images_per_s"], 1),
                      "world_size": info.world_size, "parallel": "fsdp" if args.fsdp else "ddp",
                      "final_loss": round(sum(res["losses"][-50:]) / max(1, len(res["losses"][-50:])), 5)
                      if res["losses"] else None, "path": str(res["path"])}))
    return 0


def _train_setup(args, info) -> dict:
    """The checks and inputs of ``train``: ``{"profile", "device", "train": train_stage's arguments}``."""
    if args.profile is not None:
        os.environ[profiles.ENV_VAR] = profiles.get(args.profile).name
    prof = profiles.current()
    if args.config is not None:
        cfg = configs.get(args.config).stage
        if cfg.name != args.stage:
            raise ValueError(f"--config {args.config} is a {cfg.name!r} stage, not {args.stage!r}: "
                             f"pass --stage {cfg.name}")
    else:
        cfg = configs.stage_config(args.stage, prof)
    changes = {}
    if args.seed is not None:
        changes["seed"] = check_seed(args.seed, "--seed")
    if args.steps is not None:
        changes["steps"] = check_positive_int(args.steps, "--steps")
    if changes:
        cfg = cfg.replace(**changes)
    encoder = cache = None
    if args.text_cache is not None:
        cache = EmbeddingCache(args.text_cache)
    if args.text_encoder is not None:
        # the width of the encoder's embeddings (read from the cache: then the encoder is never loaded)
        D = cache.dim if cache is not None else text_encoders.get(args.text_encoder).dim
        cfg = cfg.replace(text_encoder=args.text_encoder, text_dim=D, unet={"cond_dim": D, "context_dim": D})
    cfg = apply_overrides(cfg, parse_overrides(args.overrides))
    # the output folder before anything is loaded or rendered: writable, and what it holds of this
    # stage fits --resume / --overwrite (train_stage checks again once it holds the folder's lock)
    check_stage_folder(cfg, args.out, resume=args.resume, overwrite=args.overwrite)
    # checks that need no step: world size, text cache, data (every rank makes them, before the
    # process group forms: a mistake stops each rank with the same line)
    check_positive_int(args.save_every, "--save-every")
    ws = info.world_size
    if cfg.batch_size % ws:
        raise ValueError(f"the world size {ws} (processes started by torchrun) does not divide "
                         f"batch_size={cfg.batch_size}: choose a batch (--set batch_size=...) that is a "
                         f"multiple of {ws}")
    if args.fsdp and args.amp == "fp16":
        raise ValueError("--fsdp does not run fp16 with a gradient scaler: use --amp bf16 (GPUs of compute "
                         "capability 8.0+) or leave out --fsdp")
    if cache is not None:
        if cache.dim != cfg.text_dim:
            raise ValueError(f"{args.text_cache} holds {cache.dim}-d embeddings (encoder {cache.encoder_name!r}) "
                             f"but stage {cfg.name!r} expects text_dim={cfg.text_dim}: pass --text-encoder "
                             f"{cache.encoder_name} (or rebuild the cache with {cfg.text_encoder!r})")
        if cache.encoder_name != cfg.text_encoder:
            raise ValueError(f"{args.text_cache} was built with encoder {cache.encoder_name!r} but stage "
                             f"{cfg.name!r} reads {cfg.text_encoder!r}: pass --text-encoder {cache.encoder_name}")
        encoder = cache.as_encoder()
    pool = data_pool(args.data, cfg, download=args.download)
    kw = {}
    if pool is not None:
        kw["pool"] = pool
        if encoder is None:
            encoder = text_encoders.get(cfg.text_encoder)
        if args.text_cache is None:
            _warn_unknown_words(encoder, pool[2])
    cmd = train_command(args.stage, prof.name, args.out)
    if ws > 1:  # how the run was launched: torchrun with one process per GPU (per node)
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", ws) or ws)
        nodes = f"--nnodes={ws // per_node} " if per_node != ws else ""
        cmd = cmd.replace("python -m", f"torchrun {nodes}--nproc_per_node={per_node} -m", 1)
    if args.fsdp:
        cmd += " --fsdp"
    if args.config is not None:
        cmd += f" --config {args.config}"
    if args.seed is not None:
        cmd += f" --seed {args.seed}"
    if args.steps is not None:
        cmd += f" --steps {args.steps}"
    if args.data != "shapes":
        cmd += f" --data {args.data}"
    if args.text_encoder is not None:
        cmd += f" --text-encoder {args.text_encoder}"
    if args.save_every != 200:
        cmd += f" --save-every {args.save_every}"
    for item in args.overrides:
        cmd += f" --set {item}"
    if args.amp != "auto":
        cmd += f" --amp {args.amp}"
    device = args.device or prof.device
    return {"profile": prof.name, "device": device,
            "train": dict(config=cfg, encoder=encoder, out_dir=args.out, resume=args.resume, device=device,
                          command=cmd, profile=prof.name, amp=args.amp, overwrite=args.overwrite,
                          save_every=args.save_every, parallel="fsdp" if args.fsdp else "ddp",
                          progress=info.is_main, **kw)}


SAMPLE_RECORD = "sample.json"


def _sample_settings(args, cascade, prompts) -> dict:
    """What fixes the images of ``sample`` (not the batch size: a speed setting), kept in ``OUT/sample.json``."""
    d = Path(args.checkpoint_dir) if args.checkpoint_dir is not None else checkpoints.checkpoint_dir()
    weights = {}
    for st in cascade.stages:
        f = d / f"imagen_{st.config.name}.safetensors"
        if f.is_file():
            weights[st.config.name] = hashlib.sha256(f.read_bytes()).hexdigest()
    return {"weights": weights,
            "seed": args.seed, "guidance": args.guidance, "steps": args.steps, "threshold": args.threshold,
            "resolution": cascade.resolution, "prompts": dict(enumerate(prompts))}


def _compatible(old: dict, new: dict) -> list[str]:
    """The settings in which an earlier ``sample`` into the same folder differs (prompts per line)."""
    diff = [k for k in new if k != "prompts" and old.get(k) != new[k]]
    old_prompts = {int(k): v for k, v in (old.get("prompts") or {}).items()}
    diff += [f"prompt of line {i}" for i, p in new["prompts"].items() if i in old_prompts and old_prompts[i] != p]
    return diff


def _sample(args) -> int:
    _check_common(args)
    if args.prompt is not None and not args.prompt.strip():
        raise ValueError("empty prompt (--prompt): describe the image, e.g. --prompt 'a red circle left of a blue square'")
    prompts = [args.prompt] if args.prompt is not None else read_prompts(args.prompts_file)
    out = check_output_dir(args.out, "--out")
    cascade = _cascade(args)
    with FolderLock(out, "sample", what="sampled images"):
        settings = _sample_settings(args, cascade, prompts)
        record = out / SAMPLE_RECORD
        target = out
        if record.is_file():
            try:
                old = json.loads(record.read_text())
            except (OSError, ValueError):
                old = {}
            diff = _compatible(old, json.loads(json.dumps(settings)))
            if diff and not args.overwrite:
                raise UsageError(f"{out} holds images sampled with other settings ({', '.join(diff)}): pass "
                                 "--overwrite to replace them, or choose another --out")
            if diff:  # write the new images beside the old ones, then move them in: nothing lost on a crash
                target = Path(tempfile.mkdtemp(prefix=".sample-new.", dir=out))
        elif any(out.glob("*_*.png")):
            if not args.overwrite:
                raise UsageError(f"{out} holds PNG files that no 'sample' run recorded ({SAMPLE_RECORD} is missing): "
                                 "pass --overwrite to replace them, or choose another --out")
            target = Path(tempfile.mkdtemp(prefix=".sample-new.", dir=out))
        name = lambda line, k: f"{line}_{k}.png"  # noqa: E731
        skip = (lambda line, k: (out / name(line, k)).is_file()) if target == out else None
        # checks every sampling number against the stages (e.g. steps <= timesteps) before anything is written
        batches = cascade.sample_batches(prompts, n=args.n, guidance=args.guidance, steps=args.steps, seed=args.seed,
                                         batch_size=args.batch_size, threshold=args.threshold, skip=skip)
        if target == out:
            atomic_write_text(record, json.dumps(settings, indent=1) + "\n")
        written = 0
        for keys, images in batches:
            for (line, k), img in zip(keys, images):  # each batch is on disk before the next starts
                save_png(img, target / name(line, k))
                written += 1
        if target != out:
            for f in sorted(target.glob("*.png")):
                os.replace(f, out / f.name)
            atomic_write_text(record, json.dumps(settings, indent=1) + "\n")
            target.rmdir()
    total = len(prompts) * args.n
    print(json.dumps({"written": written, "skipped": total - written, "out": str(out),
                      "resolution": cascade.resolution}))
    return 0


def _eval(args) -> int:
    _check_common(args)
    if args.out:
        check_output_file(args.out, "--out", overwrite=args.overwrite)
    cascade = _cascade(args)
    res = evaluate_cascade(cascade, n=args.n, guidance=args.guidance, steps=args.steps, seed=args.seed,
                           batch_size=args.batch_size, threshold=args.threshold)
    res.update({"guidance": args.guidance, "steps": args.steps, "seed": args.seed,
                "checkpoint_dir": str(args.checkpoint_dir or "shipped")})
    text = json.dumps(res, indent=1, allow_nan=False)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    print(text)
    return 0


def _bench(args) -> int:
    if args.profile is not None:
        os.environ[profiles.ENV_VAR] = profiles.get(args.profile).name
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but CUDA is not available here: use --device cpu")
    amp = args.amp
    if amp is None:  # the trainer's rule for amp="auto" (bf16 on GPUs that have it, fp16 on older ones, off on the CPU)
        amp = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "none"}[resolve_amp("auto", device)]
    if args.train_steps < 1:
        raise ValueError(f"--train-steps must be >= 1, got {args.train_steps}")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    out = {"threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "machine": platform.processor() or platform.machine(), "device": device, "amp": amp,
           "gpu_name": torch.cuda.get_device_name() if device == "cuda" else None,
           "torch": torch.__version__, "train_images_per_s": {}, "flops_per_step": {},
           "achieved_tflops": {}, "mfu": {}, "stages": {}}
    if args.configs:
        todo = [(name, configs.get(name).stage) for name in args.configs]
        cascade = None
    else:
        cascade = _cascade(args)
        if device != "cpu":
            cascade = type(cascade)(cascade.encoder, [st.to(device) for st in cascade.stages])
        todo = [(st.config.name, st.config) for st in cascade.stages]
    for name, cfg in todo:
        r = bench_stage(cfg, device=device, amp=amp, steps=args.train_steps, batch_size=args.batch_size)
        out["stages"][name] = r
        out["train_images_per_s"][name] = r["images_per_s"]
        out["flops_per_step"][name] = r["flops_per_step"]
        out["achieved_tflops"][name] = r["achieved_tflops"]
        out["mfu"][name] = r["mfu"]
    if cascade is not None and not args.no_sample:
        caps = eval_captions("test", max(2, args.n))
        t0 = time.perf_counter()
        cascade.sample(caps[:args.n], n=1, guidance=args.guidance, steps=args.steps, seed=0, progress=False)
        if device == "cuda":
            torch.cuda.synchronize()
        out["sample_seconds_per_image"] = round((time.perf_counter() - t0) / args.n, 4)
        out["n_sampled"] = args.n
        out["sample_steps"] = [args.steps or s.config.sample_steps for s in cascade.stages]
    print(json.dumps(out, indent=1))
    return 0


def _configs(args) -> int:
    print(configs.summary_table(as_json=args.json))
    return 0


def _embed(args) -> int:
    check_positive_int(args.batch_size, "--batch-size")
    captions = read_captions(args.captions)
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is an existing file, not a folder: choose a folder for the cache")
    encoder = text_encoders.get(args.encoder, device=args.device)
    t0 = time.perf_counter()
    cache = build_cache(encoder, captions, args.out, batch_size=args.batch_size, dtype=args.dtype,
                        overwrite=args.overwrite, progress=True)
    seconds = time.perf_counter() - t0
    size = sum(f["bytes"] for f in cache.meta["files"].values())
    print(json.dumps({"out": str(args.out), "encoder": cache.encoder_name, "captions": len(captions),
                      "distinct": len(cache), "dim": cache.dim, "dtype": cache.dtype, "max_len": cache.max_len,
                      "bytes": size, "seconds": round(seconds, 2),
                      "captions_per_s": round(len(cache) / max(seconds, 1e-9), 1)}))
    return 0


def main(argv=None) -> int:
    """Entry point of ``python -m imagen_edu`` (and the ``imagen-edu`` script). Returns the exit status.

    A user's mistake prints one line and returns 2 before any work; a bug prints one line saying
    where to report it and returns 1 (:func:`imagen_edu.errors.run_cli`).
    """
    def run() -> int:
        args = build_parser().parse_args(argv)  # a usage error is one line too (arguments.ArgumentParser)
        profiles.current()  # a bad IMAGEN_EDU_PROFILE is an error for every command, not only train
        threads = getattr(args, "threads", None)
        if threads is not None:
            check_positive_int(threads, "--threads")
        with profiles.torch_threads(threads):
            return {"train": _train, "sample": _sample, "eval": _eval, "bench": _bench, "configs": _configs,
                    "embed": _embed}[args.command](args)

    return run_cli(run, prog="python -m imagen_edu")
