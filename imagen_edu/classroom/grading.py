"""Autograding: run nbgrader's autograder on a folder of submissions and print a score table.

Submissions are laid out one folder per student, each holding that student's chapter notebooks
under their released names (nbgrader's ``submitted/STUDENT/CHAPTER/CHAPTER.ipynb`` works too)::

    SUBMISSIONS/alice/01_attention.ipynb
    SUBMISSIONS/bob/01_attention.ipynb
    SUBMISSIONS/bob/05_thresholding.ipynb

:func:`grade` copies them into the course folder that :func:`.student.build` wrote, autogrades
each (nbgrader executes the notebook top to bottom, puts the hidden asserts of the grader cells
back, and gives each grader cell its point when it runs without error), and returns one row per
exercise; :func:`table` formats them.
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbgrader.api import Gradebook
from sqlalchemy.exc import SAWarning

from . import chapters, student


@dataclass
class Score:
    """One graded exercise: who, which chapter, which check, and the points."""

    student: str
    chapter: str
    exercise: str
    score: float
    max_score: float


def submissions(folder: Path) -> list[tuple[str, str, Path]]:
    """``[(student, chapter, notebook), ...]`` found in a submissions folder (see module doc)."""
    found = []
    for sdir in sorted(p for p in Path(folder).iterdir() if p.is_dir()):
        for nb in sorted(sdir.rglob("*.ipynb")):
            if ".ipynb_checkpoints" not in nb.parts:
                found.append((sdir.name, nb.stem, nb))
    return found


def grade(folder: Path, course: Path, timeout: int = 1800) -> list[Score]:
    """Autograde every notebook in ``folder`` against the course folder ``course``."""
    course = Path(course).resolve()
    if not (course / "gradebook.db").is_file():
        raise FileNotFoundError(f"{course} is no course folder: run "
                                f"`python -m imagen_edu.classroom student {course}` first")
    nbg = student.api(course, timeout)
    scores = []
    for who, chapter, nb in submissions(folder):
        if not (course / "source" / chapter).is_dir():
            raise ValueError(f"{nb}: no chapter called {chapter!r} in {course}/source")
        dest = course / "submitted" / who / chapter / f"{chapter}.ipynb"
        dest.parent.mkdir(parents=True, exist_ok=True)
        if nb.resolve() != dest.resolve():
            shutil.copyfile(nb, dest)
        res = nbg.autograde(chapter, who, force=True, create=True)
        if not res["success"]:
            raise RuntimeError(f"nbgrader could not grade {nb}:\n{res['error']}\n{res['log']}")
        with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb, warnings.catch_warnings():
            # nbgrader's own session bookkeeping warns here (SQLAlchemy autoflush); nothing for the instructor
            warnings.simplefilter("ignore", SAWarning)
            sub = gb.find_submission_notebook(chapter, chapter, who)
            scores += [Score(who, chapter, g.name, float(g.score), float(g.max_score))
                       for g in sorted(sub.grades, key=lambda g: g.cell.id)]
    return scores


def table(scores: list[Score]) -> str:
    """A plain-text score table: one line per student and chapter, the exercises, the total."""
    rows = {}
    for s in scores:
        rows.setdefault((s.student, s.chapter), []).append(s)
    lines = [f"{'student':<14} {'chapter':<18} {'score':>7}  exercises (points)"]
    for (who, chapter), ss in rows.items():
        got, out_of = sum(s.score for s in ss), sum(s.max_score for s in ss)
        detail = "  ".join(f"{s.exercise[len('check_'):]}={s.score:g}" for s in ss)
        lines.append(f"{who:<14} {chapter:<18} {got:>3g}/{out_of:<3g}  {detail}")
    return "\n".join(lines)


def reference_submission(release_nb: Path, dest: Path, wrong: str | None = None) -> Path:
    """A submission that answers every exercise with the reference solution (for tests and demos).

    ``wrong``: the name of one exercise (``"x0_from_v"``) to answer wrongly instead (it returns
    its first argument unchanged), which must lose its point.
    """
    nb = nbformat.read(release_nb, as_version=4)
    found = {e.fn: e for e in chapters.exercises(chapters.read(Path(release_nb).stem))}
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if not meta.get("solution"):
            continue
        ex = next(e for e in found.values() if f"def {e.fn}(" in cell.source)
        answer = (ex.args[0] if ex.name == wrong else
                  f"{ex.module}.{ex.solution}({', '.join(ex.args)})")
        cell.source = cell.source.replace(student.STUB, f"return {answer}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dest)
    return dest
