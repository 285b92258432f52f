"""Tests of imagen_edu.rng_state: every random generator of a run captured, restored and serialised."""

import json
import random

import numpy as np
import torch

from imagen_edu import rng_state

CPU = torch.device("cpu")


def draws(gen: torch.Generator) -> tuple:
    """One number from each stream an exact resume must continue."""
    return (torch.rand(1).item(), torch.rand(1, generator=gen).item(), random.random(), float(np.random.rand()))


def test_capture_then_restore_replays_every_stream():
    """Exact resume: after ``restore`` torch's global generator, the batch generator, Python's
    ``random`` and NumPy draw the same numbers again, also through the bytes sent between ranks."""
    gen = torch.Generator().manual_seed(1)
    rng_state.seed_globals(3)
    state = rng_state.capture(gen, CPU)
    first = draws(gen)
    assert draws(gen) != first
    rng_state.restore(state, gen, CPU)
    assert draws(gen) == first
    again = rng_state.from_bytes(rng_state.to_bytes(state))
    assert again["cuda"] is None and set(again) == set(rng_state.TENSOR_PARTS) | set(rng_state.JSON_PARTS)
    rng_state.restore(again, gen, CPU)
    assert draws(gen) == first
    json.dumps({k: rng_state.jsonable(state)[k] for k in rng_state.JSON_PARTS})  # metadata-ready


def test_seed_globals_seeds_torch_random_and_numpy():
    rng_state.seed_globals(5)
    a = (torch.rand(1).item(), random.random(), float(np.random.rand()))
    rng_state.seed_globals(5)
    assert (torch.rand(1).item(), random.random(), float(np.random.rand())) == a
