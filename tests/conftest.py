"""Shared fixtures. The ci profile and the no-network guard live in the plugin
``imagen_edu.testing``, loaded for every run by ``-p imagen_edu.testing`` (pyproject.toml)."""

import pytest


@pytest.fixture
def seeded():
    """Seed torch's global generator for a test, returning the seed."""
    import torch

    torch.manual_seed(0)
    return 0


@pytest.fixture
def one_thread():
    """Run a test with torch on one CPU thread (see imagen_edu.profiles.torch_threads)."""
    from imagen_edu.profiles import torch_threads

    with torch_threads(1):
        yield
