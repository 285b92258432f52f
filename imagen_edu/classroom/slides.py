"""Slides: a reveal.js deck per chapter, built from the executed chapter notebook, offline.

``jupyter nbconvert --to slides`` reads each cell's ``metadata.slideshow.slide_type``. The book's
notebooks carry none, so :func:`slide_notebook` gives a *copy* of the notebook slide metadata by
one rule:

* the title (``# ...``) and every ``## ...`` section heading start a new **slide**;
* a ``### ...`` heading, and every markdown cell with display maths (a derivation step), start a
  **sub-slide** (down arrow), so a derivation reads one step per screen;
* other markdown continues the current slide;
* code cells before the first section (the set-up), the folded solution cells and cells tagged
  ``remove-cell`` are **skipped**; a code cell of more than ``LONG_CODE`` lines, or one the book
  shows without its input (``remove-input``/``hide-input``), shows its output only;
  the others appear as a **fragment** (next key press) below the text they illustrate;
* MyST markup that plain Markdown does not know is rewritten: ``{eq}`x` `` to "Eq. (x)",
  ``{cite:p}`key` `` to "[key]", ``{doc}`Text <page>` `` to "Text", equation labels after
  ``$$`` dropped, ``:::{admonition} Title`` boxes to block quotes;
* interactive widgets are live in the notebook only: their outputs are left out of the deck.

The deck loads reveal.js from the book's bundled copy (``book/_static/reveal.js``) and MathJax 3
from the book's own static copy (``book/_static/mathjax``), through relative links, so it works
without a network: decks go to ``OUT/slides/CHAPTER.slides.html`` and the assets to
``OUT/_static`` (already there when ``OUT`` is the built book, ``_build/html``).
"""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import nbformat
from nbconvert import SlidesExporter
from traitlets.config import Config

from . import chapters

STATIC = chapters.BOOK / "_static"
TEMPLATES = Path(__file__).resolve().parent / "templates"
EXECUTED = chapters.ROOT / "_build" / "jupyter_execute" / "book"  # what the book build executed
CACHE = chapters.ROOT / "_build" / ".jupyter_cache"  # the book build's execution cache
LONG_CODE = 15  # lines: a longer code cell shows its output only
REVEAL = "../_static/reveal.js"
MATHJAX = "../_static/mathjax/tex-chtml-full.js"

WIDGET = "application/vnd.jupyter.widget-view+json"
_ROLE = re.compile(r"\{(?P<role>[\w:-]+)\}`(?P<body>[^`]*)`")
_EQ_LABEL = re.compile(r"\$\$\s*\(([\w:-]+)\)")
_ADMONITION = re.compile(r"^:::+\s*\{(?P<kind>[\w-]+)\}\s*(?P<title>.*?)\n(?P<body>.*?)^:::+\s*$",
                         re.MULTILINE | re.DOTALL)


def _role(m: re.Match) -> str:
    role, body = m["role"], m["body"]
    if role == "eq":
        return f"Eq. ({body})"
    if role.startswith("cite"):
        return "[" + ", ".join(k.strip() for k in body.split(",")) + "]"
    inner = re.match(r"(.*?)\s*<[^>]*>$", body)  # {doc}`Text <target>`
    return inner[1] if inner else body


def _admonition(m: re.Match) -> str:
    body = re.sub(r"^:class:.*\n", "", m["body"], flags=re.MULTILINE).rstrip()
    title = m["title"].strip() or m["kind"].capitalize()
    return "\n".join([f"> **{title}**", ">", *(f"> {ln}" if ln else ">" for ln in body.splitlines())])


def plain_markdown(src: str) -> str:
    """The MyST of a book cell as plain Markdown with TeX that nbconvert and MathJax understand."""
    src = _ADMONITION.sub(_admonition, src)
    src = _EQ_LABEL.sub("$$", src)
    return _ROLE.sub(_role, src)


def slide_type(cell, seen_section: bool) -> str:
    """The reveal.js slide type of one cell under the rule of this module."""
    s = chapters.source(cell).lstrip()
    tags = set(cell.get("metadata", {}).get("tags", []))
    if cell.cell_type == "markdown":
        if s.startswith("# ") or s.startswith("## "):
            return "slide"
        if s.startswith("### ") or "$$" in s or "\\begin{" in s:
            return "subslide"
        return "-"
    if (cell.cell_type != "code" or not seen_section or "remove-cell" in tags
            or chapters.is_solution_cell(cell)):
        return "skip"
    return "fragment"


def slide_notebook(nb):
    """A copy of an (executed) chapter notebook with slide metadata and plain Markdown."""
    out = copy.deepcopy(nb)
    out.metadata.pop("widgets", None)
    title = next((chapters.source(c).lstrip()[2:].splitlines()[0] for c in out.cells
                  if c.cell_type == "markdown" and chapters.source(c).lstrip().startswith("# ")), None)
    if title:
        out.metadata["title"] = plain_markdown(title).strip()
    seen_section = False
    for cell in out.cells:
        src = chapters.source(cell)
        seen_section = seen_section or (cell.cell_type == "markdown" and src.lstrip().startswith("## "))
        meta = cell.setdefault("metadata", {})
        meta["slideshow"] = {"slide_type": slide_type(cell, seen_section)}
        tags = set(meta.get("tags", []))
        if cell.cell_type == "markdown":
            cell.source = plain_markdown(src)
        if cell.cell_type != "code":
            continue
        cell.outputs = [o for o in cell.get("outputs", []) if WIDGET not in o.get("data", {})]
        if len(src.splitlines()) > LONG_CODE or tags & {"remove-input", "hide-input"}:
            meta["tags"] = sorted(tags | {"slides-output-only"})
    return out


def exporter() -> SlidesExporter:
    """nbconvert's slides exporter with the offline template and the book's local assets."""
    c = Config()
    c.TagRemovePreprocessor.enabled = True
    c.TagRemovePreprocessor.remove_input_tags = {"slides-output-only"}
    c.SlidesExporter.reveal_url_prefix = REVEAL
    c.SlidesExporter.reveal_theme = "white"
    c.SlidesExporter.reveal_scroll = True
    c.SlidesExporter.mathjax_url = MATHJAX
    return SlidesExporter(config=c, template_name="offline_reveal",
                          extra_template_basedirs=[str(TEMPLATES)])


def executed_notebook(name: str, executed: Path = EXECUTED, cache: Path | None = CACHE) -> nbformat.NotebookNode:
    """The executed chapter ``name``: from the book's execution cache, else from ``executed``.

    The cache (``_build/.jupyter_cache``, ``execute_notebooks: cache``) holds the outputs of the
    chapter's current code, whether this build executed it or an earlier one did. The copies in
    ``_build/jupyter_execute`` are not enough on their own: when the build takes a notebook from
    the cache, myst-nb 1.x writes the *unexecuted* notebook there. So a copy without a single
    output counts as missing. Raises ``FileNotFoundError`` when neither has the chapter.
    """
    if cache is not None and Path(cache).is_dir():
        from jupyter_cache import get_cache

        source = nbformat.read(chapters.chapter_path(name), as_version=4)
        try:
            return get_cache(str(cache)).merge_match_into_notebook(source)[1]
        except KeyError:  # no record for this code
            pass
    p = Path(executed) / f"{chapters.chapter_path(name).stem}.ipynb"
    if p.is_file():
        nb = nbformat.read(p, as_version=4)
        if any(c.get("outputs") for c in nb.cells if c.cell_type == "code"):
            return nb
    raise FileNotFoundError(f"no executed copy of {name}: not in the cache {cache} and no outputs in {p}; "
                            "build the book first (jupyter-book build .), or pass --executed DIR with "
                            "executed notebooks")


def copy_assets(out: Path) -> None:
    """Put reveal.js and MathJax under ``out/_static`` unless they are there already."""
    for sub in ("reveal.js", "mathjax"):
        dest = Path(out) / "_static" / sub
        if not dest.exists():
            shutil.copytree(STATIC / sub, dest)


def executed_notebooks(names: list[str] | None = None, executed: Path = EXECUTED,
                       cache: Path | None = CACHE, missing: str = "raise") -> dict[str, nbformat.NotebookNode]:
    """``{name: executed notebook}`` for ``names`` (default: every chapter), by
    :func:`executed_notebook`; a chapter with none raises (``missing="raise"``) or is left out
    (``missing="skip"``, for a build that executed only some chapters)."""
    if missing not in ("raise", "skip"):
        raise ValueError(f"missing must be 'raise' or 'skip', got {missing!r}")
    found = {}
    for name in names or chapters.CHAPTERS:
        try:
            found[name] = executed_notebook(name, executed, cache)
        except FileNotFoundError:
            if missing == "raise":
                raise
    return found


def write_decks(out: Path, notebooks: dict[str, nbformat.NotebookNode]) -> list[Path]:
    """Write ``out/slides/CHAPTER.slides.html`` for each ``{name: executed notebook}``; returns the decks."""
    out = Path(out)
    (out / "slides").mkdir(parents=True, exist_ok=True)
    copy_assets(out)
    ex, decks = exporter(), []
    for name, nb in notebooks.items():
        body, _ = ex.from_notebook_node(slide_notebook(nb))
        deck = out / "slides" / f"{chapters.chapter_path(name).stem}.slides.html"
        deck.write_text(body, encoding="utf-8")
        decks.append(deck)
    return decks


def build(out: Path, names: list[str] | None = None, executed: Path = EXECUTED,
          cache: Path | None = CACHE) -> list[Path]:
    """Write the deck of every chapter in ``names`` (see :func:`executed_notebook`); all are found
    before anything is written. Returns the decks."""
    return write_decks(out, executed_notebooks(names, executed, cache))
