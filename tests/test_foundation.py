"""The foundation: profiles, doctor, the book's notebooks and the no-network guard."""

import dataclasses
import io
import json
import socket
from pathlib import Path

import pytest

import imagen_edu
from imagen_edu import profiles

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))


def test_profile_names_and_types():
    assert profiles.names() == ["ci", "cpu", "gpu"]
    for name in profiles.names():
        p = profiles.get(name)
        assert p.name == name
        assert dataclasses.is_dataclass(p)
        with pytest.raises(dataclasses.FrozenInstanceError):
            p.name = "other"  # frozen


def test_profiles_grow_with_compute():
    ci, cpu, gpu = (profiles.get(n) for n in profiles.names())
    assert ci.lm.max_steps < cpu.lm.max_steps <= gpu.lm.max_steps
    assert ci.diffusion.toy_steps < cpu.diffusion.toy_steps <= gpu.diffusion.toy_steps


def test_unknown_profile_lists_valid_names(monkeypatch):
    monkeypatch.setenv(profiles.ENV_VAR, "laptop")
    with pytest.raises(ValueError) as err:
        profiles.current()
    for name in ("ci", "cpu", "gpu"):
        assert name in str(err.value)
    with pytest.raises(TypeError):
        profiles.get(3)


def test_env_var_picks_profile_and_default(monkeypatch):
    import torch

    monkeypatch.setenv(profiles.ENV_VAR, "CPU")
    assert profiles.current().name == "cpu"
    monkeypatch.delenv(profiles.ENV_VAR)
    assert profiles.current().name == ("gpu" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv(profiles.ENV_VAR, "  ")
    assert profiles.current().name == profiles.default_name()


def test_doctor_prints_the_facts(monkeypatch):
    monkeypatch.setenv(profiles.ENV_VAR, "ci")
    buf = io.StringIO()
    info = imagen_edu.doctor(file=buf)
    text = buf.getvalue()
    for key in ("Python", "torch", "CUDA", "GPU", "CPU cores", "profile      ci"):
        assert key in text
    assert info["profile"] == "ci"
    assert any("ci" in w for w in info["warnings"])


def test_doctor_warns_on_gpu_profile_without_cuda(monkeypatch):
    import torch

    monkeypatch.setenv(profiles.ENV_VAR, "gpu")
    info = imagen_edu.doctor(file=io.StringIO())
    if not torch.cuda.is_available():
        assert any("no CUDA" in w for w in info["warnings"])


def test_doctor_reports_bad_profile_without_raising(monkeypatch):
    monkeypatch.setenv(profiles.ENV_VAR, "nope")
    info = imagen_edu.doctor(file=io.StringIO())
    assert info["profile"] is None and "unknown compute profile" in info["warnings"][0]


def test_network_is_blocked_in_tests():
    with pytest.raises(RuntimeError, match="must not use the network"):
        socket.create_connection(("93.184.216.34", 80), timeout=1)


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_committed_clean_and_start_with_setup(nb):
    """Notebooks carry no outputs, start with the Colab install cell and then doctor()."""
    data = json.loads(nb.read_text())
    code = [c for c in data["cells"] if c["cell_type"] == "code"]
    assert code, "a chapter notebook has code"
    for c in code:
        assert not c.get("outputs"), f"{nb.name}: commit notebooks without outputs"
        assert c.get("execution_count") is None
    first, second = ("".join(c["source"]) for c in code[:2])
    assert "google.colab" in first and "pip" in first, "first code cell: the Colab install cell"
    assert "doctor()" in second, "second code cell calls imagen_edu.doctor()"
    assert data["metadata"]["kernelspec"]["name"] == "python3"


def test_toc_lists_every_notebook():
    toc = (ROOT / "_toc.yml").read_text()
    for nb in NOTEBOOKS:
        assert f"book/{nb.stem}" in toc, f"{nb.name} is not in _toc.yml"


def test_torch_threads_sets_and_restores():
    import torch

    before = torch.get_num_threads()
    with profiles.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with profiles.torch_threads(None):
        assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError):
        with profiles.torch_threads(1):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before
