"""The quick checks (``guide.show_quiz``) in a page whose MathJax has not loaded yet.

Sphinx writes MathJax's configuration into ``window.MathJax`` before MathJax itself arrives.
jupyterquiz's own script then took the configuration object for a loaded MathJax and read its
missing version: "Cannot read properties of undefined (reading '0')", on pages where the quiz ran
first. Here the page keeps MathJax unloaded for good, so the race is decided against the quiz
every time: jupyterquiz's raw output must throw (the check can fail) and ``show_quiz``'s must not,
while rendering every question and checking a clicked answer.

Needs Chromium (skips without it); does not need the built book. A few seconds.
"""

import pytest

from imagen_edu.classroom import guide
from support import browser

pytestmark = pytest.mark.skipif(browser.find_chromium() is None,
                                reason="no Chromium found (apt-get install -y chromium, or set $CHROMIUM)")

NAME = "03_ddpm"
PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>Quick checks &#8212; Test book</title>
<script>window.MathJax = {{tex: {{inlineMath: [["$", "$"], ["\\\\(", "\\\\)"]]}}}};</script></head>
<body><article><h1>Quick checks</h1><div class="cell_output">{html}
<script type="text/javascript">{js}</script></div></article></body></html>"""


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("quiz")
    html, js = guide.quiz_outputs(NAME)
    (root / "guarded.html").write_text(PAGE.format(html=html, js=js), encoding="utf-8")
    html, js = guide.jupyterquiz_outputs(NAME)  # as jupyterquiz writes it
    (root / "raw.html").write_text(PAGE.format(html=html, js=js), encoding="utf-8")
    return browser.check_book(root, pages=["guarded.html", "raw.html"], workers=2)


def test_raw_jupyterquiz_throws_before_mathjax_has_loaded(results):
    errors = results["raw.html"].probe["js_errors"]
    assert any("reading '0'" in e for e in errors), errors


def test_show_quiz_renders_and_checks_an_answer_before_mathjax_has_loaded(results):
    r = results["guarded.html"]
    assert r.problems() == [], r.problems()
    assert r.probe["quiz_questions"] == 3
    assert r.probe["quiz_click_checked"] is True
