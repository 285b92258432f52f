"""Shared fixtures. The ci profile and the no-network guard live in the repository's root
``conftest.py`` (so they also cover the notebooks in ``book/``); the tests' helpers (browser driver,
DDP script) in ``tests/support/``."""

import pytest
import torch

from imagen_edu import cli
from imagen_edu.profiles import torch_threads


@pytest.fixture
def seeded():
    """Seed torch's global generator for a test, returning the seed."""
    torch.manual_seed(0)
    return 0


@pytest.fixture
def one_thread():
    """Run a test with torch on one CPU thread (see imagen_edu.profiles.torch_threads)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def cascade_dir(tmp_path_factory):
    """A ci-profile cascade (base and sr1) trained once by ``python -m imagen_edu train``; tests that
    change it work on a copy."""
    d = tmp_path_factory.mktemp("ci_cascade")
    for stage in ("base", "sr1"):
        assert cli.main(["train", "--stage", stage, "--profile", "ci", "--out", str(d)]) == 0
    return d
