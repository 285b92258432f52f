"""The student edition: every chapter without its solutions, its checks kept as the grader.

Built with nbgrader (the standard tool for releasing and autograding Jupyter assignments), in an
nbgrader *course folder* ``OUT``::

    OUT/nbgrader_config.py           the settings below, so nbgrader's own CLI works there too
    OUT/source/CHAPTER/CHAPTER.ipynb the instructor's version (one assignment per chapter)
    OUT/release/CHAPTER/CHAPTER.ipynb the student edition: hand these out
    OUT/gradebook.db                 nbgrader's gradebook (the grader cells and their points)

The rule, per chapter notebook (see :mod:`.chapters` for how the cells are found):

1. every solution cell (``# Solution:``, showing ``chNN.solution_X``) is dropped;
2. each exercise cell is split in two:

   * the **answer cell** (nbgrader ``solution: true``): the ``def my_X(...)`` with its stub, whose
     stub line is an nbgrader solution region. The source version calls the reference
     ``chNN.solution_X`` there (so ``nbgrader validate`` passes on it); the student edition gets
     ``raise NotImplementedError`` instead, which the check reports as NOT ATTEMPTED YET;
   * the **grader cell** (``grade: true``, one point, locked): the check call the page makes
     (uncommented), which prints PASS / FAIL / NOT ATTEMPTED YET for the student, plus a hidden
     ``assert chNN.check_X(my_X, verbose=False)`` that nbgrader strips from the student edition
     and puts back when it autogrades, so a failed check costs the point.

The checks run are the ones in :mod:`imagen_edu.exercises`, the same the book and its solutions
appendix run.
"""

from __future__ import annotations

import copy
from pathlib import Path

import nbformat
from nbgrader.apps import NbGraderAPI
from traitlets.config import Config

from . import chapters

STUB = "raise NotImplementedError"
SCHEMA = 3
CONFIG = f'''# nbgrader settings of the classroom kit (python -m imagen_edu.classroom student OUT).
c = get_config()  # noqa: F821
c.CourseDirectory.root = {{root!r}}
c.ClearSolutions.code_stub = {{{{"python": {STUB!r}}}}}
c.ClearSolutions.enforce_metadata = True
c.Execute.timeout = {{timeout}}  # seconds per cell; chapters train small models
c.Autograde.create_student = True
'''


def _meta(grade_id: str, *, solution: bool, grade: bool, points: int = 0) -> dict:
    """nbgrader cell metadata (schema 3) for an answer or a grader cell."""
    m = {"grade": grade, "grade_id": grade_id, "locked": grade, "schema_version": SCHEMA,
         "solution": solution, "task": False}
    if grade:
        m["points"] = points
    return m


def answer_cell(cell, ex: chapters.Exercise):
    """The student's answer cell: the exercise cell without its check line, stub as a region."""
    src = chapters.CHECK_LINE.sub("", chapters.source(cell)).rstrip() + "\n"
    m = chapters.STUB_LINE.search(src)
    if m is None:
        raise ValueError(f"{ex.fn}: no stub line (raise NotImplementedError or ...) to replace")
    ind = m["indent"]
    region = (f"{ind}### BEGIN SOLUTION\n"
              f"{ind}return {ex.module}.{ex.solution}({', '.join(ex.args)})\n"
              f"{ind}### END SOLUTION")
    new = nbformat.v4.new_code_cell(src[:m.start()] + region + src[m.end():].rstrip())
    new.metadata = {**copy.deepcopy(cell.get("metadata", {})),
                    "nbgrader": _meta(f"answer_{ex.name}", solution=True, grade=False)}
    return new


def grader_cell(ex: chapters.Exercise, points: int = 1):
    """The grader cell: the visible check call, and the hidden assert the autograder adds."""
    new = nbformat.v4.new_code_cell(
        f"{ex.module}.{ex.check}({ex.fn});\n"
        "### BEGIN HIDDEN TESTS\n"
        f"assert {ex.module}.{ex.check}({ex.fn}, verbose=False), "
        f"\"{ex.check} did not pass\"\n"
        "### END HIDDEN TESTS")
    new.metadata = {"nbgrader": _meta(ex.check, solution=False, grade=True, points=points)}
    return new


def source_version(nb):
    """The instructor's nbgrader source notebook of a chapter (a new notebook; ``nb`` is kept)."""
    out = copy.deepcopy(nb)
    cells = []
    for i, cell in enumerate(nb.cells):
        if chapters.is_solution_cell(cell):
            continue
        ex = chapters.exercise_in(cell, i)
        if ex is None:
            c = copy.deepcopy(cell)
            if c.cell_type == "code":
                c.outputs, c.execution_count = [], None
            cells.append(c)
        else:
            cells += [answer_cell(cell, ex), grader_cell(ex)]
    out.cells = cells
    return out


def config(root: Path, timeout: int = 1800) -> Config:
    """The nbgrader settings for the course folder ``root`` (also written to nbgrader_config.py)."""
    c = Config()
    c.CourseDirectory.root = str(root)
    c.ClearSolutions.code_stub = {"python": STUB}
    c.ClearSolutions.enforce_metadata = True
    c.Execute.timeout = timeout
    c.Autograde.create_student = True
    return c


def api(root: Path, timeout: int = 1800) -> NbGraderAPI:
    """nbgrader's API on the course folder ``root``."""
    return NbGraderAPI(config=config(Path(root).resolve(), timeout))


def build(out: Path, names: list[str] | None = None, timeout: int = 1800) -> list[Path]:
    """Write the course folder ``out`` and release every chapter; returns the student notebooks."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "nbgrader_config.py").write_text(CONFIG.format(root=str(out), timeout=timeout))
    nbg = api(out, timeout)
    released = []
    for name in names or chapters.CHAPTERS:
        stem = chapters.chapter_path(name).stem
        src = out / "source" / stem / f"{stem}.ipynb"
        src.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(source_version(chapters.read(name)), src)
        res = nbg.generate_assignment(stem, force=True, create=True)
        if not res["success"]:
            raise RuntimeError(f"nbgrader could not release {stem}:\n{res['error']}\n{res['log']}")
        released.append(out / "release" / stem / f"{stem}.ipynb")
    return released
