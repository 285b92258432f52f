"""Build the book with its notebooks executed side by side: ``python -m imagen_edu.book_build [jupyter-book options]``.

``jupyter-book build .`` executes the notebooks one after another. Most of the book's cells run
its toy models on one CPU thread (see :func:`imagen_edu.profiles.torch_threads`), so on a machine
with two cores half of it waits. This command first executes every notebook of the table of
contents, ``--jobs`` at a time (the longest first, by the measured times of
``data/benchmarks/cell_times.json``), each in its own kernel with the book's folder as working
directory exactly as the book build does, and stores the results in the book's execution cache
(``_build/.jupyter_cache``, the ``execute_notebooks: cache`` of ``_config.yml``). Then it runs
``jupyter-book build .`` with the options given, which finds every notebook in the cache and only
renders. A notebook whose execution fails is left out of the cache, so the book build runs it
again and reports the error as it always does (a failure under ``-W`` fails the build).

``--execute-only`` executes and stops (exit status 1 if a notebook failed), into ``--cache DIR``
if given: ``IMAGEN_EDU_PROFILE=gpu IMAGEN_EDU_SMOKE=1 python -m imagen_edu.book_build --execute-only
--cache /tmp/smoke`` runs every page with the ``gpu`` profile's model sizes on a CPU.

The cache matches a notebook by its code, not by the profile it ran under; so each record
written here also stores the profile (``IMAGEN_EDU_PROFILE``), and a record made under another
profile, or by a plain ``jupyter-book build`` that did not say, is executed again.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nbformat
import yaml
from jupyter_cache import get_cache
from jupyter_cache.base import CacheBundleIn
from jupyter_cache.executors.utils import single_nb_execution

from . import REPO_ROOT, kernel_polling, profiles
from .arguments import ArgumentParser, check_int
from .classroom import timing
from .errors import run_cli

CACHE = REPO_ROOT / "_build" / ".jupyter_cache"


def toc_notebooks(root: Path = REPO_ROOT) -> list[Path]:
    """The ``.ipynb`` files that ``_toc.yml`` lists (the ones the book executes), in its order."""
    toc = yaml.safe_load((root / "_toc.yml").read_text(encoding="utf-8"))
    found: list[Path] = []

    def walk(node):
        if isinstance(node, dict):
            for key in ("root", "file"):
                if isinstance(node.get(key), str):
                    p = root / node[key]
                    p = p if p.suffix else p.with_suffix(".ipynb")
                    if p.suffix == ".ipynb" and p.is_file():
                        found.append(p)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(toc)
    return found


def execution_config(root: Path = REPO_ROOT) -> dict:
    """The ``execute`` section of ``_config.yml`` (its timeout and allow_errors are honoured here too)."""
    cfg = yaml.safe_load((root / "_config.yml").read_text(encoding="utf-8"))
    return cfg.get("execute", {}) or {}


def longest_first(notebooks: list[Path], profile: str) -> list[Path]:
    """``notebooks`` ordered by their measured time under ``profile`` (unmeasured ones first)."""
    measured = timing.load().get(profile, {})
    return sorted(notebooks, key=lambda p: -measured.get(p.stem, {}).get("total_s", float("inf")))


def _one_line(err: BaseException) -> str:
    """An execution error as one line: its type and the last line of its message."""
    return f"{type(err).__name__}: {str(err).strip().splitlines()[-1:]}"


def _execute(path: str, cache_path: str, profile: str, timeout: int | None, allow_errors: bool) -> tuple[str, float, str]:
    """Execute one notebook in a fresh kernel (its folder as working directory) and cache it."""
    cache = get_cache(cache_path)
    nb = nbformat.read(path, as_version=4)
    record = cache.add_nb_to_project(path)
    kernel_polling.install()  # a missed wake-up on the kernel's reply costs half a second, not the timeout
    start = time.perf_counter()
    try:
        result = single_nb_execution(nb, cwd=str(Path(path).parent), timeout=timeout, allow_errors=allow_errors,
                                     meta_override=True)
    except Exception as err:  # a dead or unreachable kernel (nbclient's DeadKernelError...): this notebook failed
        return path, time.perf_counter() - start, _one_line(err)
    if result.err is not None:
        return path, result.time, _one_line(result.err)
    cache.cache_notebook_bundle(CacheBundleIn(nb, record.uri, data={"execution_seconds": result.time,
                                                                     "imagen_edu_profile": profile}),
                                check_validity=False, overwrite=True)
    return path, result.time, ""


def stale(notebooks: list[Path], profile: str, cache_path: Path = CACHE) -> list[Path]:
    """The notebooks without a cache record made under ``profile``; other records of theirs are removed."""
    cache = get_cache(str(cache_path))
    todo = []
    for p in notebooks:
        try:
            rec = cache.match_cache_notebook(nbformat.read(p, as_version=4))
        except KeyError:
            todo.append(p)
            continue
        if rec.data.get("imagen_edu_profile") != profile:
            cache.remove_cache(rec.pk)
            todo.append(p)
    return todo


def kernel_threads(jobs: int, cores: int | None = None) -> int:
    """CPU threads for each kernel when ``jobs`` run at once: the cores shared out, at least one.

    Two kernels with a thread per core each on two cores would fight over them (small tensors run
    several times slower when their threads are descheduled), so each kernel gets its share.
    """
    cores = cores if cores is not None else (os.cpu_count() or 1)
    return max(1, cores // max(1, jobs))


def _limit_threads(n: int) -> None:
    """Pool initializer: the kernels started from this worker inherit ``n`` threads (OpenMP/MKL)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


def execute_all(notebooks: list[Path], jobs: int, profile: str, cache_path: Path = CACHE,
                root: Path = REPO_ROOT) -> list[str]:
    """Execute the ``stale`` notebooks ``jobs`` at a time; prints one line each; returns the failures.

    Each kernel gets :func:`kernel_threads` threads, unless ``OMP_NUM_THREADS`` is set already.
    """
    cfg = execution_config(root)
    timeout, allow = cfg.get("timeout"), bool(cfg.get("allow_errors", False))
    todo = longest_first(stale(notebooks, profile, cache_path), profile)
    threads = int(os.environ.get("OMP_NUM_THREADS") or kernel_threads(jobs))
    print(f"book_build: {len(notebooks) - len(todo)} notebooks cached under profile {profile!r}, "
          f"executing {len(todo)}, {jobs} at a time, {threads} thread(s) each", flush=True)
    failures = []
    with ProcessPoolExecutor(max_workers=jobs, initializer=_limit_threads, initargs=(threads,)) as pool:
        futures = [pool.submit(_execute, str(p), str(cache_path), profile, timeout, allow) for p in todo]
        for f in futures:
            path, seconds, err = f.result()
            name = Path(path).relative_to(root)
            print(f"book_build: {name}: {seconds:.0f} s" + (f", FAILED ({err})" if err else ""),
                  flush=True)
            if err:
                failures.append(str(name))
    return failures


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m imagen_edu.book_build", description=__doc__.splitlines()[0],
                        epilog="Any other option is passed to jupyter-book build (e.g. -W -n --keep-going).")
    ap.add_argument("--jobs", type=int, default=None, help="notebooks executed at a time (default: the number of CPU cores, at most 4)")
    ap.add_argument("--execute-only", action="store_true",
                    help="execute the notebooks and stop (exit 1 if any failed); no book is built")
    ap.add_argument("--cache", type=Path, default=CACHE, help=f"the execution cache (default {CACHE.relative_to(REPO_ROOT)})")
    args, rest = ap.parse_known_args(argv)
    jobs = check_int(args.jobs, "--jobs", low=1) if args.jobs is not None else max(1, min(4, os.cpu_count() or 1))
    if args.execute_only and rest:
        raise ValueError(f"--execute-only builds no book, so it takes no jupyter-book options (got {' '.join(rest)})")
    if args.cache != CACHE and not args.execute_only:
        raise ValueError("--cache is for --execute-only: the book build reads its own cache, "
                         f"{CACHE.relative_to(REPO_ROOT)}")
    profile = profiles.current().name + ("+smoke" if profiles.smoke_enabled() else "")  # checks IMAGEN_EDU_PROFILE first
    args.cache.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    failures = execute_all(toc_notebooks(), jobs, profile, args.cache)
    if args.execute_only:
        print(f"book_build: every notebook executed under {profile!r} in {time.perf_counter() - start:.0f} s"
              + (f"; FAILED: {', '.join(failures)}" if failures else ", none failed"), flush=True)
        return 1 if failures else 0
    print(f"book_build: notebooks executed in {time.perf_counter() - start:.0f} s"
          + (" (the book build runs the failed ones again and reports their errors)" if failures else "")
          + f"; now jupyter-book build . {' '.join(rest)}", flush=True)
    done = subprocess.run(["jupyter-book", "build", ".", *rest], cwd=REPO_ROOT)
    print(f"book_build: whole build {time.perf_counter() - start:.0f} s", flush=True)
    return done.returncode


if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m imagen_edu.book_build"))
