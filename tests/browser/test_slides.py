"""Every chapter's slide deck, as a class sees it on the projector: headless Chromium, offline.

The decks are the ones the book build put into ``$IMAGEN_EDU_BOOK_HTML/slides`` (default
``_build/html/slides``; see ``imagen_edu/classroom/sphinx_slides.py``), built from the notebooks
that build executed. Without them, but with the chapters in the build's execution cache,
the decks are built into a temporary folder first (``python -m imagen_edu.classroom slides``).

For each deck: it loads with the chapter's title; reveal.js started (its slides are laid out);
MathJax 3 loaded and typeset the maths (no raw ``$$``, ``\\frac``, ``\\begin{`` left as text, no
TeX errors, and at least one typeset formula where the deck has maths); every image loaded
(natural width > 0); no JavaScript errors; nothing fetched from another host. The checks are those
of ``tests/support/browser.py`` (its probe), plus a look at the dumped DOM for reveal.js and
MathJax output. Skips without Chromium or without executed notebooks, unless
``IMAGEN_EDU_BROWSER_TESTS=required``.
"""

import os
import re
import subprocess
import tempfile
from pathlib import Path

import pytest

from imagen_edu.classroom import chapters, slides
from support import browser

ROOT = Path(__file__).resolve().parents[2]
HTML = Path(os.environ.get("IMAGEN_EDU_BOOK_HTML", ROOT / "_build" / "html"))
REQUIRED = os.environ.get("IMAGEN_EDU_BROWSER_TESTS", "") == "required"


def _decks_dir() -> tuple[Path | None, str | None]:
    """Where the decks are (building them if needed), or why there are none."""
    if browser.find_chromium() is None:
        return None, "no Chromium found (apt-get install -y chromium, or set $CHROMIUM)"
    built = HTML / "slides"
    if all((built / f"{n}.slides.html").is_file() for n in chapters.CHAPTERS):
        return HTML, None
    try:
        notebooks = slides.executed_notebooks()
    except FileNotFoundError as e:
        return None, f"no decks in {built} and {e}"
    out = Path(tempfile.mkdtemp(prefix="imagen-edu-slides-"))
    slides.write_decks(out, notebooks)
    return out, None


ROOT_DIR, REASON = _decks_dir()
DECKS = [f"slides/{n}.slides.html" for n in chapters.CHAPTERS] if ROOT_DIR else []


def test_decks_available():
    if REASON is not None:
        if REQUIRED:
            pytest.fail(REASON)
        pytest.skip(REASON)
    assert all((ROOT_DIR / d).is_file() for d in DECKS)


@pytest.fixture(scope="module")
def results():
    return browser.check_book(ROOT_DIR, None, pages=DECKS,
                              workers=int(os.environ.get("IMAGEN_EDU_BROWSER_WORKERS", "2")))


def _dom(page: str) -> str:
    """The deck's DOM after reveal.js and MathJax ran (Chromium --dump-dom, offline)."""
    with browser.serve(ROOT_DIR) as base, tempfile.TemporaryDirectory() as profile:
        run = subprocess.run(
            [browser.find_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}",
             "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
             "--virtual-time-budget=20000", "--dump-dom", base + page],
            capture_output=True, text=True, timeout=120)
    return run.stdout


@pytest.mark.parametrize("deck", DECKS or [pytest.param(None, marks=pytest.mark.skip(reason=str(REASON)))])
def test_deck_renders(deck, results):
    """The deck renders offline: title, images, typeset maths, no errors (the probe's checks)."""
    r = results[deck]
    problems = r.problems()
    assert not problems, f"{deck}:\n  " + "\n  ".join(problems)
    assert r.probe["mathjax_loaded"], f"{deck}: MathJax did not load"
    assert r.probe["images"], f"{deck}: no figures in the deck"


@pytest.mark.parametrize("deck", DECKS or [pytest.param(None, marks=pytest.mark.skip(reason=str(REASON)))])
def test_deck_is_a_reveal_deck_with_typeset_maths(deck):
    """reveal.js laid the slides out and MathJax turned the deck's TeX into mjx-container output."""
    src = (ROOT_DIR / deck).read_text(encoding="utf-8")
    dom = _dom(deck)
    assert 'class="reveal' in dom and re.search(r'<section[^>]*class="[^"]*present', dom), \
        f"{deck}: reveal.js did not start (no present slide)"
    if "$" in src:
        assert "<mjx-container" in dom, f"{deck}: the deck has maths but none was typeset"
    assert "<mjx-merror" not in dom, f"{deck}: TeX errors"
