"""Every random generator of a training run, as data: seed, capture, restore, serialise, gather (chapter 6).

An exact resume (:class:`imagen_edu.train.Trainer`) must continue every stream of random numbers
where it stopped: torch's global generator (dropout, the diffusion loss's ``t`` and noise), the
CUDA one, the batch generator handed to ``batch_fn``, Python's ``random`` and NumPy's global
generator. :func:`seed_globals` seeds the global ones; :func:`capture` copies them all after every
step (cheap) and :func:`restore` puts them back; the rest turns a state into what a safetensors
checkpoint can hold (tensors for :data:`TENSOR_PARTS`, JSON for :data:`JSON_PARTS`) or what
``all_gather`` can send (bytes, never a pickle), so that rank 0 can save every rank's generators.
"""

from __future__ import annotations

import base64
import json
import random

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["seed_globals", "capture", "restore", "jsonable", "to_bytes", "from_bytes", "gather_bytes", "TENSOR_PARTS", "JSON_PARTS"]


def seed_globals(seed: int) -> None:
    """Seed the global generators of torch (CPU and every CUDA device), Python's ``random`` and NumPy."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def capture(generator: torch.Generator, device: torch.device) -> dict:
    """Copies of every generator's state (cheap: taken after every step)."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "generator": generator.get_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }


def jsonable(state: dict) -> dict:
    """The same state with Python's and NumPy's parts as JSON lists (for the checkpoint's metadata)."""
    v, internal, gauss = state["python"]
    name, keys, pos, has_gauss, cached = state["numpy"]
    return {**state, "python": [v, list(internal), gauss],
            "numpy": [name, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(cached)]}


def restore(state: dict, generator: torch.Generator, device: torch.device) -> None:
    """Set every generator from ``state`` (as :func:`capture` or :func:`from_bytes` gives it);
    the CUDA part only on a CUDA device."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    generator.set_state(state["generator"])
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))


#: the parts of a state stored as uint8 tensors (``None`` when absent, e.g. CUDA on the CPU)
TENSOR_PARTS = ("torch", "cuda", "generator")
#: the parts stored as JSON lists (Python's Mersenne Twister state, NumPy's)
JSON_PARTS = ("python", "numpy")


def to_bytes(state: dict) -> bytes:
    """A state as one JSON document in bytes (tensors base64-encoded), to send between ranks."""
    state = jsonable(state)
    doc = {k: (None if state[k] is None else base64.b64encode(state[k].numpy().tobytes()).decode())
           for k in TENSOR_PARTS}
    doc.update({k: state[k] for k in JSON_PARTS})
    return json.dumps(doc).encode()


def from_bytes(blob: bytes) -> dict:
    """The inverse of :func:`to_bytes` (tensor parts as uint8 tensors, JSON parts as lists)."""
    doc = json.loads(blob.decode())
    out = {k: (None if doc[k] is None else torch.frombuffer(bytearray(base64.b64decode(doc[k])), dtype=torch.uint8))
           for k in TENSOR_PARTS}
    out.update({k: doc[k] for k in JSON_PARTS})
    return out


def gather_bytes(blob: bytes, device: torch.device) -> list[bytes]:
    """All ranks' ``blob`` (non-empty bytes) on every rank, tensors only: no pickled objects cross
    the wire. Carries the generators to rank 0, and :func:`imagen_edu.train.agree`'s error lines."""
    comm = device if dist.get_backend() == "nccl" else torch.device("cpu")
    ws = dist.get_world_size()
    data = torch.frombuffer(bytearray(blob), dtype=torch.uint8).to(comm)
    n = torch.tensor([data.numel()], dtype=torch.int64, device=comm)
    sizes = [torch.zeros_like(n) for _ in range(ws)]
    dist.all_gather(sizes, n)
    longest = max(int(s) for s in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8, device=comm)
    padded[: data.numel()] = data
    out = [torch.zeros_like(padded) for _ in range(ws)]
    dist.all_gather(out, padded)
    return [o[: int(s)].cpu().numpy().tobytes() for o, s in zip(out, sizes)]
