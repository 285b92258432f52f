"""The book's own jargon is defined where a reader first meets it, and chapter 6 stays short.

"Golden", "shipped" and "manifest" are words of the book, not of Imagen: the first page that
uses one (in reading order, :data:`imagen_edu.classroom.chapters.CHAPTERS`) must define it right
there, with the term set in emphasis, and the glossary must have an entry for each. Chapter 6
keeps its prose under 3,000 words (markdown cells, counted with ``\\w+``), and states the base
model's deepest width as the book's layout (480 x 4 = 1920) beside the paper's (512 x 4 = 2048).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from imagen_edu import configs
from imagen_edu.classroom.chapters import CHAPTERS

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"

#: word as it appears in the prose -> the emphasised form that marks its definition
JARGON = {
    "golden": r"\*{1,2}golden\*{1,2}",
    "shipped": r"\*{1,2}shipped(?: checkpoint)?\*{1,2}",
    "manifest": r"\*{1,2}manifest\*{1,2}",
}
#: the glossary entry of each word
GLOSSARY_TERMS = {"golden": "Golden check", "shipped": "Shipped checkpoint", "manifest": "Manifest"}
MAX_WORDS_CH6 = 3000


def _reader_texts():
    """(page, cell index, kind, text) in reading order: the intro, then every chapter notebook;
    for code cells only the comments, which the reader sees."""
    yield "intro", 0, "markdown", (BOOK / "intro.md").read_text()
    for page in CHAPTERS:
        cells = json.loads((BOOK / f"{page}.ipynb").read_text())["cells"]
        for i, cell in enumerate(cells):
            text = "".join(cell["source"])
            if cell["cell_type"] == "code":
                text = "\n".join(m.group(0) for m in re.finditer(r"#.*", text))
            yield page, i, cell["cell_type"], text


@pytest.mark.parametrize("word", sorted(JARGON))
def test_jargon_is_defined_at_first_use(word):
    """Detail: the book's jargon ("golden" check, "shipped" checkpoint, "manifest") is defined
    where the reader first meets it: the first cell that uses the word is prose and sets the
    term in emphasis (its definition), not a bare "**Golden cell.**" heading or a code comment."""
    first = next(((page, i, kind, text) for page, i, kind, text in _reader_texts()
                  if re.search(rf"\b{word}\b", text, re.I)), None)
    assert first is not None, f"no page uses {word!r}: drop it from JARGON"
    page, i, kind, text = first
    assert kind == "markdown", f"{word!r} is first used in a code comment ({page} cell {i})"
    assert re.search(JARGON[word], text, re.I), (
        f"{word!r} is first used in {page} cell {i} without being defined there:\n{text[:400]}")


def test_glossary_has_the_jargon():
    """Detail: the glossary (appendix C) has an entry for each word of the book's jargon."""
    glossary = (BOOK / "appendix_glossary.md").read_text()
    missing = [t for t in GLOSSARY_TERMS.values() if not re.search(rf"^{re.escape(t)}\n  \S", glossary, re.M)]
    assert not missing, f"glossary entries missing: {missing}"


def _markdown(page: str) -> list[str]:
    cells = json.loads((BOOK / f"{page}.ipynb").read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]


def prose(text: str) -> str:
    """Markdown without its fenced code blocks (commands to copy are not prose)."""
    return re.sub(r"(?ms)^```.*?^```", " ", text)


def test_chapter6_prose_is_short():
    """Detail: chapter 6's prose (markdown outside code fences) is at most 3,000 words; figures
    and tables say the rest."""
    words = sum(len(re.findall(r"\w+", prose(text))) for text in _markdown("06_scaling"))
    assert words <= MAX_WORDS_CH6, f"06_scaling has {words} words of markdown (at most {MAX_WORDS_CH6})"


def test_chapter6_deepest_width_is_the_books_layout_not_the_papers():
    """Detail: Imagen's base U-Net is 512 x (1, 2, 3, 4) wide, so its deepest level is 2048
    channels (paper, Appendix F); the book's ``paper/base64`` layout is narrowed to 480, deepest
    1920. Every chapter-6 cell that names 1920 names 2048 beside it as the paper's, and both
    numbers are those of ``imagen_edu.configs``."""
    unet = configs.get("paper/base64").stage.unet
    ours = unet.channels * max(unet.channel_mults)
    paper = configs.PAPER_WIDTHS["paper/base64"] * max(unet.channel_mults)
    assert (ours, paper) == (1920, 2048)
    cells = [t for t in _markdown("06_scaling") if re.search(rf"\b{ours}\b", t)]
    assert cells, "chapter 6 no longer names the deepest width"
    for text in cells:
        assert re.search(rf"\bpaper's\b[^.]*\b{paper}\b", text), (
            f"a cell names {ours} without the paper's {paper}:\n{text[:400]}")
