"""Cell timing: run a chapter notebook top to bottom and record how long each cell took.

The instructor's guide lists, per chapter, every cell that takes more than 30 s under a profile
(run those before class) from ``data/benchmarks/cell_times.json``, which :func:`record` writes::

    {"cpu": {"01_attention": {"total_s": 41.2, "measured": "2026-12-01T15:30:00Z",
                              "threads": "unset", "cells": [[3, 0.8, "import math"], ...]}}}

Each cell entry is ``[cell index, wall seconds, first line]`` for code cells. Times come from the
kernel's own execution timestamps (nbclient's ``record_timing``), so they exclude the start-up.

This file is the book's one table of measured times: each chapter's *Time* section shows its
rows with :func:`show` (:func:`page_table`), and the README's time table is :func:`readme_table`,
written between two markers by ``python -m imagen_edu.classroom.guide``.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

from IPython.display import Markdown, display
from nbclient import NotebookClient

from .. import kernel_polling, profiles
from ..outputs import atomic_write_text
from . import chapters

TIMES = chapters.ROOT / "data" / "benchmarks" / "cell_times.json"
SLOW_S = 30.0  # a cell slower than this is run before class
PROFILES = ("ci", "cpu", "gpu")  # the order of the rows in every time table


def _parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def cell_times(nb) -> list[list]:
    """``[[index, seconds, first line], ...]`` for the executed code cells of ``nb``."""
    out = []
    for i, c in enumerate(nb.cells):
        ex = c.get("metadata", {}).get("execution", {})
        start, end = ex.get("iopub.execute_input"), ex.get("shell.execute_reply")
        if c.cell_type == "code" and start and end:
            out.append([i, round((_parse(end) - _parse(start)).total_seconds(), 2),
                        chapters.first_line(c)])
    return out


def execute(name: str, profile: str, timeout: int = 3600) -> tuple[object, float]:
    """Execute a chapter under ``profile`` in ``book/`` (as the book does); returns (nb, seconds)."""
    nb = chapters.read(name)
    env = os.environ.get("IMAGEN_EDU_PROFILE")
    os.environ["IMAGEN_EDU_PROFILE"] = profile  # the kernel inherits this process's environment
    kernel_polling.install()  # a missed wake-up on a reply must not stall the run (imagen_edu.kernel_polling)
    try:
        t0 = time.perf_counter()
        NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=True,
                       resources={"metadata": {"path": str(chapters.BOOK)}}).execute()
        return nb, time.perf_counter() - t0
    finally:
        if env is None:
            os.environ.pop("IMAGEN_EDU_PROFILE", None)
        else:
            os.environ["IMAGEN_EDU_PROFILE"] = env


def load(path: Path = TIMES) -> dict:
    """The recorded times (``{}`` when none were measured yet)."""
    return json.loads(path.read_text()) if path.is_file() else {}


def slow_cells(entry: dict, over: float = SLOW_S) -> list[list]:
    """The cells of one chapter's entry that took longer than ``over`` seconds."""
    return [c for c in entry["cells"] if c[1] > over]


def record(names: list[str], profile: str = "cpu", path: Path = TIMES) -> dict:
    """Time every chapter in ``names`` under ``profile``, merge into ``path``; print the slow cells."""
    if profiles.smoke_enabled():
        raise ValueError("IMAGEN_EDU_SMOKE is set: a smoke run's times are not the profile's times; "
                         "unset it to measure")
    data = load(path)
    for name in names:
        nb, total = execute(name, profile)
        entry = {"total_s": round(total, 1),
                 "measured": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                 "threads": os.environ.get("OMP_NUM_THREADS", "unset"),
                 "cells": cell_times(nb)}
        data.setdefault(profile, {})[name] = entry
        # after each chapter, atomically (atomic_write creates the folder): an interrupted run keeps every time measured before it
        atomic_write_text(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        slow = slow_cells(entry)
        print(f"{name} under {profile}: {total:.1f} s, {len(slow)} cells over {SLOW_S:.0f} s")
        for i, s, line in slow:
            print(f"  cell {i:3d}  {s:7.1f} s  {line}")
    return data


def duration(seconds: float) -> str:
    """``42 s``, ``4 min 36 s``: a wall time as a reader says it."""
    s = int(round(seconds))
    return f"{s} s" if s < 60 else f"{s // 60} min {s % 60:02d} s"


def _row_cells(entry: dict, n: int = 2) -> str:
    slow = sorted(entry["cells"], key=lambda c: -c[1])[:n]
    return "; ".join(f"cell {i}, {duration(t)}: `{line.replace('|', '/')[:48]}`" for i, t, line in slow
                     if t >= 1.0) or "every cell under a second"


def page_table(name: str, data: dict | None = None) -> str:
    """The Markdown table of one chapter's measured times under each profile (its *Time* section)."""
    data = load() if data is None else data
    rows = ["| profile | whole page | slowest cells (index from 0) | measured |", "|---|---|---|---|"]
    for profile in PROFILES:
        entry = data.get(profile, {}).get(name)
        if entry is None:
            rows.append(f"| `{profile}` | not measured yet | | |")
        else:
            rows.append(f"| `{profile}` | {duration(entry['total_s'])} | {_row_cells(entry)} | "
                        f"{entry['measured'][:10]} |")
    return "\n".join(rows)


def show(name: str, data: dict | None = None):
    """Display :func:`page_table` in a notebook (a chapter's *Time* section calls this)."""
    display(Markdown(page_table(name, data)))


def readme_table(names: list[str], titles: dict[str, str], data: dict | None = None) -> str:
    """The README's table: one row per chapter, one column per profile, and the sum of all pages."""
    data = load() if data is None else data
    rows = ["| chapter | " + " | ".join(f"`{p}`" for p in PROFILES) + " |",
            "|---|" + "---|" * len(PROFILES)]
    entries = {p: [data.get(p, {}).get(name) for name in names] for p in PROFILES}
    for k, name in enumerate(names):
        cells = ["not measured yet" if entries[p][k] is None else duration(entries[p][k]["total_s"]) for p in PROFILES]
        rows.append(f"| {titles.get(name, name)} (`{name}`) | " + " | ".join(cells) + " |")
    rows.append("| every page, one after another | " + " | ".join(  # a sum only when every page was measured
        "not measured yet" if None in entries[p] else f"**{duration(sum(e['total_s'] for e in entries[p]))}**"
        for p in PROFILES) + " |")
    return "\n".join(rows)
