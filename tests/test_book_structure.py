"""The book's navigation and exercises, checked on the sources (no build, no execution).

Every chapter notebook listed in ``_toc.yml`` starts with "What you will build" and "What you
need from earlier chapters", ends with "Summary" and "Where this is in Imagen" (before or after
its "Time" note), and has an "Exercises" section whose solution cells are hidden
(``hide-input``) and run their check. The system figure on the intro page links every chapter
of the table of contents, so adding a chapter without a box in the figure fails here. Every
``python -m imagen_edu...`` command and every ``tests/``/``imagen_edu/`` file a page or the README
names exists, so moving a module (or a test helper) without updating the book fails here.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import types
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from imagen_edu import exercises

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"

OPENING = ["What you will build", "What you need from earlier chapters"]
CLOSING = {"Summary", "Where this is in Imagen"}
ENDING = CLOSING | {"Time", "Quick checks", "Exercises"}  # the H2 sections a chapter may end with


def toc_files() -> list[str]:
    """Every ``file:`` of ``_toc.yml`` in order, e.g. ``book/01_attention``."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk({k: v for k, v in toc.items() if k != "root"})
    return files


def chapter_notebooks() -> list[Path]:
    """The chapter notebooks of the toc: every listed ``book/*.ipynb`` except the appendix pages."""
    out = []
    for f in toc_files():
        path = ROOT / (f + ".ipynb")
        if path.exists() and not path.stem.startswith("appendix"):
            out.append(path)
    return out


CHAPTERS = chapter_notebooks()


def cells(path: Path) -> list[dict]:
    data = json.loads(path.read_text())
    for c in data["cells"]:
        c["text"] = "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
    return data["cells"]


def h2_headings(markdown: str) -> list[str]:
    """The ``## `` headings of a markdown text, outside fenced code blocks."""
    out, fence = [], None
    for line in markdown.splitlines():
        m = re.match(r"^\s*(```+|~~~+|:::+)", line)
        if m and m.group(1)[0] != ":":
            marker = m.group(1)
            if fence is None:
                fence = marker
            elif marker.startswith(fence):
                fence = None
            continue
        if fence is None and line.startswith("## "):
            out.append(line[3:].strip())
    return out


def headings_with_cells(path: Path) -> list[tuple[str, int]]:
    """``[(heading, cell index), ...]`` for every H2 heading of the notebook's markdown cells."""
    return [(h, i) for i, c in enumerate(cells(path)) if c["cell_type"] == "markdown"
            for h in h2_headings(c["text"])]


def test_toc_has_chapters():
    names = [p.stem for p in CHAPTERS]
    assert "01_attention" in names and "04_clip" in names, names


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.name)
def test_chapter_opens_with_build_and_prerequisites(nb):
    hs = headings_with_cells(nb)
    assert [h for h, _ in hs[:2]] == OPENING, \
        f"{nb.name}: the first two '## ' headings must be {OPENING}, got {[h for h, _ in hs[:2]]}"
    code_before = [c for c in cells(nb)[:hs[1][1]] if c["cell_type"] == "code"]
    assert len(code_before) <= 2, f"{nb.name}: {OPENING} must come before the chapter's own code"


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.name)
def test_chapter_closes_with_summary_and_imagen(nb):
    names = [h for h, _ in headings_with_cells(nb)]
    tail = []
    for h in reversed(names):
        if h not in ENDING:
            break
        tail.append(h)
    missing = CLOSING - set(tail)
    assert not missing, (f"{nb.name}: the last sections must include {sorted(CLOSING)} (with 'Time' and "
                         f"'Exercises'); the closing sections are {tail[::-1]}, missing {sorted(missing)}")


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.name)
def test_exercises_hide_their_solutions(nb):
    hs = dict(headings_with_cells(nb))
    assert "Exercises" in hs, f"{nb.name} has no '## Exercises' section"
    section = cells(nb)[hs["Exercises"]:]
    for c in section:
        if c["cell_type"] != "code":
            continue
        tags = c.get("metadata", {}).get("tags", [])
        checks = re.findall(r"assert\s+(\w+)\.check_(\w+)\(", c["text"])
        if checks:  # a solution cell: hidden, and it runs the chapter's check
            assert "hide-input" in tags, f"{nb.name}: solution cell is not tagged hide-input:\n{c['text']}"
        if "hide-input" in tags:
            assert checks, f"{nb.name}: a hidden cell in Exercises must assert a check:\n{c['text']}"
            for mod_name, stem in checks:
                mod = importlib.import_module(f"imagen_edu.exercises.{mod_name}")
                assert hasattr(mod, f"check_{stem}"), f"{nb.name}: no {mod_name}.check_{stem}"
                for sol in re.findall(rf"{mod_name}\.(solution_\w+)", c["text"]):
                    assert hasattr(mod, sol), f"{nb.name}: no {mod_name}.{sol}"


# ---------------------------------------------------------------------------------------------
# The system figure on the intro page
# ---------------------------------------------------------------------------------------------
class _SvgLinks(HTMLParser):
    def __init__(self):
        super().__init__()
        self.in_svg = 0
        self.links: list[dict] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "svg":
            self.in_svg += 1
        if self.in_svg:
            self.tags.append(tag)
            if tag == "a":
                self.links.append(dict(attrs))

    def handle_endtag(self, tag):
        if tag == "svg":
            self.in_svg -= 1


def intro_figure() -> _SvgLinks:
    text = (BOOK / "intro.md").read_text()
    m = re.search(r"<svg\b.*?</svg>", text, re.S)
    assert m, "book/intro.md has no inline <svg> figure of the system"
    parser = _SvgLinks()
    parser.feed(m.group(0))
    return parser


def test_intro_figure_links_every_chapter():
    fig = intro_figure()
    targets = {a.get("href", "").split("#")[0] for a in fig.links}
    missing = [p.name for p in CHAPTERS if f"{p.stem}.html" not in targets]
    assert not missing, f"the system figure in book/intro.md has no box linking to {missing}"


def test_intro_figure_links_name_real_chapters():
    """A box may link a planned chapter (05_*, 06_*) before it exists; once a chapter of that
    number is in the book, every link with its prefix must name an existing notebook."""
    targets = {a.get("href", "").split("#")[0] for a in intro_figure().links}
    for href in targets:
        assert href.endswith(".html") and "/" not in href, f"figure links are sibling pages: {href}"
        stem = href[:-len(".html")]
        if (BOOK / f"{stem}.ipynb").exists() or (BOOK / f"{stem}.md").exists():
            continue
        prefix = stem.split("_")[0] + "_"
        assert prefix in ("05_", "06_"), f"the figure links {href}, which is not a page of the book"
        written = sorted(p.name for p in BOOK.glob(prefix + "*.ipynb"))
        assert not written, f"the figure links {href}, but chapter {prefix[:2]} is {written}"


def test_intro_figure_is_accessible():
    fig = intro_figure()
    assert "title" in fig.tags and "desc" in fig.tags, "the SVG needs a <title> and a <desc>"
    for a in fig.links:
        assert a.get("aria-label"), f"link {a.get('href')} needs an aria-label"


# ---------------------------------------------------------------------------------------------
# Reference solutions (the appendix "Exercise solutions")
# ---------------------------------------------------------------------------------------------
EXERCISE_MODULES = ["ch01", "ch_data", "ch02", "ch02b", "ch03", "ch04", "ch05", "ch06"]


@pytest.mark.parametrize("name", EXERCISE_MODULES)
def test_every_reference_solution_passes_its_check(name):
    mod = importlib.import_module(f"imagen_edu.exercises.{name}")
    sols = exercises.solution_functions(mod)
    assert sols, f"{name} has no solution_* functions"
    passed = exercises.check_solutions(mod)
    for sol_name, _ in sols:
        assert sol_name in passed, f"{name}.{sol_name} has no check_{sol_name[len('solution_'):]}"


def test_check_solutions_names_a_failing_solution():
    mod = types.ModuleType("fake_exercises")

    def check_double(fn, verbose=True):
        from imagen_edu.exercises import run_check

        def body():
            assert fn(2) == 4, f"double(2) gave {fn(2)}"
        return run_check("double", body, "multiply by two", verbose=verbose)

    def solution_double(x):
        return x + 1  # wrong on purpose

    for f in (check_double, solution_double):
        f.__module__ = mod.__name__
        setattr(mod, f.__name__, f)
    assert [n for n, _ in exercises.solution_functions(mod)] == ["solution_double"]
    with pytest.raises(AssertionError, match="solution_double fails its check"):
        exercises.check_solutions(mod)


def test_solutions_appendix_lists_every_exercise_module():
    text = (BOOK / "appendix_solutions.ipynb").read_text()
    for name in EXERCISE_MODULES:
        # chapters 1-4 show each solution by name; later chapters are listed from their module
        # at build time (viz.show_solutions), which names the module in the appendix's code
        assert f"{name}.solution_" in text or f'\\"{name}\\"' in text, \
            f"the solutions appendix does not show {name}'s solutions"
    assert "book/appendix_solutions" in toc_files()


# ---------------------------------------------------------------------------------------------
# Commands and files the pages give a reader
# ---------------------------------------------------------------------------------------------
PAGES_AND_README = [*sorted(BOOK.glob("*.ipynb")), *sorted(BOOK.glob("*.md")), ROOT / "README.md"]
MODULE_FLAG = re.compile(r"-m\s+(imagen_edu(?:\.\w+)*)")
CODE_PATH = re.compile(r"\b(?:tests|imagen_edu)/[\w/.-]*\w\.py\b")


def page_text(path: Path) -> str:
    """The text a reader sees: every cell's source of a notebook, or the markdown file."""
    if path.suffix == ".ipynb":
        return "\n".join(c["text"] for c in cells(path))
    return path.read_text()


def named_modules_and_files(text: str) -> tuple[list[str], list[str]]:
    """``(modules run with python -m / torchrun -m, tests/ and imagen_edu/ .py paths)`` in ``text``."""
    return MODULE_FLAG.findall(text), CODE_PATH.findall(text)


def module_exists(name: str) -> bool:
    """Whether ``python -m name`` finds a module (its parent packages are imported, the module is not)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def test_named_modules_and_files_are_found():
    """The patterns below find what they must (else the check would pass vacuously)."""
    text = ("torchrun --nproc_per_node=2 -m imagen_edu._old --out x\npython -m imagen_edu eval; "
            "python tests/support/ddp_smoke.py; see `imagen_edu/data/shapes.py`; python -m venv .venv")
    assert named_modules_and_files(text) == (["imagen_edu._old", "imagen_edu"],
                                             ["tests/support/ddp_smoke.py", "imagen_edu/data/shapes.py"])
    assert module_exists("imagen_edu.data.shapes")
    assert not module_exists("imagen_edu._ddp_smoke") and not module_exists("imagen_edu.nothing.here")


@pytest.mark.parametrize("path", PAGES_AND_README, ids=lambda p: str(p.relative_to(ROOT)))
def test_commands_name_modules_and_files_that_exist(path):
    """Every ``python -m imagen_edu...`` (or ``torchrun -m``) a reader is told to run names a module
    of the package, and every ``tests/...py`` or ``imagen_edu/...py`` file named is in the repository
    (the test harness moved out of the package: a command must follow it)."""
    modules, files = named_modules_and_files(page_text(path))
    missing = sorted({m for m in modules if not module_exists(m)})
    assert not missing, f"{path.name} runs modules that do not exist: {missing}"
    missing = sorted({f for f in files if not (ROOT / f).is_file()})
    assert not missing, f"{path.name} names files that are not in the repository: {missing}"
