"""The page checker itself, on a tiny hand-written site: it must pass a good page and catch each
kind of broken page (missing image, traceback, untypeset maths, unrendered widget, wrong title).

Needs Chromium (skips without it); does not need the built book. A few seconds.
"""

import io
import os

import pytest
from PIL import Image

from support import browser

pytestmark = pytest.mark.skipif(browser.find_chromium() is None,
                                reason="no Chromium found (apt-get install -y chromium, or set $CHROMIUM)")

PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>{title} &#8212; Test book</title></head>
<body><nav class="bd-docs-nav bd-links"><a class="reference internal" href="good.html">Good</a>
<a class="reference internal" href="bad.html#section">Bad</a></nav>
<article><h1>{h1}<a class="headerlink" href="#">#</a></h1>{body}</article></body></html>"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    buf = io.BytesIO()
    Image.new("RGB", (8, 4), "red").save(buf, format="PNG")
    (root / "red.png").write_bytes(buf.getvalue())
    (root / "index.html").write_text('<meta http-equiv="refresh" content="0; url=good.html" />')
    (root / "good.html").write_text(PAGE.format(title="Good page", h1="Good page", body=(
        '<p>A figure:</p><img src="red.png" alt="a red rectangle">'
        '<div class="cell_output"><div class="output stream"><pre>loss 0.1</pre></div></div>')))
    (root / "bad.html").write_text(PAGE.format(title="Something else", h1="Bad page", body=(
        '<img src="missing.png" alt="a picture that is not there">'
        '<p>Raw maths: <span class="math notranslate nohighlight">\\(x_t\\)</span></p>'
        '<div class="cell_output"><div class="output traceback"><pre>Traceback (most recent call last):\n'
        'ValueError: boom</pre></div><div class="output stderr"><pre>RuntimeError: bad</pre></div></div>'
        '<div class="cell_output"><script type="application/vnd.jupyter.widget-view+json">'
        '{"version_major": 2, "version_minor": 0, "model_id": "abc"}</script></div>')))
    return root


def test_toc_pages_reads_the_sidebar(site):
    assert browser.toc_pages(site) == ["good.html", "bad.html"]


def test_checker_passes_a_good_page_and_catches_a_bad_one(site, tmp_path):
    results = browser.check_book(site, tmp_path / "shots", workers=2)
    good, bad = results["good.html"], results["bad.html"]
    assert good.problems() == [], good.problems()
    assert good.probe["images"] and all(im["ok"] for im in good.probe["images"])
    assert good.screenshot.is_file() and good.screenshot.stat().st_size > 0

    text = "\n".join(bad.problems())
    for expected in ("does not contain the heading", "image did not load", "failed to load",
                     "a Python traceback is shown", "error output is shown",
                     "0 of 1 maths elements were typeset", "raw TeX shown as text",
                     "0 of 1 widgets rendered"):
        assert expected in text, f"missing {expected!r} in:\n{text}"


def test_stale_reason(tmp_path):
    assert "no built book" in browser.stale_reason(tmp_path / "html", [])
    html = tmp_path / "html"
    html.mkdir()
    (html / "index.html").write_text("x")
    (html / ".buildinfo").write_text("x")
    src = tmp_path / "chapter.md"
    src.write_text("# new")
    os.utime(html / ".buildinfo", (0, 0))
    assert "older than" in browser.stale_reason(html, [src])
    os.utime(src, (0, 0))
    assert browser.stale_reason(html, [src]) is None
