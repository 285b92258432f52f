"""Training one stage of the cascade: the pool, the batches, the loss module, resuming, the files.

:func:`train_stage` renders a pool of training scenes (or takes real images), encodes each
distinct caption once with the frozen text encoder (:class:`~imagen_edu.embcache.TextCache`),
and runs :meth:`~imagen_edu.stage.ImagenStage.training_loss` with the book's one trainer,
:class:`imagen_edu.train.Trainer`. Every random draw of the loss (text dropout at rate
``cond_drop_prob``, time steps, noise, augmentation level and noise) is made by
:func:`stage_batches` from the trainer's generator, so that a resumed run draws exactly what an
uninterrupted one would (:func:`check_resume` refuses a resume file of another config).

Files: ``OUT/imagen_STAGE.safetensors`` (:func:`stage_file`, the EMA weights that ship),
``OUT/imagen_STAGE.resume.safetensors`` and an ``imagen_STAGE`` entry in ``OUT/manifest.json``,
written under a lock (:func:`manifest_lock`) because stages train side by side. One trainer at
a time may train one stage into one folder (:class:`~imagen_edu.outputs.FolderLock`), and a
folder that holds a run of the stage is continued (``resume``) or replaced (``overwrite``) only
when asked; a replaced run's files stay until the new run's own replace them.

Under torchrun (``torchrun --nproc_per_node=N -m imagen_edu train ...``, chapter 6) every rank
renders the same pool and encodes the same captions (both are fixed by the config's seed: no
rank waits for another, and nothing big crosses the network), checks the folder before the
process group forms, and trains its share of each batch with DistributedDataParallel or, with
``parallel="fsdp"``, with the model sharded (:class:`~imagen_edu.train.Trainer`). Rank 0 alone
takes the folder's lock (a refusal stops every rank with the same line,
:func:`~imagen_edu.train.agree`) and writes the resume file, the weights and the manifest
entry. The batch of a step does not depend on the number of ranks (:func:`stage_batches`):
``N`` processes with ``B / N`` examples each train what one process with ``B`` trains.

Derived in chapter 5 (``book/05_imagen_cascade.ipynb``); the trainer in chapter 6.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from . import checkpoints, text_encoders
from .data.shapes import ShapesDataset
from .embcache import TextCache
from .errors import UsageError
from .outputs import FolderLock, check_output_dir
from .batching import derive_seed
from .stage import ImagenStage, StageConfig, save_stage
from .train import TrainConfig, Trainer, agree, dist_info, init_distributed, resolve_device

__all__ = ["stage_file", "train_command", "manifest_lock", "StageLoss", "stage_batches", "batch_generator",
           "check_resume", "check_stage_folder", "train_stage", "RESUME_FREE"]


def stage_file(out_dir, stage: str) -> Path:
    """``OUT/imagen_STAGE.safetensors``: the EMA weights used for sampling (what ships)."""
    return Path(out_dir) / f"imagen_{stage}.safetensors"


def _resume_file(out_dir, stage: str) -> Path:
    return Path(out_dir) / f"imagen_{stage}.resume.safetensors"


def train_command(stage: str, profile: str = "cpu", out_dir="data/checkpoints") -> str:
    """The command line that trains ``stage`` into ``out_dir`` (relative to the current folder when inside it)."""
    out = Path(out_dir)
    if out.is_absolute():
        try:
            out = out.resolve().relative_to(Path.cwd().resolve())
        except ValueError:
            pass
    return f"python -m imagen_edu train --stage {stage} --profile {profile} --out {out}"


def training_pool(cfg: StageConfig, progress: bool):
    """Render ``cfg.n_train_images`` ``train`` scenes: ``(lows (N, 3, r, r) or None, highs (N, 3, R, R), captions)``."""
    res = (cfg.lowres_resolution, cfg.resolution) if cfg.is_sr else cfg.resolution
    ds = ShapesDataset("train", res, length=cfg.n_train_images, seed=cfg.seed,
                       two_object_fraction=cfg.two_object_fraction)
    lows, highs, caps = [], [], []
    chunk = 1024
    it = range(0, cfg.n_train_images, chunk)
    if progress:
        it = tqdm(it, desc=f"rendering {cfg.n_train_images} {cfg.name} training scenes", leave=False)
    for s in it:
        imgs, c = ds.batch(range(s, min(s + chunk, cfg.n_train_images)))
        if cfg.is_sr:
            lows.append(imgs[0])
            highs.append(imgs[1])
        else:
            highs.append(imgs)
        caps += c
    return (torch.cat(lows) if lows else None), torch.cat(highs), caps


def _check_pool(cfg: StageConfig, pool):
    if not isinstance(pool, (tuple, list)) or len(pool) != 3:
        raise TypeError("pool must be a tuple (lows or None, highs, captions)")
    lows, highs, caps = pool
    R = cfg.resolution
    if not isinstance(highs, torch.Tensor) or highs.dim() != 4 or tuple(highs.shape[1:]) != (3, R, R):
        raise ValueError(f"pool images must be (N, 3, {R}, {R}) for stage {cfg.name!r}, got "
                         f"{tuple(getattr(highs, 'shape', ()))}")
    if len(caps) != len(highs) or not all(isinstance(c, str) and c.strip() for c in caps):
        raise ValueError(f"pool needs one non-empty caption per image: {len(highs)} images, {len(caps)} captions")
    if cfg.is_sr:
        r = cfg.lowres_resolution
        if not isinstance(lows, torch.Tensor) or tuple(lows.shape) != (len(highs), 3, r, r):
            raise ValueError(f"super-resolution stage {cfg.name!r} needs pool lows (N, 3, {r}, {r}), got "
                             f"{tuple(getattr(lows, 'shape', ())) if lows is not None else None}")
    elif lows is not None:
        raise ValueError("the base stage takes no low-resolution images: pass pool=(None, highs, captions)")
    return lows, highs.float(), list(caps)


def manifest_lock(out_dir) -> FolderLock:
    """An exclusive lock on ``out_dir/.manifest.lock`` that waits its turn (stages trained side by
    side may finish together); a :class:`~imagen_edu.outputs.FolderLock` with ``wait=True``."""
    return FolderLock(out_dir, "manifest", what="the manifest", wait=True)


class StageLoss(nn.Module):
    """The loss of one stage as a module, so that :class:`imagen_edu.train.Trainer` (and DDP) can
    wrap it: ``forward(batch) -> scalar``. The text embeddings of the pool's captions are looked
    up here; they are plain attributes, not buffers, so they are not saved with the weights."""

    def __init__(self, stage: ImagenStage, emb_table: torch.Tensor, mask_table: torch.Tensor):
        super().__init__()
        self.stage = stage
        self.emb_table, self.mask_table = emb_table, mask_table

    def forward(self, batch: dict) -> torch.Tensor:
        dev = batch["x0"].device
        ci = batch["caption_ids"].to(self.emb_table.device)
        emb, mask = self.emb_table[ci].to(dev), self.mask_table[ci].to(dev)
        return self.stage.training_loss(batch["x0"], emb, mask, lowres=batch.get("lowres"), drop=batch["drop"],
                                        t=batch["t"], noise=batch["noise"], aug_level=batch.get("aug_level"),
                                        aug_noise=batch.get("aug_noise"))


def batch_generator(cfg: StageConfig) -> torch.Generator:
    """The generator :func:`stage_batches` draws from: seeded like the trainer's own generator of
    rank 0 (so one process draws what it always drew), and the same on every rank."""
    return torch.Generator().manual_seed(derive_seed(cfg.seed, 0, 1))


def stage_batches(cfg: StageConfig, highs: torch.Tensor, cap_ids: torch.Tensor, lows: torch.Tensor | None = None):
    """``batch_fn(step, rank, world_size, generator)`` for :class:`imagen_edu.train.Trainer`: a
    random batch of the pool with every random draw of the loss made here (text dropout, time
    steps, noise, augmentation level and noise), from the trainer's generator, so that a resumed
    run draws exactly what an uninterrupted one would.

    The batch of a step is the same whatever the world size: every rank's generator is
    :func:`batch_generator` (one stream, the same on each rank), every rank draws the random
    numbers of the whole batch of ``cfg.batch_size`` and keeps its slice, examples
    ``rank * b .. (rank + 1) * b - 1`` with ``b = batch_size / world_size``, and looks up only those
    images. So ``N`` ranks compute the gradient one process computes (to float rounding), and a
    run that resumes on the same number of ranks continues bit for bit. The price: each rank
    draws ``N`` times the random numbers it uses, chiefly the noise of the whole batch,
    ``batch_size * 3 * R * R`` normal numbers per step, about 10 ms per million on one CPU thread
    (measured on a busy 2-core machine): 1 ms for the ``gpu`` profile's base batch of 128 at
    16 px, small next to its step, but about 0.25 s per step for the paper's batch of 2048 at
    64 px, where drawing each rank's share from its own stream would be cheaper at the price of
    this equivalence.
    """

    def batch_fn(step, rank, world_size, g):
        B = cfg.batch_size
        b = B // world_size
        mine = slice(rank * b, (rank + 1) * b)
        idx = torch.randint(0, len(highs), (B,), generator=g)
        drop = torch.rand(B, generator=g) < cfg.cond_drop_prob
        t = torch.randint(0, cfg.timesteps, (B,), generator=g)
        noise = torch.randn((B,) + tuple(highs.shape[1:]), generator=g, dtype=highs.dtype)
        idx = idx[mine]
        out = {"x0": highs[idx], "caption_ids": cap_ids[idx], "drop": drop[mine], "t": t[mine],
               "noise": noise[mine]}
        if cfg.is_sr:
            aug_level = torch.rand(B, generator=g) * cfg.aug_max_level
            aug_noise = torch.randn((B,) + tuple(lows.shape[1:]), generator=g, dtype=lows.dtype)
            out.update(lowres=lows[idx], aug_level=aug_level[mine], aug_noise=aug_noise[mine])
        return out

    return batch_fn


def check_resume(cfg: StageConfig, out_dir) -> None:
    """Before any step: ``out_dir`` must hold a resume file of this stage, trained with this config
    (only ``steps`` and ``max_seconds`` may change). Raises ``FileNotFoundError`` or a
    ``ValueError`` naming each differing field."""
    if out_dir is None:
        raise FileNotFoundError(f"cannot resume stage {cfg.name!r}: no resume file (no out_dir given)")
    rfile = _resume_file(out_dir, cfg.name)
    if not rfile.is_file():
        raise FileNotFoundError(f"cannot resume stage {cfg.name!r}: no resume file {rfile} (train without "
                                "--resume first)")
    _, meta = checkpoints.load(rfile)
    info = meta.get("model_info") if isinstance(meta, dict) else None
    if not isinstance(info, dict) or "stage_config" not in info:
        raise ValueError(f"{rfile} is not a resume file of python -m imagen_edu train (no stage_config)")
    saved = {**cfg.to_dict(), **info["stage_config"]}
    if saved.get("name") != cfg.name:
        raise ValueError(f"{rfile} is a checkpoint of stage {saved.get('name')!r}, not of stage {cfg.name!r}")
    now = cfg.to_dict()
    saved = StageConfig.from_dict(saved).to_dict()
    diff = [k for k in now if k not in RESUME_FREE and now[k] != saved.get(k)]
    if diff:
        detail = "; ".join(f"{k}: saved {saved.get(k)!r}, now {now[k]!r}" for k in diff)
        raise ValueError(f"cannot resume from {rfile}: it was trained with another config ({detail}). "
                         "Use the same --profile, --data/--set options, or another --out folder")


#: StageConfig fields a resumed run may change (to train a finished run for longer)
RESUME_FREE = ("steps", "max_seconds")


def _model_info(cfg: StageConfig) -> dict:
    d = cfg.to_dict()
    for k in RESUME_FREE:
        d.pop(k, None)
    return {"stage_config": d}


def train_stage(config: StageConfig, encoder=None, *, out_dir=None, resume: bool = False,
                progress: bool = True, device=None, save_every: int = 200, command: str | None = None,
                profile: str | None = None, log_every: int = 10, pool=None, amp: str = "auto",
                overwrite: bool = False, parallel: str = "ddp") -> dict:
    """Train one stage of the cascade from scratch (or resume it) with :class:`imagen_edu.train.Trainer`.

    Renders a pool of ``config.n_train_images`` training scenes (at the stage's resolution, and
    at ``lowres_resolution`` for SR stages: exact pairs), encodes each distinct caption once with
    the frozen ``encoder`` (default ``text_encoders.get(config.text_encoder)``), then runs
    ``config.steps`` steps of :meth:`ImagenStage.training_loss` with the book's one trainer:
    AdamW (no weight decay), linear warm-up and cosine decay to 0.1, gradient clipping, EMA
    weights, mixed precision on CUDA (``amp``: ``"auto"``, ``"bf16"``, ``"fp16"``, ``"off"``),
    a stop with ``FloatingPointError`` naming the step on a non-finite loss, and a checkpoint on
    Ctrl-C. ``pool=(lows or None, highs (N, 3, R, R) in [-1, 1], captions)`` trains on those
    images instead of rendered shapes (real data: :mod:`imagen_edu.data.real`); ``lows`` (N, 3,
    r, r) is required for a super-resolution stage.

    With ``out_dir``: writes the full training state to ``imagen_STAGE.resume.safetensors`` every
    ``save_every`` steps and at the end, and ``imagen_STAGE.safetensors`` (the EMA weights and
    config, via :mod:`imagen_edu.checkpoints`) with an ``imagen_STAGE`` entry in
    ``out_dir/manifest.json``. ``resume=True`` continues from the resume file exactly (a longer
    ``steps`` may be given to train a finished run further).

    Under torchrun (``WORLD_SIZE`` > 1) every rank calls it with the same arguments: each checks
    the folder before the process group forms (so no rank has written anything yet), rank 0
    then takes the folder's lock and checks again, and a refusal there stops every rank with the
    same error (:func:`~imagen_edu.train.agree`); only rank 0 writes. ``parallel``: ``"ddp"``
    or ``"fsdp"`` (:class:`~imagen_edu.train.Trainer`). ``device="cuda"`` is each rank's own GPU.

    Returns a dict: ``stage`` (the EMA :class:`ImagenStage`, eval mode; under FSDP on rank 0
    only, ``None`` elsewhere), ``raw`` (the trained weights; under FSDP the sharded module),
    ``losses``, ``steps`` (total), ``seconds`` (training time of this call), ``images_per_s`` and
    ``path`` (or ``None``, and on ranks other than 0).
    """
    cfg = config
    device = resolve_device(device or "cpu")
    if out_dir is not None:  # the folder first: a mistake there costs no encoder load and no step
        check_stage_folder(cfg, out_dir, resume=resume, overwrite=overwrite)
    elif resume:
        raise FileNotFoundError(f"cannot resume stage {cfg.name!r}: no resume file (no out_dir given)")
    if encoder is None:
        encoder = text_encoders.get(cfg.text_encoder)
    if encoder.dim != cfg.text_dim:
        raise ValueError(f"the text encoder gives {encoder.dim}-d embeddings but the stage expects "
                         f"text_dim={cfg.text_dim}")
    args = (resume, progress, device, save_every, command, profile, log_every, pool, amp, overwrite, parallel)
    if out_dir is None:
        return _train_stage(cfg, encoder, None, *args)
    own_group = init_distributed(device)  # every rank checked the folder above, before anyone could write
    lock = FolderLock(out_dir, f"imagen_{cfg.name}", what=f"stage {cfg.name!r}")
    try:
        error = None
        if dist_info().is_main:  # rank 0 alone holds the lock and writes; the others wait for its verdict
            try:
                lock.__enter__()
                check_stage_folder(cfg, out_dir, resume=resume, overwrite=overwrite)  # again, under the lock
            except (ValueError, OSError) as err:
                error = err
        agree(error, device)
        return _train_stage(cfg, encoder, Path(out_dir), *args)
    finally:
        lock.__exit__(None, None, None)
        if own_group:
            dist.destroy_process_group()


def check_stage_folder(cfg: StageConfig, out_dir, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Before any work: ``out_dir`` can be written, and what it holds of stage ``cfg.name`` fits the request.

    ``resume``: it must hold a resume file of this config (:func:`check_resume`). Neither
    ``resume`` nor ``overwrite``: it must hold no run of this stage (no resume file, no weights),
    since starting afresh there would replace a finished result. ``overwrite``: anything goes
    (the old files stay until the new run writes its own). Raises ``ValueError``
    (:class:`~imagen_edu.errors.UsageError`) or ``FileNotFoundError``; returns the folder.
    """
    if resume and overwrite:
        raise UsageError("--resume continues the run in --out and --overwrite replaces it: pass one of them")
    folder = check_output_dir(out_dir, "--out")
    if resume:
        check_resume(cfg, folder)
    elif not overwrite:
        found = [f.name for f in (_resume_file(folder, cfg.name), stage_file(folder, cfg.name)) if f.is_file()]
        if found:
            raise UsageError(f"{folder} already holds a run of stage {cfg.name!r} ({', '.join(found)}): pass "
                             "--resume to continue it, --overwrite to start afresh (its files stay until the new "
                             "run writes its own), or choose another --out")
    return folder


def _train_stage(cfg, encoder, out_dir, resume, progress, device, save_every, command, profile, log_every, pool,
                 amp, overwrite, parallel) -> dict:
    rfile = _resume_file(out_dir, cfg.name) if out_dir is not None else None
    lows, highs, caps = training_pool(cfg, progress) if pool is None else _check_pool(cfg, pool)
    cache = TextCache(encoder, caps)
    cap_ids = cache.ids(caps)
    torch.manual_seed(cfg.seed)
    module = StageLoss(ImagenStage(cfg), cache.emb.to(device), cache.mask.to(device))
    tcfg = TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=0.0,
                       warmup_steps=cfg.warmup, min_lr_ratio=0.1, grad_clip=cfg.grad_clip,
                       ema_decay=cfg.ema_decay, amp=amp,
                       checkpoint_every=save_every if out_dir is not None else 0,
                       out_dir=None if out_dir is None else str(out_dir), seed=cfg.seed,
                       log_every=max(1, int(log_every)), max_seconds=cfg.max_seconds)
    trainer = Trainer(module, lambda m, batch: m(batch), stage_batches(cfg, highs, cap_ids, lows), tcfg,
                      resume=resume, device=device, progress=progress, model_info=_model_info(cfg),
                      allow_changes=RESUME_FREE, overwrite=overwrite and not resume,
                      generator=batch_generator(cfg), parallel=parallel,
                      **({} if rfile is None else {"checkpoint_name": rfile.name}))
    start_step = trainer.step
    t0 = time.perf_counter()
    try:
        losses = trainer.train()
        ema = trainer.ema_model()  # under FSDP: gathered by every rank, onto rank 0
    finally:
        trainer.close()
    seconds = time.perf_counter() - t0
    new = trainer.step - start_step
    ema, raw = (None if ema is None else ema.stage.eval()), trainer.model.stage.eval()
    path = None
    if out_dir is not None and trainer.dist.is_main:
        metrics = {"steps": trainer.step, "train_seconds": round(seconds, 1),
                   "images_per_s": round(new * cfg.batch_size / max(seconds, 1e-9), 1),
                   "final_loss": round(sum(losses[-50:]) / max(1, len(losses[-50:])), 5) if losses else None,
                   "train_threads": torch.get_num_threads(), "device": str(device),
                   "n_params": sum(p.numel() for p in raw.parameters())}
        if trainer.resumed_from is not None:
            metrics["resumed_from_step"] = trainer.resumed_from
        path = save_stage(ema, stage_file(out_dir, cfg.name), train=metrics)
        with manifest_lock(out_dir):  # stages may train side by side and finish together
            checkpoints.register(f"imagen_{cfg.name}", path,
                                 command=command or train_command(cfg.name, profile or "cpu", out_dir),
                                 seed=cfg.seed, metrics=metrics, profile=profile,
                                 manifest=Path(out_dir) / "manifest.json")
    return {"stage": ema, "raw": raw, "losses": losses[start_step:], "steps": trainer.step, "seconds": seconds,
            "images_per_s": new * cfg.batch_size / max(seconds, 1e-9), "path": path}

