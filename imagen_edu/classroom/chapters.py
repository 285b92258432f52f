"""The chapter notebooks and the two kinds of exercise cells the classroom kit rewrites.

Every chapter page ends with exercises written as a pair of code cells:

* the **exercise cell**, which the student edits::

      def my_softmax(s):
          # TODO: ...
          raise NotImplementedError      # (chapter 3 writes ``...  # your code here``)

      ch01.check_softmax(my_softmax);    # (chapters 4-6 may leave this line commented out)

* the **solution cell** right after it, folded in the book (tags ``hide-input``/``hide-output``),
  whose source starts with ``# Solution:`` and shows ``chNN.solution_X`` from
  :mod:`imagen_edu.exercises`.

:func:`exercises` finds the pairs; the student edition, the grader and the slides all start here.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[2]
BOOK = ROOT / "book"

# The chapter notebooks, in reading order (the appendix of solutions is not a chapter).
CHAPTERS = [
    "01_attention", "shapes_benchmark", "02_language_model", "02b_t5_encoder",
    "03_ddpm", "03b_ddpm_images", "04_clip",
    "05_guidance", "05_thresholding", "05_imagen_cascade", "06_scaling",
]

CHECK_LINE = re.compile(
    r"^(?P<comment>#\s*)?(?P<module>ch\w+)\.(?P<check>check_\w+)\((?P<fn>my_\w+)\)\s*;?\s*$",
    re.MULTILINE)
STUB_LINE = re.compile(r"^(?P<indent>\s+)(raise NotImplementedError(\(\))?|\.\.\.)(\s*#.*)?\s*$",
                       re.MULTILINE)


@dataclass
class Exercise:
    """One exercise of a chapter: the student's function ``my_fn`` and its check.

    ``module`` is the exercise module's short name (``"ch01"``), ``check`` the check's name
    (``"check_softmax"``), ``fn`` the student's function (``"my_softmax"``), ``args`` its
    parameter names, ``cell`` the index of the exercise cell in the chapter notebook.
    """

    module: str
    check: str
    fn: str
    args: list[str]
    cell: int

    @property
    def name(self) -> str:
        """The exercise's name: the check's without ``check_`` (``"softmax"``)."""
        return self.check[len("check_"):]

    @property
    def solution(self) -> str:
        """The reference solution's name in the exercise module (``"solution_softmax"``)."""
        return "solution_" + self.name


def chapter_path(name: str) -> Path:
    """The notebook under ``book/`` of a chapter name (``"01_attention"``), or a path to a notebook."""
    p = Path(name)
    return p if p.suffix == ".ipynb" else BOOK / f"{name}.ipynb"


def read(name: str) -> nbformat.NotebookNode:
    """The chapter notebook, as nbformat v4."""
    return nbformat.read(chapter_path(name), as_version=4)


def source(cell) -> str:
    """A cell's source as one string (nbformat keeps a string; raw JSON may keep a list)."""
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def is_solution_cell(cell) -> bool:
    """A folded reference-solution cell: code starting ``# Solution:`` or showing ``solution_X``."""
    if cell.get("cell_type") != "code":
        return False
    s = source(cell)
    return s.lstrip().startswith("# Solution:") or bool(re.search(r"show_source\(\s*\w+\.solution_", s))


def _args(src: str, fn: str) -> list[str]:
    """The parameter names of ``def fn(...)`` in a cell (a stub body parses as Python)."""
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.FunctionDef) and node.name == fn:
            a = node.args
            return [x.arg for x in [*a.posonlyargs, *a.args, *a.kwonlyargs]]
    raise ValueError(f"no `def {fn}(...)` in the exercise cell")


def exercise_in(cell, index: int = -1) -> Exercise | None:
    """The exercise a code cell poses (``def my_X`` plus a check call on it), or ``None``."""
    if cell.get("cell_type") != "code" or is_solution_cell(cell):
        return None
    s = source(cell)
    m = CHECK_LINE.search(s)
    if m is None or f"def {m['fn']}(" not in s:
        return None
    return Exercise(m["module"], m["check"], m["fn"], _args(s, m["fn"]), index)


def exercises(nb) -> list[Exercise]:
    """Every exercise of a notebook, in page order."""
    found = (exercise_in(c, i) for i, c in enumerate(nb.cells))
    return [e for e in found if e is not None]


def first_line(cell) -> str:
    """A cell's first non-empty line (for tables of cells)."""
    return next((ln.strip() for ln in source(cell).splitlines() if ln.strip()), "")
