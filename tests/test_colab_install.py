"""The Colab install cell, run as Colab runs it, offline.

Every chapter starts with the same cell: on Colab (``google.colab`` imported) it installs
``imagen_edu`` from ``$IMAGEN_EDU_SOURCE`` (default: the book's GitHub repository; a local folder
is installed as it is) with ``pip install -e``, and elsewhere does nothing. Here that cell runs in
a fresh virtual environment that looks like a Colab runtime:

* Colab's preinstalled packages (torch above all, and pip and setuptools) are this environment's:
  the new environment is made without pip, and a ``.pth`` file in its site-packages puts this
  one's site-packages on its path, after its own, as Colab's ``dist-packages`` sit on its path;
* a stand-in ``google/colab/__init__.py`` is importable and imported before the cell, as on Colab;
* ``IMAGEN_EDU_SOURCE`` is a local ``git clone`` of this repository's HEAD.

pip runs with ``PIP_NO_INDEX=1``: nothing can be downloaded, so the install succeeds only if every
requirement is already satisfied (lower bounds only, so Colab's torch stays); and with
``PIP_NO_BUILD_ISOLATION=0`` (pip's spelling of ``--no-build-isolation``), because an isolated
build would have to download setuptools into its own environment: the build uses the
setuptools already present instead. The cell itself is what Colab runs, unchanged.
"""

import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "book").glob("*.ipynb"))
# what the fresh environment's python prints about torch and imagen_edu (None: not importable), as JSON
PROBE = """
import importlib.util, json, torch
spec = importlib.util.find_spec("imagen_edu")
print("PROBE", json.dumps({"torch": torch.__version__, "torch_file": torch.__file__,
                           "imagen_edu_file": spec and spec.origin}))
"""


def code_cells(path: Path) -> list[str]:
    """The sources of a notebook's code cells, in order."""
    nb = json.loads(path.read_text())
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def install_cell() -> str:
    """The first code cell of the first chapter (every chapter's is the same, tested below)."""
    return code_cells(CHAPTERS[0])[0]


def test_every_chapter_starts_with_the_same_install_cell():
    """One install cell for the whole book: identical in every notebook, Colab-only, its source
    overridable by IMAGEN_EDU_SOURCE."""
    assert CHAPTERS
    firsts = {p.name: code_cells(p)[0] for p in CHAPTERS}
    assert len(set(firsts.values())) == 1, sorted(firsts)
    cell = install_cell()
    assert cell.startswith("# Colab only:") and '"google.colab" in sys.modules' in cell
    assert 'os.environ.get("IMAGEN_EDU_SOURCE"' in cell and "pip" in cell


def test_install_cell_does_nothing_outside_colab(monkeypatch):
    """Without google.colab the cell runs no command and changes no path."""
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    path = list(sys.path)
    exec(compile(install_cell(), "install_cell", "exec"), {})
    assert calls == [] and sys.path == path


def _run(args, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(args, capture_output=True, text=True, timeout=600, **kw)
    assert res.returncode == 0, (f"{' '.join(map(str, args))[:300]}\nstdout:\n{res.stdout[-3000:]}\n"
                                 f"stderr:\n{res.stderr[-3000:]}")
    return res


def _probe(python: Path, env: dict, cwd: Path, script: str = "") -> tuple[dict, str]:
    """Run ``script`` then :data:`PROBE` with ``python``: (the probe's facts, everything printed before them)."""
    out = _run([str(python), "-c", script + "\n" + PROBE], env=env, cwd=cwd).stdout
    printed, facts = out.rsplit("PROBE ", 1)
    return json.loads(facts), printed


@pytest.fixture(scope="module")
def colab(tmp_path_factory):
    """A fresh venv that looks like Colab (module docstring), a local clone of HEAD, and the
    environment to run its python in: ``(python, env, clone, work_dir)``."""
    tmp = tmp_path_factory.mktemp("colab")
    clone, venv, work = tmp / "clone", tmp / "venv", tmp / "work"
    _run(["git", "clone", "-q", "--depth", "1", f"file://{ROOT}", str(clone)])
    # --without-pip: pip and setuptools are Colab's too (ensurepip's older setuptools would shadow
    # the one torch requires, and the resolver would then refuse torch)
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # Colab's preinstalled packages: this environment's site-packages, after the new one's own
    (site / "colab_preinstalled.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    stand_in = tmp / "stand_in"
    (stand_in / "google" / "colab").mkdir(parents=True)  # "google" stays a namespace package
    (stand_in / "google" / "colab" / "__init__.py").write_text('"""A stand-in for Colab\'s google.colab."""\n')
    work.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV", "IMAGEN_EDU_SOURCE"))}
    env.update(PYTHONPATH=str(stand_in), PYTHONNOUSERSITE="1", PATH=f"{venv / 'bin'}:{env.get('PATH', '')}",
               PIP_NO_INDEX="1", PIP_NO_BUILD_ISOLATION="0", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return python, env, clone, work


def test_colab_cell_installs_from_a_local_clone_and_keeps_colabs_torch(colab):
    """The Colab install, end to end: the first cell (with IMAGEN_EDU_SOURCE = a local clone)
    installs imagen_edu, pip finds every requirement already there (no index), Colab's torch is
    neither replaced nor moved (lower bounds only), and each chapter's second cell (import
    imagen_edu ... doctor()) runs in the same kernel, then in a new one without help."""
    python, env, clone, work = colab
    before, _ = _probe(python, env, work)
    assert before["imagen_edu_file"] is None  # the stand-in Colab starts without the package
    assert Path(before["torch_file"]).is_relative_to(sysconfig.get_paths()["purelib"])
    torch_before = {k: before[k] for k in ("torch", "torch_file")}

    second_cells = sorted({code_cells(p)[1] for p in CHAPTERS})
    kernel = "\n".join(["import google.colab  # Colab imports it before any cell",
                        f"exec(compile({install_cell()!r}, 'cell 1', 'exec'))",
                        *[f"exec(compile({c!r}, 'cell 2', 'exec'))" for c in second_cells]])
    t0 = time.perf_counter()
    same_kernel, printed = _probe(python, {**env, "IMAGEN_EDU_SOURCE": str(clone)}, work, kernel)
    print(f"install cell and second cell: {time.perf_counter() - t0:.1f} s")
    assert Path(same_kernel["imagen_edu_file"]).is_relative_to(clone)
    assert {k: same_kernel[k] for k in torch_before} == torch_before
    assert "Colab        yes" in printed and "profile      " in printed  # imagen_edu.doctor() ran, saw Colab

    # a new kernel (Colab's "restart runtime") finds the editable install by itself
    new_kernel, _ = _probe(python, env, work)
    assert Path(new_kernel["imagen_edu_file"]).is_relative_to(clone)
    assert {k: new_kernel[k] for k in torch_before} == torch_before
    shown = _run([str(python), "-m", "pip", "show", "imagen_edu"], env=env, cwd=work).stdout
    assert "Editable project location: " + str(clone) in shown
