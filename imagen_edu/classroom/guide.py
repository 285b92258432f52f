"""The generated parts of the instructor's guide pages (one page per chapter under ``book/instructor/``).

Each guide page is hand-written, except one block between two markers that this module writes
from the measured cell times (``data/benchmarks/cell_times.json``, see :mod:`.timing`), the
chapter's exercises (:mod:`.chapters`) and the link to its slide deck::

    <!-- classroom:begin -->
    ... generated: what to run before class, the exercises, the slides ...
    <!-- classroom:end -->

The README's time table (between ``<!-- times:begin -->`` and ``<!-- times:end -->``) is
generated from the same file. Regenerate every page and the README after new measurements with
``python -m imagen_edu.classroom.guide``
(``--check`` only reports stale pages). The quick checks of a page are jupyterquiz questions in
``imagen_edu/classroom/quick_checks/`` (one JSON file per chapter); a chapter page and its guide
page show them with :func:`show_quiz`.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from unittest import mock

from . import chapters, timing

GUIDE = chapters.BOOK / "instructor"
OUTLINE = (GUIDE / "outline").with_suffix(".md")
QUIZZES = Path(__file__).resolve().parent / "quick_checks"
BEGIN, END = "<!-- classroom:begin -->", "<!-- classroom:end -->"
README = chapters.ROOT / "README.md"
TIMES_BEGIN, TIMES_END = "<!-- times:begin -->", "<!-- times:end -->"
PROFILES = ("cpu", "gpu", "ci")


def page_path(name: str) -> Path:
    """The guide page of a chapter."""
    return GUIDE / f"{name}.md"


def quiz_path(name: str) -> Path:
    """The quick checks (jupyterquiz JSON) of a chapter."""
    return QUIZZES / f"{name}.json"


# jupyterquiz's scripts read ``MathJax.version`` whenever a global ``MathJax`` exists. Until MathJax
# has loaded, that global is only the page's configuration object (no version), so a quiz rendered
# before MathJax finished loading threw "Cannot read properties of undefined (reading '0')", and so
# did every click on an answer. The guard below makes those branches wait for a loaded MathJax;
# MathJax typesets the whole page itself when it starts, quiz included.
_MATHJAX_CHECK = re.compile(r"typeof MathJax\s*!==?\s*'undefined'")
_MATHJAX_LOADED = "(typeof MathJax != 'undefined' && typeof MathJax.version == 'string')"


def jupyterquiz_outputs(name: str) -> tuple[str, str]:
    """jupyterquiz's own ``display_quiz`` output for :func:`quiz_path` ``(name)``, as it is:
    ``(html, javascript)``."""
    path = quiz_path(name)
    if not path.is_file():
        raise ValueError(f"no quick checks for {name!r}: expected {path}")
    import jupyterquiz.dynamic.display as jq

    shown: list = []
    with mock.patch.object(jq, "display", shown.append):
        jq.display_quiz(str(path))
    kinds = [type(o).__name__ for o in shown]
    if kinds != ["HTML", "Javascript"]:
        raise RuntimeError(f"jupyterquiz's display_quiz showed {kinds}, expected ['HTML', 'Javascript']")
    return shown[0].data, shown[1].data


def quiz_outputs(name: str) -> tuple[str, str]:
    """The HTML and the JavaScript that show a chapter's quick checks, MathJax-safe.

    Returns :func:`jupyterquiz_outputs` with every ``typeof MathJax != 'undefined'`` test in the
    script strengthened to "MathJax has loaded" (see ``_MATHJAX_LOADED``).
    """
    html, js = jupyterquiz_outputs(name)
    js, n = _MATHJAX_CHECK.subn(_MATHJAX_LOADED, js)
    if n == 0 or "MathJax.version" not in js:
        raise RuntimeError("jupyterquiz's script has changed: no MathJax test found to guard")
    return html, js


def show_quiz(name: str) -> None:
    """Show a chapter's quick checks in a notebook or a built page (see :func:`quiz_outputs`)."""
    from IPython.display import HTML, Javascript, display

    html, js = quiz_outputs(name)
    display(HTML(html))
    display(Javascript(js))


def _times(name: str, data: dict) -> list[str]:
    out = ["**Run before class.** Every cell that took more than "
           f"{timing.SLOW_S:.0f} s, measured by `python -m imagen_edu.classroom times`:", ""]
    out += ["| profile | whole chapter | cells over 30 s |", "|---|---|---|"]
    slow_rows, measured = [], 0
    for profile in PROFILES:
        entry = data.get(profile, {}).get(name)
        if entry is None:
            out.append(f"| `{profile}` | not measured yet | run `python -m imagen_edu.classroom times "
                       f"--profile {profile} {name}` |")
            continue
        measured += 1
        slow = timing.slow_cells(entry)
        out.append(f"| `{profile}` | {entry['total_s']:.0f} s | {len(slow) or 'none'} |")
        slow_rows += [(profile, *c) for c in slow]
    if slow_rows:
        out += ["", "| profile | cell (index from 0) | time | first line |", "|---|---|---|---|"]
        out += [f"| `{p}` | {i} | {s:.0f} s | `{line.replace('|', '/')[:70]}` |"
                for p, i, s, line in slow_rows]
        out += ["", "Run these cells (and the cells above them) before the session, keep the kernel "
                "running, and run the rest live."]
    elif measured:
        out += ["", "No measured cell takes more than 30 s: the whole chapter can run live."]
    else:
        out += ["", "Until this chapter is measured, run it once under the class's profile before the "
                "session (the chapter's own *Time* section gives the rough cost) and note the slow cells."]
    return out


def block(name: str, data: dict | None = None) -> str:
    """The generated block of a chapter's guide page (between the markers, markers included)."""
    data = timing.load() if data is None else data
    exs = chapters.exercises(chapters.read(name))
    lines = [BEGIN, "", *_times(name, data), ""]
    if exs:
        lines += ["**The chapter's exercises** (each checked by `imagen_edu.exercises`, graded by "
                  "the same check):", ""]
        lines += [f"{k}. `{e.fn}`, checked by `{e.module}.{e.check}`" for k, e in enumerate(exs, 1)]
    else:
        lines += ["This chapter has no checked exercises; its questions are the discussion "
                  "questions above."]
    lines += ["", f'**Slides:** <a href="../../slides/{name}.slides.html">the deck of this chapter</a> '
              "(built with the book; arrow keys move, `s` opens the speaker view).", "", END]
    return "\n".join(lines)


def render_page(text: str, name: str, data: dict | None = None) -> str:
    """``text`` with its generated block replaced by the current one."""
    pat = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.DOTALL)
    if not pat.search(text):
        raise ValueError(f"{page_path(name)} has no {BEGIN} ... {END} block")
    return pat.sub(lambda _: block(name, data), text, count=1)


def chapter_title(name: str) -> str:
    """The chapter's own title, from the first heading of its notebook (``5a. Text conditioning ...``)."""
    first = chapters.read(name).cells[0].source.splitlines()[0]
    return first.lstrip("#").strip()


def render_readme(text: str, data: dict | None = None) -> str:
    """The README with its time table (between the times markers) rebuilt from the measured times."""
    pat = re.compile(re.escape(TIMES_BEGIN) + r".*?" + re.escape(TIMES_END), re.DOTALL)
    if not pat.search(text):
        raise ValueError(f"{README} has no {TIMES_BEGIN} ... {TIMES_END} block")
    table = timing.readme_table(chapters.CHAPTERS, {n: chapter_title(n) for n in chapters.CHAPTERS}, data)
    return pat.sub(lambda _: f"{TIMES_BEGIN}\n{table}\n{TIMES_END}", text, count=1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m imagen_edu.classroom.guide", description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only report stale pages (exit 1 if any)")
    args = ap.parse_args(argv)
    data, stale = timing.load(), []
    pages = [(page_path(n), lambda t, n=n: render_page(t, n, data)) for n in chapters.CHAPTERS]
    for p, render in pages + [(README, lambda t: render_readme(t, data))]:
        old = p.read_text(encoding="utf-8")
        new = render(old)
        if new != old:
            stale.append(p)
            if not args.check:
                p.write_text(new, encoding="utf-8")
    print(("stale: " if args.check else "rewrote: ") + (", ".join(map(str, stale)) or "nothing"))
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
