"""Caches of a frozen text encoder's outputs keyed by caption: in memory, or on disk through memory maps (chapter 6).

Both caches share one interface, :class:`CaptionCache`: ``lookup(captions) -> (emb (B, T, D),
mask (B, T))`` exactly as the encoder would return it (zeros on padding), ``rows(captions)`` /
``ids(captions)`` (each caption's row), ``dim``, ``encoder_name`` and ``as_encoder()`` (a
:class:`~imagen_edu.text_encoders.CachedTextEncoder`):

* :class:`TextCache`: in memory; a caption is encoded the first time it is asked for. A stage's
  training encodes its few distinct captions once this way (the benchmark has 1098) and indexes
  the whole ``(N, T, D)`` table by row on the device.
* :class:`EmbeddingCache`: a folder written once by :func:`build_cache`, memory-mapped; for
  corpora too big to encode at every run.

Why: Imagen's text encoder, T5-XXL, has 4.6B parameters, more than the 2B base U-Net it
conditions. Encoding every caption of every batch on the fly would spend most of a large run's
compute (and GPU memory) on a *frozen* network whose output never changes. So the captions are
encoded once, written to disk, and each training step only reads the rows it needs. The files
are memory-mapped (:class:`numpy.memmap`): opening a cache of millions of captions reads nothing,
and a lookup touches only its own rows, so many data-loader processes can share one cache
through the operating system's page cache.

Layout of a cache folder (:func:`build_cache` writes it; every file is written under a temporary
name and renamed into place, and ``meta.json`` is written last, so a crash never leaves a cache
that looks complete):

* ``tokens.bin``: the real (unpadded) token embeddings of every distinct caption, one after the
  other, a raw ``(total_tokens, D)`` array of ``float16`` (default) or ``float32``;
* ``offsets.bin``: ``int64 (N + 1,)``: caption ``i`` owns rows ``offsets[i]:offsets[i + 1]``;
* ``meta.json``: the captions in row order, the encoder's name, ``D``, the dtype, the longest
  caption ``T`` and the byte size and SHA-256 of both files.

Storing tokens without padding keeps the file as small as the text; a lookup pads to ``T``
with zeros and returns the mask, exactly like the encoder.

Command line: ``python -m imagen_edu embed --encoder NAME --captions FILE --out DIR`` (the
captions file is read by :func:`imagen_edu.data.captions.read_captions`).

Derived in chapter 6 (Section "Precomputed text embeddings").
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import checkpoints
from .data.captions import read_captions
from .text_encoders import CachedTextEncoder

__all__ = ["CaptionCache", "TextCache", "EmbeddingCache", "build_cache", "encode_batches", "CachedTextEncoder",
           "read_captions", "FORMAT"]

FORMAT = "imagen_edu.embcache/1"
_DTYPES = {"float16": np.float16, "float32": np.float32}


def encode_batches(encoder, captions: Sequence[str], batch_size: int, progress: bool = False):
    """Run ``encoder`` over ``captions`` in order, ``batch_size`` at a time.

    Yields ``(batch (list of b str), emb (b, T_batch, D) float32 cpu, mask (b, T_batch) bool cpu)``
    per batch; an encoder whose output does not have the shapes of the interface raises
    ``ValueError``. Both caches encode through it.
    """
    D = int(encoder.dim)
    it = range(0, len(captions), batch_size)
    if progress:
        it = tqdm(it, desc=f"encoding {len(captions)} captions", leave=False)
    for s in it:
        batch = list(captions[s:s + batch_size])
        emb, mask = encoder.encode(batch)
        if emb.dim() != 3 or emb.shape[-1] != D or mask.shape != emb.shape[:2] or len(emb) != len(batch):
            raise ValueError(f"encoder {getattr(encoder, 'name', encoder)!r} returned emb {tuple(emb.shape)} and "
                             f"mask {tuple(mask.shape)} for {len(batch)} captions; expected (B, T, {D}) and (B, T)")
        yield batch, emb.detach().float().cpu(), mask.detach().bool().cpu()


def _caption_list(captions) -> list[str]:
    if isinstance(captions, str):
        raise TypeError("lookup expects a list of str, got a single str: wrap it as [caption]")
    return list(captions)


class CaptionCache:
    """The interface of a cache of a frozen text encoder's outputs, keyed by caption.

    ``lookup(captions) -> (emb (B, T, D) float32, mask (B, T) bool)`` gives what the encoder gives
    (zeros on padding; ``T`` is the cache's own, the longest caption it holds), ``rows`` /
    ``ids`` each caption's row in the cache, ``dim`` is D, ``encoder_name`` the encoder's
    :func:`~imagen_edu.text_encoders.get` name, ``index`` maps caption -> row.
    """

    dim: int
    encoder_name: str
    index: dict[str, int]

    def rows(self, captions: Sequence[str]) -> list[int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def lookup(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def ids(self, captions: Sequence[str]) -> torch.Tensor:
        """The rows of ``captions`` as a ``(B,)`` long tensor (for indexing a whole table on the device)."""
        return torch.tensor(self.rows(captions), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, caption) -> bool:
        return caption in self.index

    def as_encoder(self) -> CachedTextEncoder:
        """A text encoder (``dim``, ``name``, ``encode``) that reads this cache instead of running a model."""
        return CachedTextEncoder(self)


class TextCache(CaptionCache):
    """An in-memory cache: each distinct caption is encoded once, the first time it is asked for.

    ``emb (N, T, D)`` and ``mask (N, T)`` hold every caption seen so far (row ``index[c]``),
    padded with zeros to the longest (``T`` grows when a longer caption arrives). New captions
    are encoded in sorted order, ``chunk`` at a time, so the table depends only on the set of
    captions asked for in each call, not on their order or repeats.

    Args:
        encoder: a text encoder (:class:`~imagen_edu.text_encoders.TextEncoder`).
        captions: captions to encode now.
        chunk: captions per ``encoder.encode`` call.

    Training reads it as: ``cache = TextCache(encoder, captions); rows = cache.ids(captions)``,
    then ``cache.emb[rows]``, ``cache.mask[rows]`` (what :meth:`lookup` returns).
    """

    def __init__(self, encoder, captions: Sequence[str] = (), chunk: int = 256):
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"chunk must be an int >= 1, got {chunk!r}")
        self.encoder, self.chunk = encoder, chunk
        self.encoder_name = getattr(encoder, "name", type(encoder).__name__)
        self.index: dict[str, int] = {}
        self.emb: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None
        self.add(captions)

    @property
    def dim(self) -> int:
        return int(self.encoder.dim)

    def __repr__(self) -> str:
        return f"TextCache({len(self)} captions, dim={self.dim}, encoder={self.encoder_name!r})"

    def add(self, captions: Sequence[str]) -> None:
        """Encode the captions not yet in the cache (sorted, ``chunk`` at a time) and append their rows."""
        new = sorted({c for c in _caption_list(captions) if c not in self.index})
        if not new:
            return
        embs, masks = [], []
        for _, e, m in encode_batches(self.encoder, new, self.chunk):
            embs.append(e)
            masks.append(m)
        T = max([e.shape[1] for e in embs] + ([self.emb.shape[1]] if self.emb is not None else []))
        if self.emb is not None:
            embs.insert(0, self.emb)
            masks.insert(0, self.mask)
        self.emb = torch.cat([F.pad(e, (0, 0, 0, T - e.shape[1])) for e in embs])
        self.mask = torch.cat([F.pad(m, (0, T - m.shape[1])) for m in masks])
        for c in new:
            self.index[c] = len(self.index)

    def rows(self, captions: Sequence[str]) -> list[int]:
        """The row of each caption, encoding the new ones first."""
        captions = _caption_list(captions)
        self.add(captions)
        return [self.index[c] for c in captions]

    def lookup(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``captions`` (B str) -> ``(emb (B, T, D) float32, mask (B, T) bool)``, ``T`` the longest caption held."""
        i = self.ids(captions)
        return self.emb[i], self.mask[i]


def build_cache(encoder, captions: Sequence[str], path, batch_size: int = 64, *, dtype: str = "float16",
                overwrite: bool = False, progress: bool = False) -> "EmbeddingCache":
    """Encode every distinct caption once with ``encoder`` and write the cache folder ``path``.

    Args:
        encoder: any text encoder of :mod:`imagen_edu.text_encoders` (``encode(texts) ->
            (emb (B, T, D), mask (B, T))``, ``dim``, ``name``).
        captions: the captions (duplicates are encoded once; order is kept, first occurrence).
        path: the cache folder (created). An existing cache there is an error unless ``overwrite``.
        batch_size: captions encoded at once.
        dtype: ``"float16"`` (half the disk, what large runs store) or ``"float32"`` (exact).
            A value too large for float16 raises ``ValueError`` suggesting float32.
        progress: show a tqdm bar.

    Returns the opened :class:`EmbeddingCache`.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {dtype!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if isinstance(captions, str):
        raise TypeError("captions must be a list of str, got a single str")
    unique = list(dict.fromkeys(captions))
    if not unique:
        raise ValueError("no captions to encode")
    for c in unique:
        if not isinstance(c, str) or not c.strip():
            raise ValueError(f"every caption must be a non-empty str, got {c!r}")
    path = Path(path)
    if (path / "meta.json").exists() and not overwrite:
        raise ValueError(f"{path} already holds an embedding cache: pass overwrite=True (--overwrite) to replace it")
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{path} is an existing file, not a folder: choose a folder for the cache")
        others = sorted(set(os.listdir(path)) - set(CACHE_FILES))
        if others:  # never replace a folder that holds anything but a cache
            raise ValueError(f"{path} holds files that are not part of an embedding cache ({others[:3]}): "
                             "choose a new or empty folder for the cache")
    path.parent.mkdir(parents=True, exist_ok=True)
    # the new cache is written into a folder beside PATH and moved in only when complete, so an
    # old cache there stays whole until its replacement exists (and a crash leaves it untouched)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.new-", dir=path.parent))
    try:
        _write_cache(encoder, unique, work, batch_size, dtype, progress)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(work, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(work, path)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return EmbeddingCache(path)


#: the files of a cache folder (and the temporary names they are written under)
CACHE_FILES = ("tokens.bin", "offsets.bin", "meta.json", "tokens.bin.tmp", "offsets.bin.tmp", "meta.json.tmp")


def _write_cache(encoder, unique: list[str], path: Path, batch_size: int, dtype: str, progress: bool) -> None:
    """Encode ``unique`` captions into the (new, empty) folder ``path``: tokens.bin, offsets.bin, meta.json."""
    D = int(encoder.dim)
    np_dtype = _DTYPES[dtype]
    tmp_tokens, tmp_offsets = path / "tokens.bin.tmp", path / "offsets.bin.tmp"
    offsets = [0]
    max_len = 0
    with open(tmp_tokens, "wb") as fh:
        for batch, emb, mask in encode_batches(encoder, unique, batch_size, progress):
            for i in range(len(batch)):
                rows = emb[i][mask[i]].numpy()              # (n_i, D): the real tokens only
                if len(rows) == 0:
                    raise ValueError(f"the encoder gave caption {batch[i]!r} no real token (empty mask)")
                big = float(np.abs(rows).max())
                if not np.isfinite(rows).all() or big > float(np.finfo(np_dtype).max):
                    raise ValueError(f"caption {batch[i]!r}: embedding values do not fit in {dtype} "
                                     f"(max |x| = {big:.4g}): use dtype='float32'")
                fh.write(np.ascontiguousarray(rows.astype(np_dtype)).tobytes())
                offsets.append(offsets[-1] + len(rows))
                max_len = max(max_len, len(rows))
        fh.flush()
        os.fsync(fh.fileno())
    np.asarray(offsets, dtype=np.int64).tofile(tmp_offsets)
    os.replace(tmp_tokens, path / "tokens.bin")
    os.replace(tmp_offsets, path / "offsets.bin")
    meta = {"format": FORMAT, "encoder": getattr(encoder, "name", type(encoder).__name__), "dim": D,
            "dtype": dtype, "count": len(unique), "total_tokens": offsets[-1], "max_len": max_len,
            "files": {f: {"bytes": (path / f).stat().st_size, "sha256": checkpoints.sha256(path / f)}
                      for f in ("tokens.bin", "offsets.bin")},
            "captions": unique}
    tmp_meta = path / "meta.json.tmp"
    tmp_meta.write_text(json.dumps(meta))
    os.replace(tmp_meta, path / "meta.json")


class EmbeddingCache(CaptionCache):
    """A cache folder written by :func:`build_cache`, memory-mapped.

    ``lookup(captions) -> (emb (B, T, D) float32, mask (B, T) bool)`` reads only those captions'
    rows; ``T`` is the longest caption in the cache (``max_len``), so every batch has the same
    shape, and padding positions are zeros (as the encoders return them).

    Args:
        path: the folder.
        expected_dim: if given, a cache of another width raises ``ValueError`` (e.g. the
            stage's ``text_dim``).
        verify: also check the SHA-256 of the files (reads them all; sizes are always checked).

    Errors: a missing or malformed ``meta.json``, files whose size differs from the recorded
    one (truncated or corrupt), offsets that do not fit the token file: ``ValueError`` naming the
    file. An unknown caption: ``KeyError`` naming it.
    """

    def __init__(self, path, expected_dim: int | None = None, verify: bool = False):
        self.path = path = Path(path)
        mfile = path / "meta.json"
        if not mfile.is_file():
            raise ValueError(f"{path} is not an embedding cache (no meta.json): build one with "
                             "imagen_edu.embcache.build_cache or 'python -m imagen_edu embed'")
        try:
            meta = json.loads(mfile.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{mfile} is corrupt: not valid JSON ({err})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"{mfile} is not an embedding cache of format {FORMAT!r}")
        self.meta = meta
        self.dim, self.dtype, self.max_len = int(meta["dim"]), meta["dtype"], int(meta["max_len"])
        self.encoder_name = meta["encoder"]
        self.captions: list[str] = list(meta["captions"])
        n, total = int(meta["count"]), int(meta["total_tokens"])
        if len(self.captions) != n:
            raise ValueError(f"{mfile} is corrupt: {len(self.captions)} captions listed, count says {n}")
        if expected_dim is not None and self.dim != expected_dim:
            raise ValueError(f"{path} holds {self.dim}-d embeddings (encoder {self.encoder_name!r}) but "
                             f"{expected_dim}-d are expected (the stage's text_dim): rebuild the cache with "
                             "the stage's text encoder")
        itemsize = np.dtype(_DTYPES[self.dtype]).itemsize
        want = {"tokens.bin": total * self.dim * itemsize, "offsets.bin": (n + 1) * 8}
        for f, size in want.items():
            p = path / f
            if not p.is_file():
                raise ValueError(f"embedding cache {path} is incomplete: {f} is missing")
            got = p.stat().st_size
            if got != size or got != meta["files"][f]["bytes"]:
                raise ValueError(f"embedding cache file {p} is truncated or corrupt: {got} bytes, expected {size}")
            if verify and checkpoints.sha256(p) != meta["files"][f]["sha256"]:
                raise ValueError(f"embedding cache file {p} is corrupt: its sha256 differs from meta.json's")
        self.offsets = np.fromfile(path / "offsets.bin", dtype=np.int64)
        if (self.offsets[0] != 0 or self.offsets[-1] != total or (np.diff(self.offsets) < 1).any()
                or int(np.diff(self.offsets).max()) != self.max_len):
            raise ValueError(f"embedding cache file {path / 'offsets.bin'} is corrupt: offsets do not fit "
                             f"{total} tokens")
        self.tokens = np.memmap(path / "tokens.bin", dtype=_DTYPES[self.dtype], mode="r", shape=(total, self.dim))
        self.index = {c: i for i, c in enumerate(self.captions)}

    def __repr__(self) -> str:
        return (f"EmbeddingCache({str(self.path)!r}, {len(self)} captions, dim={self.dim}, "
                f"dtype={self.dtype}, encoder={self.encoder_name!r})")

    def rows(self, captions: Sequence[str]) -> list[int]:
        """The row of each caption; ``KeyError`` naming the first unknown ones."""
        captions = _caption_list(captions)
        missing = [c for c in captions if c not in self.index]
        if missing:
            raise KeyError(f"{len(missing)} caption(s) not in the embedding cache {self.path}, e.g. {missing[0]!r}: "
                           "rebuild the cache with every training caption")
        return [self.index[c] for c in captions]

    def lookup(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``captions`` (B str) -> ``(emb (B, max_len, D) float32, mask (B, max_len) bool)``; zeros on padding."""
        rows = self.rows(captions)
        b = len(rows)
        emb = np.zeros((b, self.max_len, self.dim), dtype=np.float32)
        mask = np.zeros((b, self.max_len), dtype=bool)
        for i, r in enumerate(rows):
            s, e = int(self.offsets[r]), int(self.offsets[r + 1])
            emb[i, :e - s] = self.tokens[s:e]
            mask[i, :e - s] = True
        return torch.from_numpy(emb), torch.from_numpy(mask)
