"""One trainer for every model of the book: resumable, exact, and multi-GPU with torchrun.

:class:`Trainer` trains any ``nn.Module`` given two functions you write:

* ``loss_fn(model, batch) -> scalar tensor``: e.g. ``lambda m, x0: diffusion.loss(m, x0)``.
  Under torchrun ``model`` is the DistributedDataParallel wrapper: call it (``model(x, t)``),
  and reach the plain module through ``trainer.model`` if you need its attributes.
* ``batch_fn(step, rank, world_size, generator) -> batch``: this rank's share of the batch of
  ``step``, that is ``config.batch_size // world_size`` examples. Procedural data (the shapes
  benchmark) computes it from the step, e.g. ``make_batch(b, start=step * B + rank * b)``, and
  may draw augmentations from ``generator``, a ``torch.Generator`` seeded per rank. For a real
  data set use :class:`imagen_edu.batching.DatasetBatches`, which shards shuffled epochs over the
  ranks like a ``DistributedSampler`` and resumes at any step. A batch is a tensor, or a
  tuple/list/dict of tensors and lists of strings (captions).

The language model of chapter 2, CLIP of chapter 4 and the diffusion models of chapters 3 and 5
all train through it; :func:`train_small` is the one recipe of the two small models (chapters 2
and 4). What it does, step by step (the settings live in :class:`TrainConfig`; a
few keyword arguments of :class:`Trainer` let a chapter keep its own recipe):

* **AdamW** (decoupled weight decay, Loshchilov & Hutter 2019) with ``weight_decay`` on the
  matrices and convolution kernels only (not on biases and norm gains; ``decay_vectors=True``
  decays every parameter, as ``torch.optim.AdamW(model.parameters())`` does).
* **Learning-rate schedule** :func:`imagen_edu.optim.lr_at`, Eq. (ch6-eq-lr): linear warm-up over
  ``warmup_steps`` to ``lr``, then cosine decay to ``min_lr_ratio * lr`` at ``steps``. A pure
  function of the step, so a resumed run needs no scheduler object: the step is the whole
  scheduler state.
* **Gradient clipping** of the global norm to ``grad_clip``.
* **After the update**, ``after_update(model)`` if given (CLIP clamps its temperature there).
* **EMA weights** (:func:`imagen_edu.optim.ema_update`, Eq. ch6-eq-ema): after each step
  ``ema <- d * ema + (1 - d) * weights`` with ``d = min(ema_decay, (1 + s) / (10 + s))`` (the
  warm-up keeps early averages from remembering the random initialisation). Sample with
  :meth:`Trainer.ema_model`. ``ema_decay=None``: no EMA.
* **Gradient accumulation**: the batch is split into ``grad_accum`` micro-batches whose
  gradients add up (each loss scaled by ``1 / grad_accum``), which equals one big batch when
  the loss is a mean over examples; memory is that of one micro-batch.
* **Mixed precision** on CUDA (``amp="auto"``): forward passes under ``torch.autocast`` in
  bfloat16 on GPUs that support it (Ampere and newer), float16 with a ``GradScaler`` otherwise
  (a T4); off on the CPU. Weights, optimizer state and EMA stay in float32.
* **NaN guard**: a loss that is NaN or infinite stops training with a ``FloatingPointError``
  naming the step, before the optimizer touches the weights.
* **Checkpoints** every ``checkpoint_every`` steps, at the end, and when you interrupt
  training (Ctrl-C, the Jupyter stop button): one safetensors file ``checkpoint.safetensors`` in
  ``out_dir``, written atomically (temporary file, then ``os.replace``: a crash never leaves
  half a file under the real name). It holds the weights, the EMA weights, the optimizer's
  moment tensors (flattened to ``optim/<parameter>/<slot>`` with a JSON index), the step, the
  gradient scaler, every random generator (torch, CUDA, the batch generator, Python's
  ``random`` and NumPy, per rank) and the config as JSON. No pickle anywhere: loading never
  runs code.
* **Resume** with ``resume=True``: continue from the checkpoint in ``out_dir`` (or start at
  step 0 if there is none, so one notebook cell serves both the first run and the run after a
  Colab disconnect). On the CPU a resumed run is bit-identical to an uninterrupted one.
  Interrupting a step is safe: the optimizer update is never cut in half (Ctrl-C is deferred
  for those few lines), and the random generators are rewound to the start of the step.
  ``allow_changes=("steps",)`` lets a finished run train for longer (a deliberate change, so
  not bit-identical to anything). :meth:`Trainer.export` writes just the EMA weights for sampling.
* **Multi-GPU** when launched by ``torchrun --nproc_per_node=N``: one process per GPU, each
  with ``batch_size / N`` examples, gradients averaged by DistributedDataParallel (``nccl`` on
  CUDA, ``gloo`` on the CPU); only rank 0 shows progress and writes checkpoints, after
  gathering every rank's generators (a checkpoint written on Ctrl-C holds rank 0's only, since
  the other ranks may be gone: it resumes correctly, but not bit-identically).
* **Sharded training** with ``parallel="fsdp"`` (torch's FSDP2, ``fully_shard``): each rank
  keeps ``1/N`` of the weights, gradients, Adam moments and EMA weights, and gathers a block's
  full weights only while it computes (each element of an ``nn.ModuleList`` is one such block,
  :func:`fsdp_units`). The update is the same arithmetic as DDP's on each shard (gradients
  averaged, AdamW, clipping of the global norm, EMA), so both runs agree to float tolerance.
  Checkpoints gather the full weights, EMA and moments to rank 0 and hold the same tensors as a
  DDP checkpoint: one file that loads in one process, and resumes under either mode or another
  world size (bit-identically with the same world size, under FSDP as under DDP: measured on
  the CPU by ``experiments/distributed/check_torchrun.py``). Not
  available under FSDP: fp16 with a gradient scaler (use bf16), and a checkpoint on Ctrl-C
  (gathering needs every rank: the last periodic checkpoint is kept).
* **Bad input** fails before any step runs: a resume folder whose saved config differs (the
  differing fields are named), a checkpoint of another model (different parameter names or
  shapes), a world size or ``grad_accum`` that does not divide the batch.

Derived in chapter 6. Example::

    cfg = TrainConfig(steps=2000, batch_size=64, lr=2e-3, warmup_steps=100, out_dir="runs/base")
    trainer = Trainer(unet, lambda m, x0: diffusion.loss(m, x0),
                      lambda step, rank, ws, g: make_batch(64 // ws, start=step * 64 + rank * (64 // ws))[0],
                      cfg, resume=True)
    losses = trainer.train()
    samples = diffusion.sample(trainer.ema_model(), (16, 3, 32, 32))
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import signal
import threading
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from . import checkpoints, rng_state
from .batching import derive_seed, split_batch, to_device
from .errors import UsageError
from .optim import ema_decay_at, ema_update, lr_at
from .profiles import torch_threads

__all__ = [
    "TrainConfig",
    "Trainer",
    "train_small",
    "resolve_amp",
    "DistInfo",
    "dist_info",
    "resolve_device",
    "init_distributed",
    "agree",
    "fsdp_units",
    "PARALLEL_MODES",
    "CHECKPOINT_NAME",
    "RESUME_FREE_FIELDS",
]

#: the file name of a run's checkpoint inside ``TrainConfig.out_dir``
CHECKPOINT_NAME = "checkpoint.safetensors"
FORMAT = "imagen_edu.train/1"
AMP_MODES = ("auto", "bf16", "fp16", "off")
#: how :class:`Trainer` spreads a model over the ranks of a torchrun job
PARALLEL_MODES = ("ddp", "fsdp")
#: config fields that may change when a run is resumed (they do not change the numbers computed)
RESUME_FREE_FIELDS = ("out_dir", "checkpoint_every", "log_every", "max_seconds")


# ---------------------------------------------------------------------------------------------
# configuration and the pure functions of the step
# ---------------------------------------------------------------------------------------------
def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


@dataclass
class TrainConfig:
    """Settings of :class:`Trainer`; saved in every checkpoint and checked on resume.

    Attributes:
        steps: optimizer steps in the whole run (the cosine schedule ends here).
        batch_size: examples per step over all ranks (each of ``N`` ranks gets ``batch_size / N``).
        lr: peak learning rate, reached at the end of the warm-up.
        weight_decay: AdamW's decoupled weight decay, applied to tensors with 2+ dimensions.
        warmup_steps: linear warm-up length.
        min_lr_ratio: the cosine decay ends at ``min_lr_ratio * lr``.
        grad_clip: clip the global gradient norm to this (``None``: no clipping).
        ema_decay: EMA decay ``d`` (``None``: no EMA; :meth:`Trainer.ema_model` is the model).
        ema_warmup: use ``min(ema_decay, (1 + s) / (10 + s))`` at step ``s``.
        grad_accum: micro-batches per step (must divide the per-rank batch).
        amp: ``"auto"`` (bf16 on Ampere+, fp16 with a gradient scaler on older GPUs, off on
            the CPU), ``"bf16"``, ``"fp16"`` or ``"off"``.
        betas: AdamW's ``(beta1, beta2)``.
        checkpoint_every: write a checkpoint every this many steps (0: only at the end and on
            interrupt). Needs ``out_dir``.
        out_dir: folder of the run's checkpoint (``None``: keep nothing on disk).
        seed: seeds the per-rank random generators (not the model's initialisation: build the
            model after your own ``torch.manual_seed``).
        log_every: record loss, learning rate and gradient norm in ``Trainer.history`` every
            this many steps.
        max_seconds: stop (with a checkpoint) once this much wall time has passed (``None``:
            no limit). Stopping early is not an error; ``Trainer.step`` says where it stopped.
    """

    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    grad_clip: float | None = 1.0
    ema_decay: float | None = 0.999
    ema_warmup: bool = True
    grad_accum: int = 1
    amp: str = "auto"
    betas: tuple = (0.9, 0.999)
    checkpoint_every: int = 0
    out_dir: str | None = None
    seed: int = 0
    log_every: int = 10
    max_seconds: float | None = None

    def __post_init__(self):
        for name in ("steps", "warmup_steps", "checkpoint_every", "seed"):
            v = getattr(self, name)
            if not _is_int(v) or v < 0:
                raise ValueError(f"TrainConfig.{name} must be an int >= 0, got {v!r}")
        for name in ("batch_size", "grad_accum", "log_every"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                raise ValueError(f"TrainConfig.{name} must be an int >= 1, got {v!r}")
        if not _is_num(self.lr) or not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be a number > 0, got {self.lr!r}")
        if not _is_num(self.weight_decay) or self.weight_decay < 0:
            raise ValueError(f"TrainConfig.weight_decay must be a number >= 0, got {self.weight_decay!r}")
        if not _is_num(self.min_lr_ratio) or not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"TrainConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if self.grad_clip is not None and (not _is_num(self.grad_clip) or not self.grad_clip > 0):
            raise ValueError(f"TrainConfig.grad_clip must be None or a number > 0, got {self.grad_clip!r}")
        if self.ema_decay is not None and (not _is_num(self.ema_decay) or not 0.0 <= self.ema_decay < 1.0):
            raise ValueError(f"TrainConfig.ema_decay must be None or in [0, 1), got {self.ema_decay!r}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"TrainConfig.amp must be one of {AMP_MODES}, got {self.amp!r}")
        b = tuple(self.betas) if isinstance(self.betas, (list, tuple)) else None
        if b is None or len(b) != 2 or not all(_is_num(x) and 0.0 <= x < 1.0 for x in b):
            raise ValueError(f"TrainConfig.betas must be two numbers in [0, 1), got {self.betas!r}")
        self.betas = tuple(float(x) for x in b)
        if self.max_seconds is not None and (not _is_num(self.max_seconds) or not self.max_seconds > 0):
            raise ValueError(f"TrainConfig.max_seconds must be None or > 0, got {self.max_seconds!r}")
        if self.out_dir is not None:
            if not isinstance(self.out_dir, (str, os.PathLike)):
                raise TypeError(f"TrainConfig.out_dir must be a path or None, got {type(self.out_dir).__name__}")
            self.out_dir = os.fspath(self.out_dir)
        if self.checkpoint_every and self.out_dir is None:
            raise ValueError("TrainConfig.checkpoint_every needs an out_dir to write checkpoints to")

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based): :func:`lr_at` with this config."""
        return lr_at(step, base_lr=self.lr, warmup_steps=self.warmup_steps, total_steps=self.steps,
                     min_lr_ratio=self.min_lr_ratio)

    def to_dict(self) -> dict:
        """The config as a JSON-ready dict (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))


def resolve_amp(amp: str, device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device``: ``torch.bfloat16``, ``torch.float16`` or ``None`` (off).

    ``"auto"`` is bf16 on CUDA GPUs of compute capability 8.0+ (A100, L4, H100...), fp16 on
    older ones (T4, V100) and off on the CPU. ``"bf16"``/``"fp16"`` need CUDA.
    """
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got {amp!r}")
    device = torch.device(device)
    if device.type != "cuda":
        if amp in ("auto", "off"):
            return None
        raise ValueError(f"amp={amp!r} needs a CUDA device, but training runs on {device.type}; "
                         "use amp='auto' (mixed precision on CUDA, off elsewhere) or amp='off'")
    if amp == "off":
        return None
    bf16_ok = torch.cuda.get_device_capability(device)[0] >= 8
    if amp == "bf16" and not bf16_ok:
        raise ValueError(f"amp='bf16' needs a GPU of compute capability 8.0 or newer; "
                         f"{torch.cuda.get_device_name(device)} is not: use amp='fp16' or 'auto'")
    if amp == "fp16":
        return torch.float16
    return torch.bfloat16 if bf16_ok else torch.float16


# ---------------------------------------------------------------------------------------------
# torchrun
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in a torchrun job (``world_size == 1`` without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    """Read ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (set by torchrun) from the environment."""
    vals = {}
    for key, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
        raw = os.environ.get(key)
        try:
            vals[key] = default if raw in (None, "") else int(raw)
        except ValueError:
            raise ValueError(f"environment variable {key}={raw!r} must be an integer (torchrun sets it)") from None
    if vals["WORLD_SIZE"] < 1 or not 0 <= vals["RANK"] < vals["WORLD_SIZE"]:
        raise ValueError(f"RANK={vals['RANK']} and WORLD_SIZE={vals['WORLD_SIZE']} are inconsistent: "
                         "need 0 <= RANK < WORLD_SIZE")
    return DistInfo(vals["RANK"], vals["WORLD_SIZE"], vals["LOCAL_RANK"])


def resolve_device(device=None) -> torch.device:
    """The device of this process: ``device`` (default ``cuda`` when present, else ``cpu``), with
    ``cuda`` meaning this rank's own GPU, ``cuda:LOCAL_RANK`` (one process per GPU under torchrun)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        info = dist_info()
        device = torch.device("cuda", info.local_rank if info.world_size > 1 else torch.cuda.current_device())
    return device


def init_distributed(device) -> bool:
    """Join the torchrun job's process group (``nccl`` on CUDA, ``gloo`` on the CPU) unless it is
    joined already or there is no job (``WORLD_SIZE`` 1). Returns True when this call created it
    (then the caller ends it with ``torch.distributed.destroy_process_group``)."""
    if dist_info().world_size == 1 or (dist.is_available() and dist.is_initialized()):
        return False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this build")
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True


def agree(error: BaseException | None, device=None) -> None:
    """Every rank raises when any rank has an ``error`` (a user's mistake seen by one rank only,
    e.g. rank 0 finding the output folder in use): the first failing rank's message, as a
    :class:`~imagen_edu.errors.UsageError`, on every rank, so each stops with the same one line.
    Without a process group it raises ``error`` itself. Collective: every rank must call it."""
    if not (dist.is_available() and dist.is_initialized()):
        if error is not None:
            raise error
        return
    # one byte "+" (fine) or "!" and the message: gather_bytes sends no empty buffers
    text = b"+" if error is None else b"!" + (" ".join(str(error).split()) or type(error).__name__).encode()
    blobs = rng_state.gather_bytes(text, torch.device(device or "cpu"))
    first = next((b[1:] for b in blobs if b[:1] == b"!"), None)
    if first is not None:  # the same line on every rank
        raise UsageError(first.decode()) from error


def fsdp_units(model: nn.Module) -> list[nn.Module]:
    """The blocks :class:`Trainer` shards one by one under ``parallel="fsdp"``: every element of an
    ``nn.ModuleList`` that is called as a module (not itself a list or dict), e.g. the U-Net's
    levels and a transformer's layers; the rest of the model is one more unit. Each unit's full
    weights exist only while it computes, so the peak memory is one unit's weights on top of
    ``1/N`` of everything."""
    units = []
    for m in model.modules():
        if isinstance(m, nn.ModuleList):
            units += [c for c in m if not isinstance(c, (nn.ModuleList, nn.ModuleDict))
                      and any(True for _ in c.parameters())]
    return units


def _full(t):
    """The whole tensor behind ``t``: a sharded ``DTensor`` is gathered (collective), others pass."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def _shard_like(full: torch.Tensor, ref):
    """``full`` laid out like ``ref``: this rank's shard when ``ref`` is a ``DTensor`` (no
    communication: every rank read the same file), else ``full`` itself."""
    if not isinstance(ref, DTensor):
        return full
    return distribute_tensor(full.detach().to(device=ref.device, dtype=ref.dtype), ref.device_mesh,
                             ref.placements, src_data_rank=None)


@contextlib.contextmanager
def _defer_sigint():
    """Hold back Ctrl-C (SIGINT) until the block ends, so an optimizer update is never cut in half."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    except (ValueError, OSError):  # no signals here (an embedded interpreter)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
        if received:
            raise KeyboardInterrupt


# ---------------------------------------------------------------------------------------------
# checkpoint checks
# ---------------------------------------------------------------------------------------------
def _config_diff(saved: dict, current: dict, allowed=()) -> list[str]:
    diffs = []
    for key in sorted(set(saved) | set(current)):
        if key in RESUME_FREE_FIELDS or key in allowed:
            continue
        if key not in saved:
            diffs.append(f"{key} (not in the checkpoint; now {current[key]!r})")
        elif key not in current:
            diffs.append(f"{key} (saved {saved[key]!r}; no longer a TrainConfig field)")
        elif saved[key] != current[key]:
            diffs.append(f"{key}: saved {saved[key]!r}, now {current[key]!r}")
    return diffs


def _model_diff(saved: dict[str, tuple], current: dict[str, tuple]) -> list[str]:
    missing = sorted(set(current) - set(saved))
    unexpected = sorted(set(saved) - set(current))
    shapes = [f"{k}: saved {list(saved[k])}, now {list(current[k])}"
              for k in sorted(set(saved) & set(current)) if tuple(saved[k]) != tuple(current[k])]

    def few(names):
        return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")

    out = []
    if missing:
        out.append(f"{len(missing)} tensors of this model are not in the checkpoint ({few(missing)})")
    if unexpected:
        out.append(f"{len(unexpected)} tensors in the checkpoint are not in this model ({few(unexpected)})")
    if shapes:
        out.append(f"{len(shapes)} tensors have another shape ({few(shapes)})")
    return out


# ---------------------------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------------------------
class Trainer:
    """Train ``model`` on ``loss_fn(model, batch)`` with batches from ``batch_fn(step, rank, world_size, generator)``.

    Args:
        model: any ``nn.Module`` (built and seeded by you); moved to ``device``.
        loss_fn: ``(model, batch) -> scalar tensor``, a mean over the batch's examples.
        batch_fn: ``(step, rank, world_size, generator) -> batch``: this rank's
            ``config.batch_size // world_size`` examples of step ``step``.
        config: a :class:`TrainConfig`.
        resume: continue from ``config.out_dir/checkpoint.safetensors`` if it exists (step 0
            otherwise). Without it, an existing checkpoint there is an error (never overwritten
            silently) unless ``overwrite``.
        overwrite: start afresh although ``config.out_dir`` holds a checkpoint of an earlier run;
            that file stays until this run's first checkpoint replaces it (atomically), so a
            crash before then loses nothing.
        device: default ``cuda:LOCAL_RANK`` when CUDA is present, else the CPU.
        progress: show a tqdm progress bar (rank 0 only).
        model_info: JSON-able facts about the model (e.g. its config and cascade stage), saved
            in the checkpoint; resuming with different ``model_info`` is an error.
        ddp_kwargs: extra arguments for ``DistributedDataParallel`` (e.g.
            ``find_unused_parameters=True``).
        checkpoint_name: the checkpoint's file name inside ``config.out_dir``.
        allow_changes: config fields that may differ from the checkpoint's on resume, e.g.
            ``("steps",)`` to train a finished run for longer (the schedule then follows the
            new config; the run is no longer identical to any uninterrupted one).
        decay_vectors: also apply ``config.weight_decay`` to biases and norm gains (tensors of
            fewer than 2 dimensions): one AdamW parameter group for everything.
        after_update: ``fn(model)`` called after every optimizer update, before the EMA update
            (e.g. CLIP's clamp of its learned temperature).
        generator: the batch generator handed to ``batch_fn``, seeded by you (default: a new
            one seeded from ``config.seed`` and the rank). Saved and restored like the default.
        desc: the progress bar's label.
        parallel: ``"ddp"`` (every rank holds the whole model; DistributedDataParallel) or
            ``"fsdp"`` (FSDP2's ``fully_shard`` of every :func:`fsdp_units` block and of the
            model: weights, gradients, optimizer state and EMA sharded over the ranks). The
            same in one process (no torchrun): the plain model.

    Attributes:
        step: optimizer steps done. ``losses``: the loss of every step (also restored on resume).
        history: every ``log_every`` steps a dict ``step, loss, lr, grad_norm, seconds``.
        model: the plain module (not the DDP wrapper; under FSDP the sharded module, whose
        parameters are ``DTensor`` shards). ``resumed_from``: the checkpoint's step or None.
        exact_resume: False when the resume cannot continue bit-identically (another world size
        or device, or ``allow_changes`` used); ``resume_changes``: the allowed differences found.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[[nn.Module, Any], torch.Tensor],
                 batch_fn: Callable[[int, int, int, torch.Generator], Any], config: TrainConfig, *,
                 resume: bool = False, device=None, progress: bool = True, model_info: dict | None = None,
                 ddp_kwargs: dict | None = None, allow_changes=(), checkpoint_name: str = CHECKPOINT_NAME,
                 decay_vectors: bool = False, after_update: Callable[[nn.Module], None] | None = None,
                 generator: torch.Generator | None = None, desc: str = "training", overwrite: bool = False,
                 parallel: str = "ddp"):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn) or not callable(batch_fn):
            raise TypeError("loss_fn and batch_fn must be callables: loss_fn(model, batch) -> scalar tensor, "
                            "batch_fn(step, rank, world_size, generator) -> batch")
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError("the model has no trainable parameters")
        if model_info is not None:
            try:
                model_info = json.loads(json.dumps(model_info))
            except (TypeError, ValueError) as err:
                raise TypeError(f"model_info must be JSON-serialisable: {err}") from None
        names = {f.name for f in fields(TrainConfig)}
        allow_changes = (allow_changes,) if isinstance(allow_changes, str) else tuple(allow_changes)
        unknown = [a for a in allow_changes if a not in names]
        if unknown:
            raise ValueError(f"allow_changes names unknown TrainConfig fields {unknown}; fields: {sorted(names)}")
        self.allow_changes = allow_changes
        if not isinstance(checkpoint_name, str) or not checkpoint_name or "/" in checkpoint_name:
            raise ValueError(f"checkpoint_name must be a plain file name, got {checkpoint_name!r}")
        self.checkpoint_name = checkpoint_name
        if after_update is not None and not callable(after_update):
            raise TypeError(f"after_update must be a callable or None, got {type(after_update).__name__}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        if parallel not in PARALLEL_MODES:
            raise ValueError(f"parallel must be one of {PARALLEL_MODES}, got {parallel!r}")
        self.config, self.loss_fn, self.batch_fn = config, loss_fn, batch_fn
        self.model_info, self.progress, self.desc = model_info, progress, desc
        self.after_update = after_update

        # --- checks that need no process group and no step: world size, batch split, resume folder
        self.dist = dist_info()
        ws = self.dist.world_size
        if config.batch_size % ws:
            raise ValueError(f"the world size {ws} (processes started by torchrun) does not divide "
                             f"batch_size={config.batch_size}: each rank needs the same number of examples; "
                             f"choose a batch size that is a multiple of {ws}")
        self.per_rank_batch = config.batch_size // ws
        if self.per_rank_batch % config.grad_accum:
            raise ValueError(f"grad_accum={config.grad_accum} does not divide the per-rank batch of "
                             f"{self.per_rank_batch} examples (batch_size={config.batch_size} over {ws} ranks)")
        if resume and config.out_dir is None:
            raise ValueError("resume=True needs TrainConfig.out_dir (the folder holding the checkpoint)")
        ckpt = None
        if resume and overwrite:
            raise ValueError("resume=True continues the run in out_dir and overwrite=True replaces it: pass one")
        if config.out_dir is not None and self.checkpoint_path.exists() and not overwrite:
            if not resume:
                raise ValueError(f"{self.checkpoint_path} already exists: pass resume=True to continue that run, "
                                 "overwrite=True to start afresh (the old file stays until the new run's first "
                                 "checkpoint replaces it), or choose another out_dir")
            ckpt = self._read_checkpoint(model)

        # --- device, mixed precision, process group
        self.device = resolve_device(device)
        self.amp_dtype = resolve_amp(config.amp, self.device)
        self.parallel = parallel
        self.sharded = parallel == "fsdp" and ws > 1
        if self.sharded and self.amp_dtype == torch.float16:
            raise ValueError("parallel='fsdp' does not run fp16 with a gradient scaler: use amp='bf16' (GPUs of "
                             "compute capability 8.0+) or parallel='ddp'")
        self._own_group = init_distributed(self.device)

        # --- model, EMA, optimizer, gradient scaler
        self.model = model.to(self.device)
        if self.sharded:  # every rank starts from rank 0's weights (DDP does this itself)
            with torch.no_grad():
                for t in list(self.model.parameters()) + list(self.model.buffers()):
                    dist.broadcast(t.data, 0)
        self.ema = None
        if config.ema_decay is not None:
            self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        self._template = None  # under FSDP: rank 0's plain copy that ema_model() fills with the gathered weights
        if self.sharded:
            if self.dist.is_main:
                self._template = copy.deepcopy(self.model).cpu().requires_grad_(False).eval()
            for module in [self.model] + ([self.ema] if self.ema is not None else []):
                for unit in fsdp_units(module):
                    fully_shard(unit)
                fully_shard(module)
        self._param_names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        named = dict(self.model.named_parameters())
        decay = [n for n in self._param_names if decay_vectors or named[n].dim() >= 2]
        no_decay = [n for n in self._param_names if n not in decay]
        self._group_names = [g for g in (decay, no_decay) if g]
        groups = [{"params": [named[n] for n in g], "weight_decay": config.weight_decay if g is decay else 0.0}
                  for g in self._group_names]
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr_at(0), betas=config.betas)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.train_model = self.model
        if ws > 1 and not self.sharded:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DDP(self.model, device_ids=ids, **(ddp_kwargs or {}))
            if self.ema is not None:  # DDP broadcast rank 0's weights: start the EMA from them too
                self.ema.load_state_dict(self.model.state_dict())

        # --- state
        self.step = 0
        self.losses: list[float] = []
        self.history: list[dict] = []
        self.resumed_from = None
        self.exact_resume = True
        if ckpt is None:
            self.resume_changes = []
        self.stopped_early = False
        self.generator = generator if generator is not None else torch.Generator()
        self._saved_step = None
        if ckpt is None:
            rng_state.seed_globals(derive_seed(config.seed, self.dist.rank, 0))
            if generator is None:
                self.generator.manual_seed(derive_seed(config.seed, self.dist.rank, 1))
        else:
            self._load_state(*ckpt)
        self._rng_snapshot = rng_state.capture(self.generator, self.device)

    # ------------------------------------------------------------------ public helpers
    @property
    def rank(self) -> int:
        return self.dist.rank

    @property
    def world_size(self) -> int:
        return self.dist.world_size

    @property
    def checkpoint_path(self) -> Path | None:
        """``out_dir / checkpoint_name`` (``None`` without an out_dir)."""
        return None if self.config.out_dir is None else Path(self.config.out_dir) / self.checkpoint_name

    def ema_model(self) -> nn.Module | None:
        """The EMA weights (eval mode) to sample with; the model itself when ``ema_decay`` is None.

        Under FSDP the weights are gathered (call it on every rank) into a plain module on rank 0
        (CPU; ``None`` on the other ranks).
        """
        source = self.ema if self.ema is not None else self.model
        if not self.sharded:
            return source
        full = {k: self._whole(v) for k, v in source.state_dict().items()}
        if not self.dist.is_main:
            return None
        self._template.load_state_dict(full)
        return self._template

    def export(self, path, metadata: dict | None = None, *, ema: bool = True) -> Path | None:
        """Write only the weights for sampling (the EMA ones by default) with :func:`imagen_edu.checkpoints.save`.

        ``metadata`` (e.g. the model's config) is stored with the step and the training config.
        Rank 0 writes; returns the path there and ``None`` on other ranks.
        """
        if self.sharded:  # gather on every rank first
            model = self.ema_model() if ema else self._gathered_model()
        elif not self.dist.is_main:
            return None
        else:
            model = self.ema_model() if ema else self.model
        if not self.dist.is_main:
            return None
        meta = {"step": self.step, "train_config": self.config.to_dict(), "ema": ema and self.ema is not None,
                **(metadata or {})}
        return checkpoints.save(path, model.state_dict(), meta)

    def _gathered_model(self) -> nn.Module | None:
        """Under FSDP: the trained weights gathered into a plain module on rank 0 (collective)."""
        full = {k: self._whole(v) for k, v in self.model.state_dict().items()}
        if not self.dist.is_main:
            return None
        module = copy.deepcopy(self._template)
        module.load_state_dict(full)
        return module

    def close(self) -> None:
        """Wait for every rank, then end the process group if this trainer started it."""
        if self.world_size > 1:
            if dist.is_initialized():
                dist.barrier()
                if self._own_group:
                    dist.destroy_process_group()
                    self._own_group = False

    # ------------------------------------------------------------------ training
    def train(self) -> list[float]:
        """Run steps ``self.step .. config.steps - 1``; returns the losses of all steps so far.

        Raises ``FloatingPointError`` on a non-finite loss (naming the step) and re-raises
        ``KeyboardInterrupt`` after writing a checkpoint of the last finished step.
        """
        cfg = self.config
        bar = tqdm(total=cfg.steps, initial=self.step, desc=self.desc, leave=False,
                   disable=not (self.progress and self.dist.is_main))
        self.model.train()
        self.stopped_early = False
        self._rng_snapshot = rng_state.capture(self.generator, self.device)  # whatever ran since __init__
        start = time.perf_counter()
        try:
            while self.step < cfg.steps:
                if self._time_is_up(start):
                    self.stopped_early = True
                    break
                loss, lr, norm = self._train_step()
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    self.history.append({"step": self.step, "loss": loss, "lr": lr, "grad_norm": norm,
                                         "seconds": time.perf_counter() - start})
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
            if cfg.out_dir is not None and self._saved_step != self.step:
                self.save_checkpoint()
        except KeyboardInterrupt:
            # rewind the generators to the start of the unfinished step, forget its gradients,
            # and keep the last finished step on disk (rank 0; other ranks may be gone already)
            rng_state.restore(self._rng_snapshot, self.generator, self.device)
            self.optimizer.zero_grad(set_to_none=True)
            if cfg.out_dir is not None and not self.sharded:  # FSDP: gathering needs every rank
                self.save_checkpoint(gather=False)
            raise
        finally:
            bar.close()
        if self.world_size > 1:
            dist.barrier()
        return list(self.losses)

    def _time_is_up(self, start: float) -> bool:
        if self.config.max_seconds is None:
            return False
        up = time.perf_counter() - start > self.config.max_seconds
        if self.world_size > 1:  # every rank must stop at the same step
            flag = torch.tensor([float(up)], device=self.device if dist.get_backend() == "nccl" else "cpu")
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            up = bool(flag.item() > 0)
        return up

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _train_step(self) -> tuple[float, float, float | None]:
        cfg, step = self.config, self.step
        lr = cfg.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = self.batch_fn(step, self.rank, self.world_size, self.generator)
        micro = split_batch(batch, cfg.grad_accum)
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for i, mb in enumerate(micro):
            mb = to_device(mb, self.device)
            sync = self.world_size == 1 or i == len(micro) - 1
            if self.sharded:  # FSDP2's no_sync: reduce-scatter the gradients after the last micro-batch only
                self.train_model.set_requires_gradient_sync(sync)
            with contextlib.nullcontext() if sync or self.sharded else self.train_model.no_sync():
                with self._autocast():
                    loss = self.loss_fn(self.train_model, mb)
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad:
                    raise TypeError(f"loss_fn must return a scalar tensor that requires grad, got "
                                    f"{type(loss).__name__} {tuple(getattr(loss, 'shape', ()))} at step {step}")
                self.scaler.scale(loss.reshape(()) / len(micro)).backward()
            total += loss.detach().float().reshape(())
        mean = total / len(micro)
        if self.world_size > 1:
            dist.all_reduce(mean)  # every rank sees the same value, so every rank stops on a NaN
            mean /= self.world_size
        value = mean.item()
        if not math.isfinite(value):
            self.optimizer.zero_grad(set_to_none=True)
            where = f"; the last checkpoint is at step {self._saved_step}" if self._saved_step is not None else ""
            raise FloatingPointError(f"the loss is {value} at step {step}: training stopped before the optimizer "
                                     f"changed the weights{where}. Lower lr, raise warmup_steps or set grad_clip")
        norm = None
        with _defer_sigint():  # the update below is all or nothing, even under Ctrl-C
            if cfg.grad_clip is not None:
                self.scaler.unscale_(self.optimizer)
                norm = float(_full(nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)))
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.after_update is not None:
                self.after_update(self.model)
            if self.ema is not None:
                ema_update(self.ema, self.model, ema_decay_at(step, cfg.ema_decay, cfg.ema_warmup))
            self.losses.append(value)
            self.step = step + 1
            self._rng_snapshot = rng_state.capture(self.generator, self.device)
        return value, lr, norm

    # ------------------------------------------------------------------ checkpoints
    def _whole(self, t):
        """For a checkpoint: ``t`` itself, or under FSDP the gathered tensor on rank 0's CPU (``None``
        elsewhere: no rank but rank 0 holds the full state for longer than one tensor's gather)."""
        if not self.sharded:
            return t
        full = _full(t)
        return full.cpu() if self.dist.is_main else None

    def _optimizer_tensors(self) -> tuple[dict, dict, list]:
        """Optimizer state as ``optim/<param name>/<slot>`` tensors, non-tensor slots, and param groups
        (under FSDP each moment is gathered whole: call it on every rank)."""
        sd = self.optimizer.state_dict()
        index = {}  # optimizer's integer id -> parameter name
        groups = []
        for g_sd, names in zip(sd["param_groups"], self._group_names):
            index.update(dict(zip(g_sd["params"], names)))
            groups.append({k: v for k, v in g_sd.items() if k != "params"} | {"params": names})
        tensors, extra = {}, {}
        for pid, slots in sd["state"].items():
            name = index[pid]
            for slot, v in slots.items():
                if isinstance(v, torch.Tensor):
                    tensors[f"optim/{name}/{slot}"] = self._whole(v)
                else:
                    extra.setdefault(name, {})[slot] = v
        return tensors, extra, groups

    def save_checkpoint(self, path=None, *, gather: bool = True) -> Path | None:
        """Write the full training state to ``path`` (default :attr:`checkpoint_path`), atomically.

        Call it on every rank: under torchrun it gathers each rank's random generators (when
        ``gather``) and rank 0 writes. Returns the path on rank 0, ``None`` elsewhere.
        """
        path = Path(path) if path is not None else self.checkpoint_path
        if path is None:
            raise ValueError("no path given and TrainConfig.out_dir is None")
        if self.world_size > 1 and gather:
            blobs = rng_state.gather_bytes(rng_state.to_bytes(self._rng_snapshot), self.device)
            rngs = {str(r): rng_state.from_bytes(b) for r, b in enumerate(blobs)}
        else:
            rngs = {str(self.rank): rng_state.jsonable(self._rng_snapshot)}
        if self.sharded:  # gather every shard (collective), in the same order on every rank
            tensors = {f"model/{k}": self._whole(v) for k, v in self.model.state_dict().items()}
            if self.ema is not None:
                tensors.update({f"ema/{k}": self._whole(v) for k, v in self.ema.state_dict().items()})
            opt_tensors, opt_extra, groups = self._optimizer_tensors()
        if not self.dist.is_main:
            self._saved_step = self.step  # every rank must agree on what is saved (see train())
            return None
        if not self.sharded:
            tensors = {f"model/{k}": v for k, v in self.model.state_dict().items()}
            if self.ema is not None:
                tensors.update({f"ema/{k}": v for k, v in self.ema.state_dict().items()})
            opt_tensors, opt_extra, groups = self._optimizer_tensors()
        tensors.update(opt_tensors)
        tensors["train/losses"] = torch.tensor(self.losses, dtype=torch.float64)
        rng_json = {}
        for r, st in rngs.items():
            for k in rng_state.TENSOR_PARTS:
                if st[k] is not None:
                    tensors[f"rng/{r}/{k}"] = st[k]
            rng_json[r] = {k: st[k] for k in rng_state.JSON_PARTS}
        meta = {
            "format": FORMAT,
            "step": self.step,
            "config": self.config.to_dict(),
            "world_size": self.world_size,
            "parallel": self.parallel,
            "model_info": self.model_info,
            "param_groups": groups,
            "optim_extra": opt_extra,
            "scaler": self.scaler.state_dict(),
            "rng": rng_json,
            "rng_complete": len(rngs) == self.world_size,
            "amp_dtype": None if self.amp_dtype is None else str(self.amp_dtype),
            "torch": torch.__version__,
        }
        checkpoints.save(path, tensors, meta)
        self._saved_step = self.step
        return path

    def _read_checkpoint(self, model: nn.Module) -> tuple[dict, dict]:
        """Load and check the run's checkpoint against this config and model (before any step)."""
        path = self.checkpoint_path
        tensors, meta = checkpoints.load(path)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a training checkpoint written by imagen_edu.train.Trainer "
                             f"(format {meta.get('format') if isinstance(meta, dict) else None!r}, "
                             f"expected {FORMAT!r})")
        diffs = _config_diff(meta.get("config", {}), self.config.to_dict(), self.allow_changes)
        self.resume_changes = [d for d in _config_diff(meta.get("config", {}), self.config.to_dict())
                               if d.split(":")[0].split(" ")[0] in self.allow_changes]
        if diffs:
            raise ValueError(f"cannot resume from {path}: it was made with another TrainConfig. Differing fields: "
                             + "; ".join(diffs) + ". Use the saved config, or another out_dir for a new run")
        if meta.get("model_info") != self.model_info:
            raise ValueError(f"cannot resume from {path}: it is a checkpoint of another model or stage: "
                             f"saved model_info {meta.get('model_info')!r}, now {self.model_info!r}")
        saved = {k[len("model/"):]: tuple(v.shape) for k, v in tensors.items() if k.startswith("model/")}
        current = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        problems = _model_diff(saved, current)
        if problems:
            raise ValueError(f"cannot resume from {path}: it is a checkpoint of another model: "
                             + "; ".join(problems) + ". Build the same model as the run that wrote it, or use another "
                             "out_dir")
        if (self.config.ema_decay is not None) != any(k.startswith("ema/") for k in tensors):
            raise ValueError(f"cannot resume from {path}: EMA weights are "
                             f"{'missing' if self.config.ema_decay is not None else 'present'} in it")
        return tensors, meta

    def _load_state(self, tensors: dict, meta: dict) -> None:
        dev = self.device
        for prefix, module in (("model/", self.model), ("ema/", self.ema)):
            if module is not None:  # under FSDP each rank keeps its shard of the full tensors read
                ref = module.state_dict()
                module.load_state_dict({k[len(prefix):]: _shard_like(v, ref[k[len(prefix):]])
                                        for k, v in tensors.items() if k.startswith(prefix)})
        # optimizer: rebuild its state_dict with this optimizer's integer ids
        sd = self.optimizer.state_dict()
        ids = {}
        for g_sd, names in zip(sd["param_groups"], self._group_names):
            ids.update(dict(zip(names, g_sd["params"])))
        state: dict = {}
        params = dict(self.model.named_parameters())
        for key, v in tensors.items():
            if key.startswith("optim/"):
                name, slot = key[len("optim/"):].rsplit("/", 1)
                p = params[name]
                state.setdefault(ids[name], {})[slot] = v if slot == "step" else _shard_like(v, p)
        for name, slots in meta.get("optim_extra", {}).items():
            state.setdefault(ids[name], {}).update(slots)
        groups = []
        for g_saved, g_sd in zip(meta["param_groups"], sd["param_groups"]):
            groups.append({k: (tuple(v) if isinstance(v, list) else v) for k, v in g_saved.items() if k != "params"}
                          | {"params": g_sd["params"]})
        self.optimizer.load_state_dict({"state": state, "param_groups": groups})
        if meta.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(meta["scaler"])
        self.step = int(meta["step"])
        self.losses = tensors["train/losses"].tolist() if "train/losses" in tensors else []
        self.resumed_from = self.step
        self._saved_step = self.step
        r = str(self.rank)
        if r in meta.get("rng", {}) and f"rng/{r}/torch" in tensors:
            st = {k: tensors.get(f"rng/{r}/{k}") for k in rng_state.TENSOR_PARTS} | meta["rng"][r]
            if st["cuda"] is not None and dev.type != "cuda":
                st["cuda"] = None
            rng_state.restore(st, self.generator, dev)
            self.exact_resume = meta.get("world_size") == self.world_size and (
                (st["cuda"] is None) == (dev.type != "cuda"))
        else:  # e.g. more ranks than the run that wrote the checkpoint
            rng_state.seed_globals(derive_seed(self.config.seed, self.rank, 0, self.step))
            self.generator.manual_seed(derive_seed(self.config.seed, self.rank, 1, self.step))
            self.exact_resume = False
        if not self.exact_resume and self.dist.is_main:
            warnings.warn(f"resuming step {self.step} of a run written with world size {meta.get('world_size')} on "
                          f"world size {self.world_size} (or another device): random generators are re-seeded, "
                          "so the run continues correctly but not bit-identically", stacklevel=3)
        if self.resume_changes:  # allowed on purpose: no warning, but no longer an exact continuation
            self.exact_resume = False


# ---------------------------------------------------------------------------------------------
# the small models' recipe (chapters 2 and 4)
# ---------------------------------------------------------------------------------------------
def train_small(model: nn.Module, loss_fn: Callable[[nn.Module, Any], torch.Tensor],
                batch_fn: Callable[[int, int, int, torch.Generator], Any], *, steps: int, batch_size: int,
                lr: float, seed: int = 0, warmup: int = 20, max_seconds: float | None = None,
                after_update: Callable[[nn.Module], None] | None = None, progress: bool = True,
                desc: str = "training", threads: int | None = 1) -> list[float]:
    """Train ``model`` with the recipe of chapter 2's language model and chapter 4's CLIP.

    One :class:`Trainer` run on the model's device: AdamW with ``betas=(0.9, 0.98)`` and weight
    decay 0.01 on every parameter (``decay_vectors``), the gradient norm clipped to 1, the
    learning rate warmed up for ``warmup`` steps then decayed with a cosine to 10% of ``lr``
    (Eq. ch6-eq-lr), no EMA, no mixed precision. ``batch_fn`` draws from a
    ``torch.Generator().manual_seed(seed)``; ``after_update(model)`` runs after every step;
    training stops early after ``max_seconds`` if given. ``threads``: CPU threads torch may use
    meanwhile (:func:`imagen_edu.profiles.torch_threads`; these models are so small that one is
    fastest); ``None`` keeps torch's setting.

    Returns the loss of every step taken; the model is left in eval mode.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, weight_decay=0.01, warmup_steps=warmup,
                         min_lr_ratio=0.1, grad_clip=1.0, ema_decay=None, amp="off", betas=(0.9, 0.98),
                         seed=int(seed), max_seconds=max_seconds)
    trainer = Trainer(model, loss_fn, batch_fn, config, device=device, progress=progress, desc=desc,
                      decay_vectors=True, after_update=after_update,
                      generator=torch.Generator().manual_seed(int(seed)))
    with torch_threads(threads, device):
        losses = trainer.train()
    model.eval()
    return losses
