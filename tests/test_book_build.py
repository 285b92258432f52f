"""The parallel book build (imagen_edu.book_build): notebooks executed side by side into the
book's execution cache, matched later by myst-nb exactly as if the book build had run them."""

import json
import subprocess
import sys

import nbformat
import pytest
from jupyter_cache import get_cache

from imagen_edu import REPO_ROOT, book_build


def _book(tmp_path, cells: dict[str, str]):
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n" +
                                       "".join(f"  - file: book/{n}\n" for n in cells))
    (tmp_path / "_config.yml").write_text("execute:\n  execute_notebooks: cache\n  timeout: 60\n")
    (tmp_path / "intro.md").write_text("# intro\n")
    (tmp_path / "book").mkdir()
    for name, src in cells.items():
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src)])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, tmp_path / "book" / f"{name}.ipynb")
    return tmp_path


def test_toc_notebooks_are_the_books_executed_pages():
    """Every chapter notebook of _toc.yml, in order, and nothing that is not a notebook."""
    found = [p.stem for p in book_build.toc_notebooks()]
    assert found[:3] == ["01_attention", "shapes_benchmark", "02_language_model"]
    assert "appendix_solutions" in found and "intro" not in found and len(found) == len(set(found))


def test_kernels_share_the_cores():
    assert [book_build.kernel_threads(j, cores=2) for j in (1, 2, 3)] == [2, 1, 1]
    assert book_build.kernel_threads(2, cores=16) == 8


def test_executed_notebooks_are_cached_per_profile_and_failures_are_left_to_the_build(tmp_path, monkeypatch):
    """Two notebooks run side by side land in the cache with their outputs and their profile; a
    failing one is not cached (the book build reruns it and reports it); a record made under
    another profile is stale and removed. Each kernel runs with its share of the cores."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    root = _book(tmp_path, {"a": "import os\nprint('cwd', os.path.basename(os.getcwd()))",
                            "b": "import os\nprint(os.environ.get('OMP_NUM_THREADS'))",
                            "bad": "raise RuntimeError('boom')"})
    cache = tmp_path / "_build" / ".jupyter_cache"
    nbs = book_build.toc_notebooks(root)
    assert [p.stem for p in nbs] == ["a", "b", "bad"]
    failures = book_build.execute_all(nbs, 2, "ci", cache, root)
    assert failures == ["book/bad.ipynb"]
    assert book_build.stale(nbs, "ci", cache) == [nbs[2]]
    rec = get_cache(str(cache)).match_cache_notebook(nbformat.read(nbs[0], as_version=4))
    out = get_cache(str(cache)).get_cache_bundle(rec.pk).nb.cells[0].outputs[0]["text"]
    assert out.strip() == "cwd book"  # the notebook's folder is the working directory, as in the book build
    assert rec.data["imagen_edu_profile"] == "ci"
    rec = get_cache(str(cache)).match_cache_notebook(nbformat.read(nbs[1], as_version=4))
    out = get_cache(str(cache)).get_cache_bundle(rec.pk).nb.cells[0].outputs[0]["text"]
    assert out.strip() == str(book_build.kernel_threads(2))
    assert book_build.stale(nbs, "cpu", cache) == nbs  # made under ci: executed again under cpu


def test_a_kernel_that_dies_is_a_failed_notebook_not_a_crash(tmp_path):
    """nbclient raises DeadKernelError (not a cell error) when the kernel process dies: that
    notebook is reported as failed and the others still execute and are cached."""
    root = _book(tmp_path, {"dies": "import os\nos._exit(1)", "ok": "print('fine')"})
    cache = tmp_path / "_build" / ".jupyter_cache"
    nbs = book_build.toc_notebooks(root)
    assert book_build.execute_all(nbs, 1, "ci", cache, root) == ["book/dies.ipynb"]
    assert book_build.stale(nbs, "ci", cache) == [nbs[0]]


def test_bad_jobs_is_one_line_and_exit_2():
    """A wrong --jobs stops before any work with one line on stderr and exit status 2."""
    for bad in ("0", "two"):
        run = subprocess.run([sys.executable, "-m", "imagen_edu.book_build", "--jobs", bad],
                             capture_output=True, text=True, cwd=REPO_ROOT)
        assert run.returncode == 2, run.stderr
        assert len(run.stderr.strip().splitlines()) == 1 and "--jobs" in run.stderr


def test_execute_only_reports_failures_and_takes_no_book_options(tmp_path):
    """--execute-only builds nothing and refuses jupyter-book options; --cache only with it."""
    for args, word in ((["--execute-only", "-W"], "--execute-only"), (["--cache", str(tmp_path)], "--cache")):
        run = subprocess.run([sys.executable, "-m", "imagen_edu.book_build", *args],
                             capture_output=True, text=True, cwd=REPO_ROOT)
        assert run.returncode == 2 and word in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
