"""Open the built book in headless Chromium and check what a reader sees (used by tests/browser).

The book's HTML is served on 127.0.0.1 by a throwaway ``http.server`` in a thread. Every HTML
response gets a small probe script injected at the top of ``<head>``. After the page has loaded,
MathJax has finished and the saved ipywidgets have been rendered (or a deadline passed), the probe
writes what it found as JSON into a hidden ``<pre id="imagen-edu-probe">``. Chromium is driven
from its command line (``--headless --dump-dom --screenshot``; no Playwright, no WebDriver), one
process per page, with every host name other than 127.0.0.1 unresolvable so that the page must
work offline.

Usage outside pytest::

    python tests/support/browser.py _build/html          # prints one line per page

Nothing here touches the network.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import html
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urljoin, urlsplit

PROBE_ID = "imagen-edu-probe"

# JavaScript errors that come from the book toolchain itself, harmless to readers, and not ours to fix:
# sphinx-thebe 0.3.1 (loaded by jupyter-book 1.0 even with Thebe off) writes its inline
# `const THEBE_JS_URL = ...` script twice into every page.
KNOWN_JS_NOISE = ("Identifier 'THEBE_JS_URL' has already been declared",)

# Runs first thing in <head>: records script/image/stylesheet load failures and JavaScript errors,
# then, after window load, waits for MathJax and the widget manager and reports.
PROBE_JS = r"""
(function () {
  var errors = [], failed = [];
  window.addEventListener("error", function (e) {
    var t = e.target;
    if (t && t !== window && (t.src || t.href)) { failed.push(t.src || t.href); }
    else { errors.push(String(e.message || e)); }
  }, true);
  window.addEventListener("unhandledrejection", function (e) {
    errors.push("unhandled rejection: " + String(e.reason && (e.reason.stack || e.reason)));
  });
  function outsideCode(root) {
    var out = [], w = document.createTreeWalker(root, NodeFilter.SHOW_TEXT, null);
    while (w.nextNode()) {
      var n = w.currentNode, p = n.parentElement;
      if (p && !p.closest("pre, code, script, style, mjx-container, .highlight, #__PROBE_ID__")) out.push(n.data);
    }
    return out.join(" ");
  }
  function report(timedOut) {
    var main = document.querySelector("article") || document.querySelector("main") || document.body;
    var h1 = main.querySelector("h1");
    var maths = Array.prototype.slice.call(document.querySelectorAll(".math"));
    var views = Array.prototype.slice.call(
      document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]'));
    var rendered = views.filter(function (s) {
      var prev = s.previousElementSibling;
      return prev && prev.classList.contains("widget-subarea") && prev.querySelector(".jupyter-widgets");
    });
    var imgs = Array.prototype.slice.call(document.images).map(function (im) {
      return {src: im.currentSrc || im.src, alt: im.alt, ok: im.complete && im.naturalWidth > 0,
              width: im.naturalWidth};
    });
    var stderr = Array.prototype.slice.call(
      document.querySelectorAll(".output.stderr, .output.traceback, .output.error, .stderr"))
      .map(function (e) { return e.innerText; });
    var text = main.innerText || "";
    var free = outsideCode(main);
    var resources = performance.getEntriesByType("resource").map(function (r) { return r.name; });
    // jupyterquiz quick checks: how many questions rendered, and does answering one check it?
    var quizQns = document.querySelectorAll(".MultipleChoiceQn, .ManyChoiceQn, .NumericQn").length;
    // (null where a page has no multiple-choice question): click the right answer of the first
    var quizClick = null, right = document.querySelector('.MCButton[data-correct="true"]');
    if (right) {
      right.click();
      var fbs = Array.prototype.slice.call(document.querySelectorAll(".Feedback"));
      quizClick = fbs.some(function (f) { return f.classList.contains("correct") && f.innerText.trim().length > 0; });
    }
    var pre = document.createElement("pre");
    pre.id = "__PROBE_ID__";
    pre.style.display = "none";
    pre.textContent = JSON.stringify({
      timed_out: timedOut,
      title: document.title,
      h1: h1 ? h1.innerText.replace(/[#\u00b6]\s*$/, "").trim() : "",
      math_total: maths.length,
      math_typeset: maths.filter(function (m) { return m.querySelector("mjx-container"); }).length,
      math_errors: document.querySelectorAll("mjx-merror").length,
      mathjax_loaded: !!(window.MathJax && window.MathJax.startup),
      raw_tex: (free.match(/\$\$|\\\(|\\\[|\\frac|\\begin\{/g) || []).slice(0, 5),
      widget_views: views.length,
      widgets_rendered: rendered.length,
      widget_errors: (text.match(/Error displaying widget[^\n]*/g) || []).slice(0, 5),
      images: imgs,
      traceback: Array.prototype.some.call(document.querySelectorAll(".cell_output, .output"), function (e) {
        return (e.textContent || "").indexOf("Traceback (most recent call last)") >= 0; }),
      stderr_errors: stderr.filter(function (s) { return /Error/.test(s); }).map(function (s) { return s.slice(0, 300); }),
      quiz_questions: quizQns,
      quiz_click_checked: quizClick,
      js_errors: errors.slice(0, 10),
      failed_loads: failed.slice(0, 20),
      external: resources.filter(function (u) { return !/^(https?:\/\/127\.0\.0\.1[:\/]|data:|blob:)/.test(u); }).slice(0, 20)
    });
    document.body.appendChild(pre);
  }
  window.addEventListener("load", function () {
    Array.prototype.forEach.call(document.images, function (im) { im.loading = "eager"; });
    var start = Date.now(), mathDone = false;
    if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
      MathJax.startup.promise.then(function () { mathDone = true; }, function () { mathDone = true; });
    } else { mathDone = true; }
    (function poll() {
      var views = document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]').length;
      var done = document.querySelectorAll(".widget-subarea .jupyter-widgets").length;
      var imgs = Array.prototype.every.call(document.images, function (im) { return im.complete; });
      var ready = mathDone && imgs && (views === 0 || document.querySelectorAll(".widget-subarea").length >= views && done > 0);
      if (ready) { setTimeout(function () { report(false); }, 300); }
      else if (Date.now() - start > __DEADLINE_MS__) { report(true); }
      else { setTimeout(poll, 100); }
    })();
  });
})();
"""


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable ($CHROMIUM first), or None."""
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome", "chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


class _LinkParser(HTMLParser):
    """Collects internal links of the left sidebar (the book's table of contents)."""

    def __init__(self):
        super().__init__()
        self.depth = 0  # >0 while inside the sidebar <nav>
        self.links: list[str] = []
        self.refresh: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "meta" and (a.get("http-equiv") or "").lower() == "refresh":
            m = re.search(r"url=(.+)", a.get("content") or "", re.I)
            self.refresh = m.group(1).strip() if m else None
        if tag == "nav":
            if self.depth or "bd-docs-nav" in (a.get("class") or ""):
                self.depth += 1
        elif self.depth and tag == "a" and "internal" in (a.get("class") or ""):
            self.links.append(a.get("href") or "")

    def handle_endtag(self, tag):
        if tag == "nav" and self.depth:
            self.depth -= 1


def toc_pages(html_dir: str | os.PathLike) -> list[str]:
    """Pages of the built book, root first, as paths relative to ``html_dir`` (e.g. ``book/intro.html``).

    Read from the built HTML itself: ``index.html`` redirects to the root page, whose sidebar lists
    every page of the table of contents.
    """
    html_dir = Path(html_dir)
    p = _LinkParser()
    p.feed((html_dir / "index.html").read_text(encoding="utf8"))
    root = p.refresh or "index.html"
    p = _LinkParser()
    p.feed((html_dir / root).read_text(encoding="utf8"))
    pages = [root]
    for href in p.links:
        target = urlsplit(urljoin("http://h/" + root, href)).path.lstrip("/")
        if target and target not in pages and (html_dir / target).is_file():
            pages.append(target)
    return pages


def stale_reason(html_dir: str | os.PathLike, sources: list[Path]) -> str | None:
    """Why ``html_dir`` is not a usable build of ``sources`` (absent, or older than a source), or None."""
    stamp = Path(html_dir) / ".buildinfo"
    if not stamp.is_file() or not (Path(html_dir) / "index.html").is_file():
        return f"no built book in {html_dir} (build it first: jupyter-book build .)"
    built = stamp.stat().st_mtime
    newer = [s for s in sources if s.is_file() and s.stat().st_mtime > built]
    if newer:
        return f"the built book in {html_dir} is older than {newer[0]} (rebuild it: jupyter-book build .)"
    return None


class _Handler(SimpleHTTPRequestHandler):
    probe = b""

    def log_message(self, *args):  # keep pytest output clean
        pass

    def send_head(self):
        path = Path(self.translate_path(self.path))
        if path.is_dir():
            path = path / "index.html"
        if path.suffix != ".html" or not path.is_file():
            return super().send_head()
        body = path.read_bytes()
        body = re.sub(rb"(<head[^>]*>)", lambda m: m.group(1) + self.probe, body, count=1)
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return io.BytesIO(body)


@contextlib.contextmanager
def serve(html_dir: str | os.PathLike, deadline_ms: int = 15000):
    """Serve ``html_dir`` on 127.0.0.1 (a free port) with the probe injected; yields the base URL."""
    js = PROBE_JS.replace("__PROBE_ID__", PROBE_ID).replace("__DEADLINE_MS__", str(int(deadline_ms)))
    handler = type("Handler", (_Handler,), {"probe": b"<script>" + js.encode() + b"</script>"})
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(html_dir)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class PageResult:
    page: str
    probe: dict = field(default_factory=dict)
    screenshot: Path | None = None
    error: str = ""  # why there is no probe (Chromium failed, probe missing)

    def problems(self) -> list[str]:
        """Everything a reader would notice, as sentences; empty when the page is fine."""
        if self.error:
            return [self.error]
        p, out = self.probe, []
        h1 = " ".join(p["h1"].split())
        if not p["title"].strip() or not h1:
            out.append(f"no title or no <h1> (title {p['title']!r}, h1 {h1!r})")
        elif h1 not in " ".join(p["title"].split()):
            out.append(f"the <title> {p['title']!r} does not contain the heading {h1!r}")
        if p["timed_out"]:
            out.append("the page did not finish rendering (MathJax, images or widgets) before the deadline")
        if p["traceback"]:
            out.append("a Python traceback is shown")
        out += [f"error output is shown: {s!r}" for s in p["stderr_errors"]]
        out += [f"JavaScript error: {e}" for e in p["js_errors"] if not any(k in e for k in KNOWN_JS_NOISE)]
        out += [f"failed to load: {u}" for u in p["failed_loads"]]
        out += [f"requested a non-local resource (the book must work offline): {u}" for u in p["external"]]
        out += [f"image did not load: {im['src']}" for im in p["images"] if not im["ok"]]
        if p["math_total"] and not p["mathjax_loaded"]:
            out.append(f"{p['math_total']} maths elements but MathJax did not load")
        if p["math_typeset"] < p["math_total"]:
            out.append(f"only {p['math_typeset']} of {p['math_total']} maths elements were typeset")
        if p["math_errors"]:
            out.append(f"{p['math_errors']} TeX errors (mjx-merror)")
        if p["raw_tex"]:
            out.append(f"raw TeX shown as text: {p['raw_tex']}")
        if p["widgets_rendered"] < p["widget_views"]:
            out.append(f"only {p['widgets_rendered']} of {p['widget_views']} widgets rendered")
        out += [f"widget error: {e}" for e in p["widget_errors"]]
        return out

    def images_without_alt(self) -> list[str]:
        """Images whose alt text is missing or just a file name (myst-nb's default for outputs).

        A notebook cell sets it with the metadata ``{"mystnb": {"image": {"alt": "..."}}}``.
        """
        return [im["src"] for im in self.probe.get("images", [])
                if not im["alt"].strip() or re.search(r"(^|/)[^ ]+\.(png|jpe?g|svg|gif)$", im["alt"].strip())]


def check_page(base_url: str, page: str, chromium: str, screenshot_dir: Path | None = None,
               window: tuple[int, int] = (1280, 2400), budget_ms: int = 20000,
               timeout_s: float = 90) -> PageResult:
    """Open one page in headless Chromium; return the probe's findings and save a screenshot."""
    shot = None
    with tempfile.TemporaryDirectory(prefix="imagen-edu-chromium-") as profile:
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
               "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}",
               # every host but this machine is unresolvable: the page must work offline
               "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
               f"--window-size={window[0]},{window[1]}", f"--virtual-time-budget={budget_ms}",
               "--dump-dom"]
        if screenshot_dir is not None:
            screenshot_dir.mkdir(parents=True, exist_ok=True)
            shot = screenshot_dir / (page.replace("/", "__").removesuffix(".html") + ".png")
            cmd.append(f"--screenshot={shot}")
        cmd.append(base_url + page)
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return PageResult(page, error=f"Chromium did not finish within {timeout_s} s")
    m = re.search(rf'<pre id="{PROBE_ID}"[^>]*>(.*?)</pre>', run.stdout, re.S)
    if not m:
        tail = (run.stderr or "").strip().splitlines()[-3:]
        return PageResult(page, screenshot=shot,
                          error=f"no probe result in the dumped DOM (Chromium exit {run.returncode}): {tail}")
    return PageResult(page, probe=json.loads(html.unescape(m.group(1))), screenshot=shot)


def check_book(html_dir: str | os.PathLike, screenshot_dir: str | os.PathLike | None = None,
               pages: list[str] | None = None, workers: int = 2, chromium: str | None = None) -> dict[str, PageResult]:
    """Check every page of the built book (``toc_pages``) in parallel; returns ``{page: PageResult}``."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("no Chromium found (apt-get install -y chromium, or set $CHROMIUM)")
    pages = pages or toc_pages(html_dir)
    shots = Path(screenshot_dir) if screenshot_dir is not None else None
    with serve(html_dir) as base, ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(lambda pg: check_page(base, pg, chromium, shots), pages))
    return {r.page: r for r in results}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("html_dir", nargs="?", default="_build/html")
    ap.add_argument("--screenshots", default=None, help="folder for one PNG per page")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    t0 = time.time()
    results = check_book(args.html_dir, args.screenshots, workers=args.workers)
    bad = 0
    for page, r in results.items():
        probs = r.problems()
        bad += bool(probs)
        p = r.probe
        summary = (f"maths {p['math_typeset']}/{p['math_total']}, widgets {p['widgets_rendered']}/{p['widget_views']}, "
                   f"images {sum(i['ok'] for i in p['images'])}/{len(p['images'])}") if p else ""
        if p:
            summary += f", {len(r.images_without_alt())} without alt text"
        print(f"{'FAIL' if probs else 'ok  '} {page}: {summary}")
        for s in probs:
            print(f"      {s}")
    print(f"{len(results)} pages, {bad} with problems, {time.time() - t0:.1f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
