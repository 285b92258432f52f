"""One voice: the book's pages and the README speak to the reader about Imagen and the toy, never
about how the book or its package was made (no issues, bars, lent machines, machine load, the
seed text it grew from, earlier runs of the book, or uncited "widely used" projects).

Machine-specific timing lives in one table (the README's "Time per chapter"); targets are stated
as what the reader can reach and check.
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: wording about the making of the book, each with why it does not belong in a page
FORBIDDEN: dict[str, str] = {
    r"\bthe issue\b": "the project's issue tracker is not the reader's business",
    r"\bissues? #?\d+\b": "an issue number",
    r"\b(?:the|our|book's|quality|\d+\s?%) bar\b(?!s|\s+chart|\s+plot)": "a 'bar' is a development target; say what the reader can reach",
    r"\blent\b": "a machine lent to the project",
    r"\bdeveloped on\b": "the machine the book was developed on",
    r"\bthis book (?:was|shipped|is developed)\b": "the book's own history",
    r"\bload \d": "machine load belongs nowhere; timing lives in the README's table",
    r"\bseed explainer\b": "the text the book grew from",
    r"\bearlier runs\b": "the book's earlier runs",
    r"\bthis project\b": "the project, not Imagen",
    r"\bwidely used open\b": "an uncited outside figure",
}


def _texts():
    for p in sorted((ROOT / "book").glob("*.ipynb")):
        nb = json.loads(p.read_text())
        for i, cell in enumerate(nb["cells"]):
            if cell["cell_type"] == "markdown":
                yield f"{p.name} cell {i}", "".join(cell["source"])
            else:  # code: only what it prints or labels reaches the reader; comments and strings count
                yield f"{p.name} cell {i} (code)", "".join(cell["source"])
    for p in sorted((ROOT / "book").glob("**/*.md")) + [ROOT / "README.md"]:
        yield p.name, p.read_text()


def _hits(text: str) -> list[str]:
    return [f"{m.group(0)!r} ({why})" for pat, why in FORBIDDEN.items() for m in re.finditer(pat, text, flags=re.I)]


def test_no_page_talks_about_how_the_book_was_made():
    found = [f"{where}: {hit}" for where, text in _texts() for hit in _hits(text)]
    assert not found, "process wording in the book or README:\n" + "\n".join(found)


@pytest.mark.parametrize("text", [
    "The issue left the choice open.", "see issue #17", "the book's quality bar asks for 85%",
    "the H200 lent to this project", "on the 2-core machine this book was developed on",
    "a machine shared with other jobs (load 5 to 6)", "the seed explainer of this book says it",
    "left the book's earlier runs in the same place", "a widely used open Imagen implementation",
    "it reaches the 85% bar",
])
def test_the_check_catches_each_kind(text):
    assert _hits(text)


@pytest.mark.parametrize("text", [
    "as a bar chart", "the bars stay close to chance", "$\\bar\\alpha_t$", "a progress bar",
    "the tallest bars", "a thin red bar", "The targets a toy cascade should reach",
])
def test_the_check_leaves_ordinary_words_alone(text):
    assert not _hits(text)
