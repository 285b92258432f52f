"""The built book, as a reader sees it: every page of the table of contents in headless Chromium.

Run after building the book::

    jupyter-book build . -W -n --keep-going
    pytest tests/browser

For each page: it loads with its title; no Python traceback or error output is shown; every image
has loaded (natural width > 0); every maths element was typeset by MathJax (no raw TeX, no TeX
errors); every saved ipywidget rendered; no JavaScript errors; nothing was fetched from another
host (Chromium can resolve no host but 127.0.0.1, so CDN assets would fail). A screenshot of each
page goes to ``_build/screenshots/``.

The book is served from ``$IMAGEN_EDU_BOOK_HTML`` (default ``_build/html``). Without a build, with
a build older than the book's sources, or without Chromium, these tests skip with the reason,
unless ``IMAGEN_EDU_BROWSER_TESTS=required`` (CI, after the build), where they fail instead.
Alt text on images is reported (skip with the count) and enforced with ``IMAGEN_EDU_BROWSER_ALT=required``.
Driver: the Chromium command line (``--headless --dump-dom --screenshot``) plus a probe script
that the test's own server injects into each page; see ``tests/support/browser.py``.
"""

import os
from pathlib import Path

import pytest

from imagen_edu.classroom.chapters import CHAPTERS
from support import browser

ROOT = Path(__file__).resolve().parents[2]
HTML = Path(os.environ.get("IMAGEN_EDU_BOOK_HTML", ROOT / "_build" / "html"))
SCREENSHOTS = Path(os.environ.get("IMAGEN_EDU_SCREENSHOTS", HTML.parent / "screenshots"))
REQUIRED = os.environ.get("IMAGEN_EDU_BROWSER_TESTS", "") == "required"
ALT_REQUIRED = os.environ.get("IMAGEN_EDU_BROWSER_ALT", "") == "required"

SOURCES = [*(ROOT / "book").glob("*.md"), *(ROOT / "book").glob("*.ipynb"),
           ROOT / "_toc.yml", ROOT / "_config.yml", ROOT / "references.bib"]


def _why_not() -> str | None:
    reason = browser.stale_reason(HTML, SOURCES)
    if reason is None and browser.find_chromium() is None:
        reason = "no Chromium found (apt-get install -y chromium, or set $CHROMIUM)"
    return reason


REASON = _why_not()
PAGES = browser.toc_pages(HTML) if REASON is None else []


def test_book_is_built_and_browser_available():
    if REASON is not None:
        if REQUIRED:
            pytest.fail(REASON)
        pytest.skip(REASON)
    assert PAGES and PAGES[0].endswith(".html"), f"no pages found in the sidebar of {HTML}"


@pytest.fixture(scope="module")
def results():
    return browser.check_book(HTML, SCREENSHOTS, pages=PAGES,
                               workers=int(os.environ.get("IMAGEN_EDU_BROWSER_WORKERS", "2")))


@pytest.mark.parametrize("page", PAGES or [pytest.param(None, marks=pytest.mark.skip(reason=str(REASON)))])
def test_page_renders(page, results):
    r = results[page]
    problems = r.problems()
    assert not problems, f"{page} (screenshot {r.screenshot}):\n  " + "\n  ".join(problems)
    assert r.screenshot is not None and r.screenshot.is_file() and r.screenshot.stat().st_size > 0


@pytest.mark.parametrize("page", PAGES or [pytest.param(None, marks=pytest.mark.skip(reason=str(REASON)))])
def test_page_images_have_alt_text(page, results):
    missing = results[page].images_without_alt()
    if missing and not ALT_REQUIRED:
        pytest.skip(f"{len(missing)} images without descriptive alt text (set the cell metadata "
                    f'{{"mystnb": {{"image": {{"alt": "..."}}}}}}; IMAGEN_EDU_BROWSER_ALT=required enforces this)')
    assert not missing, f"{page}: images without descriptive alt text: {missing}"


QUIZ_PAGES = [pg for pg in PAGES if pg.startswith("book/") and Path(pg).stem in CHAPTERS]


@pytest.mark.parametrize("page", QUIZ_PAGES or [pytest.param(None, marks=pytest.mark.skip(reason=str(REASON)))])
def test_quick_checks_render_and_answer(page, results):
    """Each chapter shows its quick checks in the page (jupyterquiz, offline): at least two
    questions rendered, and clicking the right answer of the first multiple-choice question shows
    its 'correct' feedback (tests/browser/test_quiz.py covers a page whose MathJax is still loading)."""
    probe = results[page].probe
    assert probe.get("quiz_questions", 0) >= 2, f"{page}: {probe.get('quiz_questions')} quick checks rendered"
    if probe.get("quiz_click_checked") is not None:  # pages whose questions are all numeric have no button
        assert probe["quiz_click_checked"], f"{page}: clicking the right answer showed no 'correct' feedback"
