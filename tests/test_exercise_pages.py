"""The pages' exercise cells answer: each gives a stub (``raise NotImplementedError``) and calls its
check, so an unanswered exercise prints NOT ATTEMPTED YET, and the solutions appendix shows and
checks every reference solution of these chapters."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import re
from pathlib import Path

import pytest

from imagen_edu import exercises

BOOK = Path(__file__).resolve().parents[1] / "book"
#: page -> its exercise module
PAGES = {"02_language_model": "ch02", "05_guidance": "ch05", "05_thresholding": "ch05",
         "05_imagen_cascade": "ch05", "06_scaling": "ch06"}


def _code_cells_after_exercises(page):
    cells = json.loads((BOOK / f"{page}.ipynb").read_text())["cells"]
    start = next(i for i, c in enumerate(cells) if c["cell_type"] == "markdown"
                 and re.search(r"^## Exercises", "".join(c["source"]), re.M))
    return ["".join(c["source"]) for c in cells[start:] if c["cell_type"] == "code"]


def _stub_cells(page):
    return [s for s in _code_cells_after_exercises(page) if re.search(r"^def my_\w+", s, re.M)]


@pytest.mark.parametrize("page", sorted(PAGES))
def test_each_exercise_stub_calls_its_check_and_says_not_attempted(page):
    """Issue detail "exercises that answer": the stub cell runs its check (not commented out); run as
    the reader first meets it, it prints NOT ATTEMPTED YET, never FAIL or an exception."""
    mod_name = PAGES[page]
    mod = importlib.import_module(f"imagen_edu.exercises.{mod_name}")
    stubs = _stub_cells(page)
    assert stubs, f"{page} has no exercise stubs"
    for src in stubs:
        fn = re.search(r"^def (my_\w+)", src, re.M).group(1)
        assert "raise NotImplementedError" in src, f"{page}: {fn}'s stub must raise NotImplementedError"
        call = re.search(rf"^{mod_name}\.(check_\w+)\({fn}\)", src, re.M)
        assert call, f"{page}: the cell of {fn} does not call its check (commented out?)"
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(src, f"{page}:{fn}", "exec"), {mod_name: mod})
        printed = out.getvalue()
        assert printed.startswith("NOT ATTEMPTED YET") and "FAIL" not in printed, (page, fn, printed)


@pytest.mark.parametrize("mod_name", ["ch02", "ch05", "ch06"])
def test_the_appendix_shows_and_checks_every_solution(mod_name):
    """The solutions appendix renders each reference solution by name and its final cell runs the
    module through exercises.check_solutions (so the build fails if a solution stops passing)."""
    text = "".join("".join(c["source"]) for c in
                   json.loads((BOOK / "appendix_solutions.ipynb").read_text())["cells"])
    mod = importlib.import_module(f"imagen_edu.exercises.{mod_name}")
    for name, _ in exercises.solution_functions(mod):
        assert f"viz.show_source({mod_name}.{name})" in text, f"the appendix does not show {mod_name}.{name}"
    final = re.search(r"for mod in \(([^)]*)\):\n\s+print\(.*viz\.check_solutions\(mod\)", text)
    assert final and mod_name in final.group(1).replace(" ", "").split(",")
