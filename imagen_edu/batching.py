"""Batches for the trainer: moving, splitting, and a resumable sharded data-set reader (chapter 6).

:class:`imagen_edu.train.Trainer` asks a ``batch_fn(step, rank, world_size, generator)`` for this
rank's share of the batch of a step. Procedural data (the shapes benchmark) computes it from the
step; a real data set goes through :class:`DatasetBatches`, which shards shuffled epochs over
the ranks like a ``DistributedSampler`` but as a pure function of the step, so a resumed run
needs no iterator state. The trainer cuts a batch into gradient-accumulation micro-batches with
:func:`split_batch` and moves each to its device with :func:`to_device`.

A batch is a tensor ``(B, ...)``, a list of ``B`` strings or numbers (captions, labels), or a
tuple/list/dict of those.
"""

from __future__ import annotations

from numbers import Integral
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, default_collate

__all__ = ["split_batch", "to_device", "DatasetBatches", "derive_seed"]


def derive_seed(*parts: int) -> int:
    """A well-mixed 32-bit seed from integers ``(seed, rank, stream, ...)`` (NumPy's ``SeedSequence``)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _is_items(x) -> bool:
    """A list of plain values (captions, labels): split by slicing rather than field by field."""
    return isinstance(x, list) and all(isinstance(v, (str, bytes, int, float, bool)) for v in x)


def split_batch(batch, k: int) -> list:
    """Split ``batch`` into ``k`` equal micro-batches along the first dimension.

    ``batch``: a tensor ``(B, ...)``, a list of strings/numbers of length ``B``, or a
    tuple/list/dict of those (split field by field); ``None`` and other scalars are repeated.
    ``B`` must be divisible by ``k``. Returns ``k`` batches of ``B / k`` examples.
    """
    if k == 1:
        return [batch]
    if isinstance(batch, torch.Tensor):
        if batch.dim() == 0 or batch.shape[0] % k:
            raise ValueError(f"cannot split a tensor of shape {tuple(batch.shape)} into {k} equal micro-batches "
                             "along dimension 0 (grad_accum must divide the per-rank batch)")
        return list(batch.split(batch.shape[0] // k))
    if _is_items(batch):
        if len(batch) % k:
            raise ValueError(f"cannot split a list of {len(batch)} items into {k} equal micro-batches")
        n = len(batch) // k
        return [batch[i * n:(i + 1) * n] for i in range(k)]
    if isinstance(batch, dict):
        parts = {key: split_batch(v, k) for key, v in batch.items()}
        return [{key: parts[key][i] for key in batch} for i in range(k)]
    if isinstance(batch, (tuple, list)):
        parts = [split_batch(v, k) for v in batch]
        out = [[p[i] for p in parts] for i in range(k)]
        if isinstance(batch, tuple):
            make = (lambda xs: type(batch)(*xs)) if hasattr(batch, "_fields") else (lambda xs: type(batch)(xs))
            return [make(o) for o in out]
        return out
    if batch is None or isinstance(batch, (str, int, float, bool)):
        return [batch] * k
    raise TypeError(f"grad_accum > 1 needs a batch made of tensors, lists, tuples and dicts to split it, "
                    f"got {type(batch).__name__}")


def to_device(batch, device):
    """``batch`` with every tensor moved to ``device`` (same structure; strings and numbers kept)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple):
        items = [to_device(v, device) for v in batch]
        return type(batch)(*items) if hasattr(batch, "_fields") else tuple(items)
    if isinstance(batch, list) and not _is_items(batch):
        return [to_device(v, device) for v in batch]
    return batch


class DatasetBatches:
    """A ``batch_fn`` over a map-style data set: shuffled epochs, sharded over ranks, resumable at any step.

    The global batch of step ``s`` is items ``s * B ... s * B + B - 1`` of an endless sequence of
    epochs, each a permutation of the data set drawn from ``(seed, epoch)``; rank ``r`` of
    ``N`` gets the ``r``-th contiguous slice of ``B / N`` of them (what a ``DistributedSampler``
    gives, but a pure function of the step, so resuming needs no iterator state and one process
    with the whole batch sees exactly the union of the ranks' batches).

    Args:
        dataset: supports ``len`` and ``dataset[i]``.
        batch_size: the global batch size (``TrainConfig.batch_size``).
        seed: seed of the epoch permutations.
        shuffle: ``False`` keeps the data set's order.
        num_workers: > 0 loads with a ``torch.utils.data.DataLoader`` and that many worker
            processes (same batches, in the background; random augmentations inside the data
            set then draw from the workers' own seeds, so only ``num_workers=0`` reproduces
            them bit for bit after a resume).
        collate_fn: builds a batch from a list of items (default: ``default_collate``).
    """

    def __init__(self, dataset, batch_size: int, *, seed: int = 0, shuffle: bool = True, num_workers: int = 0,
                 collate_fn: Callable | None = None, pin_memory: bool = False):
        if not isinstance(batch_size, Integral) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if len(dataset) < 1:
            raise ValueError("the data set is empty")
        self.dataset, self.batch_size, self.seed, self.shuffle = dataset, int(batch_size), int(seed), shuffle
        self.num_workers, self.pin_memory = int(num_workers), pin_memory
        self.collate_fn = collate_fn or default_collate
        self._perm_epoch, self._perm = None, None
        self._iter, self._expect = None, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self._perm_epoch != epoch:
            n = len(self.dataset)
            self._perm = (torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(self.seed, epoch)))
                          if self.shuffle else torch.arange(n))
            self._perm_epoch = epoch
        return self._perm

    def indices(self, step: int, rank: int = 0, world_size: int = 1) -> list[int]:
        """Data-set indices of rank ``rank``'s share of the batch of ``step``."""
        if self.batch_size % world_size:
            raise ValueError(f"world size {world_size} does not divide the batch size {self.batch_size}")
        per = self.batch_size // world_size
        n = len(self.dataset)
        out = []
        for pos in range(step * self.batch_size + rank * per, step * self.batch_size + (rank + 1) * per):
            out.append(int(self._permutation(pos // n)[pos % n]))
        return out

    def _sampler(self, start: int, rank: int, world_size: int):
        step = start
        while True:
            yield self.indices(step, rank, world_size)
            step += 1

    def __call__(self, step: int, rank: int, world_size: int, generator=None):
        if self.num_workers <= 0:
            return self.collate_fn([self.dataset[i] for i in self.indices(step, rank, world_size)])
        if self._iter is None or self._expect != (step, rank, world_size):
            # a fresh copy of the sampler state: the DataLoader reads batch indices from it ahead of time
            helper = DatasetBatches(self.dataset, self.batch_size, seed=self.seed, shuffle=self.shuffle)
            # its own generator for the workers' seeds: starting a loader must not draw from the
            # global generator, or a resumed run would drift from an uninterrupted one
            seeds = torch.Generator().manual_seed(derive_seed(self.seed, step, rank, 2))
            loader = DataLoader(self.dataset, batch_sampler=helper._sampler(step, rank, world_size),
                                num_workers=self.num_workers, collate_fn=self.collate_fn,
                                pin_memory=self.pin_memory, generator=seeds)
            self._iter = iter(loader)
        batch = next(self._iter)
        self._expect = (step + 1, rank, world_size)
        return batch
