"""The classroom kit (imagen_edu.classroom): student edition, autograding, slides rule, cell times.

The slow tests share one student edition of every chapter (an nbgrader course folder) and grade
one chapter, 05_thresholding, the quickest chapter with exercises (about 10 s under ``ci``).
The browser checks of the slide decks are in tests/browser/test_slides.py.
"""

import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from imagen_edu import exercises
from imagen_edu.classroom import chapters, grading, guide, slides, student, timing
from test_book_voice import FORBIDDEN

QUICK = "05_thresholding"  # the quickest chapter with exercises under ci


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """The student edition of every chapter, as ``python -m imagen_edu.classroom student`` writes it."""
    out = tmp_path_factory.mktemp("course")
    student.build(out)
    return out


def _release(course, name):
    return nbformat.read(course / "release" / name / f"{name}.ipynb", as_version=4)


def _text(nb) -> str:
    return "\n".join(chapters.source(c) for c in nb.cells)


def test_every_chapter_has_a_student_edition_with_its_exercises(course):
    """Each exercise cell is kept (the student's def with a stub) and its check kept as the grader."""
    for name in chapters.CHAPTERS:
        book, nb = chapters.read(name), _release(course, name)
        want = chapters.exercises(book)
        answers = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")]
        graders = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
        assert len(answers) == len(graders) == len(want), name
        for ex, a, g in zip(want, answers, graders):
            assert f"def {ex.fn}(" in a.source and student.STUB in a.source, (name, ex.fn)
            assert g.source.strip() == f"{ex.module}.{ex.check}({ex.fn});", (name, g.source)
            assert g.metadata["nbgrader"]["points"] == 1 and g.metadata["nbgrader"]["locked"]


def test_student_edition_contains_no_solution_code(course):
    """Detail: solutions removed. No solution cell, no `viz.show_source(chNN.solution_`, no
    reference solution's source, no nbgrader solution region or hidden test, in any chapter."""
    mods = {n: importlib.import_module(f"imagen_edu.exercises.{n}")
            for n in ("ch01", "ch_data", "ch02", "ch02b", "ch03", "ch04", "ch05", "ch06")}
    sources = [textwrap.dedent(inspect.getsource(f)) for m in mods.values()
               for _, f in exercises.solution_functions(m)]
    assert len(sources) >= 30
    for name in chapters.CHAPTERS:
        text = _text(_release(course, name))
        assert "# Solution:" not in text and ".solution_" not in text, name
        assert not re.search(r"show_source\(\s*\w+\.solution_", text), name
        assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text, name
        for src in sources:
            assert src not in text, f"{name} contains a reference solution:\n{src[:200]}"
        assert not any(chapters.is_solution_cell(c) for c in _release(course, name).cells)


def test_student_notebook_runs_with_every_exercise_not_attempted(course):
    """Detail: the student edition runs top to bottom under ci with no error, and each exercise's
    check reports NOT ATTEMPTED YET (the stub raises NotImplementedError), none PASS or FAIL."""
    nb = _release(course, QUICK)
    os.environ["IMAGEN_EDU_PROFILE"] = "ci"  # the kernel inherits it; the module runs under ci
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(course / "release" / QUICK)}}).execute()
    outs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outs if o.output_type == "error"]
    graded = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
    for cell, ex in zip(graded, chapters.exercises(chapters.read(QUICK))):
        said = "".join(o.get("text", "") for o in cell.outputs)
        assert said.startswith("NOT ATTEMPTED YET: "), said
        assert "PASS" not in said and "FAIL" not in said


def test_grading_gives_full_marks_to_the_reference_and_takes_the_mark_of_a_wrong_answer(course, tmp_path):
    """Detail: autograding. nbgrader runs each submission with the hidden asserts put back: the
    reference solutions score every point; a wrong x0_from_v loses exactly its point."""
    rel = course / "release" / QUICK / f"{QUICK}.ipynb"
    grading.reference_submission(rel, tmp_path / "sub" / "ada" / f"{QUICK}.ipynb")
    grading.reference_submission(rel, tmp_path / "sub" / "bo" / f"{QUICK}.ipynb", wrong="x0_from_v")
    os.environ["IMAGEN_EDU_PROFILE"] = "ci"
    scores = grading.grade(tmp_path / "sub", course, timeout=600)
    by = {(s.student, s.exercise): s for s in scores}
    n = len(chapters.exercises(chapters.read(QUICK)))
    assert sum(s.score for s in scores if s.student == "ada") == n
    assert all(s.max_score == 1 for s in scores) and len(scores) == 2 * n
    assert by[("bo", "check_x0_from_v")].score == 0
    assert by[("bo", "check_dynamic_threshold")].score == 1
    table = grading.table(scores)
    rows = [ln.split()[:3] for ln in table.splitlines()]
    assert ["ada", QUICK, f"{n}/{n}"] in rows and ["bo", QUICK, f"{n - 1}/{n}"] in rows


def test_answer_cell_handles_both_stub_styles_and_commented_checks():
    """The exercise cells of chapters 3 (`...  # your code here`) and 4-6 (check commented out)
    become an answer cell with a solution region and an uncommented grader cell."""
    for src in ('def my_f(a, b=2):\n    ...  # your code here\n\n\nch03.check_f(my_f);',
                'def my_f(a, b=2):\n    # your code here\n    raise NotImplementedError\n\n# ch03.check_f(my_f)'):
        cell = nbformat.v4.new_code_cell(src)
        ex = chapters.exercise_in(cell, 0)
        assert (ex.module, ex.check, ex.fn, ex.args) == ("ch03", "check_f", "my_f", ["a", "b"])
        a = student.answer_cell(cell, ex)
        assert "check_f" not in a.source and "return ch03.solution_f(a, b)" in a.source
        assert "    ### BEGIN SOLUTION" in a.source and "    ### END SOLUTION" in a.source
        assert student.grader_cell(ex).source.startswith("ch03.check_f(my_f);\n")
    assert chapters.exercise_in(nbformat.v4.new_code_cell("x = 1"), 0) is None
    assert chapters.is_solution_cell(nbformat.v4.new_code_cell("# Solution: x\nviz.show_source(ch01.solution_a)"))


def test_slide_rule():
    """The documented rule: '#'/'##' start a slide, '###' and display maths a sub-slide, set-up
    code before the first section and solution cells are skipped, other code is a fragment, long
    code shows its output only, and MyST roles become plain Markdown."""
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    nb = nbformat.v4.new_notebook(cells=[
        md("# 1. Title"), code("import x"), md("## Section"), md("Text {cite:p}`a2020,b2021`."),
        md("$$\na = b\n$$ (ch1-eq-a)\n\nsee {eq}`ch1-eq-a` and {doc}`The page <05_guidance>`"),
        md("### Detail"), code("y = 1"), code("\n".join(["z = 1"] * 30)),
        code("# Solution: the reference\nviz.show_source(ch01.solution_a)")])
    out = slides.slide_notebook(nb)
    types = [c.metadata["slideshow"]["slide_type"] for c in out.cells]
    assert types == ["slide", "skip", "slide", "-", "subslide", "subslide", "fragment", "fragment", "skip"]
    assert out.metadata["title"] == "1. Title"
    assert out.cells[3].source == "Text [a2020, b2021]."
    assert "$$ (" not in out.cells[4].source and "Eq. (ch1-eq-a)" in out.cells[4].source
    assert "The page" in out.cells[4].source and "<05_guidance>" not in out.cells[4].source
    assert "slides-output-only" in out.cells[7].metadata["tags"]
    assert "slides-output-only" not in out.cells[6].metadata.get("tags", [])
    assert "slideshow" not in nb.cells[0].metadata  # the book's notebook is not changed


def test_decks_read_the_execution_cache_not_an_unexecuted_copy(tmp_path):
    """The deck of a chapter comes from the build's execution cache (outputs of the chapter's
    current code). A copy in jupyter_execute without outputs (what myst-nb writes there when it
    takes a notebook from the cache) is not an executed notebook; one with outputs is accepted."""
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    name = "01_attention"
    src = chapters.chapter_path(name)
    executed, cache = tmp_path / "jupyter_execute", tmp_path / "cache"
    executed.mkdir()
    nbformat.write(nbformat.read(src, as_version=4), executed / src.name)  # unexecuted copy
    with pytest.raises(FileNotFoundError, match="no executed copy of 01_attention"):
        slides.executed_notebook(name, executed, cache)

    ran = nbformat.read(src, as_version=4)
    first = next(c for c in ran.cells if c.cell_type == "code")
    first.outputs = [nbformat.v4.new_output("stream", name="stdout", text="from the cache\n")]
    db = get_cache(str(cache))
    db.cache_notebook_bundle(CacheBundleIn(ran, db.add_nb_to_project(str(src)).uri), check_validity=False)
    nb = slides.executed_notebook(name, executed, cache)
    assert any(o.get("text") == "from the cache\n" for c in nb.cells if c.cell_type == "code" for o in c.outputs)

    first.outputs = [nbformat.v4.new_output("stream", name="stdout", text="from the copy\n")]
    nbformat.write(ran, executed / src.name)
    nb = slides.executed_notebook(name, executed, tmp_path / "no-cache")
    assert any(o.get("text") == "from the copy\n" for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_slides_link_only_local_assets():
    """The deck loads reveal.js and MathJax from the book's static copies, never from a CDN."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# T\n\n## S\n\n$x$")])
    html, _ = slides.exporter().from_notebook_node(slides.slide_notebook(nb))
    assert 'src="../_static/reveal.js/dist/reveal.js"' in html
    assert 'src="../_static/mathjax/tex-chtml-full.js"' in html
    for cdn in ("unpkg.com/reveal", "cdnjs", "jsdelivr", "require.min.js", "jquery"):
        assert cdn not in html
    assert (slides.STATIC / "reveal.js" / "dist" / "reveal.js").is_file()
    assert (slides.STATIC / "mathjax" / "tex-chtml-full.js").is_file()


def test_cell_times_and_slow_cells():
    """Per-cell wall times come from the kernel's timestamps; cells over 30 s are the slow ones."""
    c = nbformat.v4.new_code_cell("train(model)\nmore()")
    c.metadata["execution"] = {"iopub.execute_input": "2026-01-01T00:00:00.000Z",
                               "shell.execute_reply": "2026-01-01T00:00:42.500Z"}
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# x"), c])
    assert timing.cell_times(nb) == [[1, 42.5, "train(model)"]]
    assert timing.slow_cells({"cells": [[1, 42.5, "a"], [2, 29.9, "b"]]}) == [[1, 42.5, "a"]]


def test_recorded_times_are_well_formed():
    """data/benchmarks/cell_times.json: per profile and chapter, cells as [index, seconds, line]."""
    data = timing.load()
    assert "cpu" in data and data["cpu"], "no cpu times recorded"
    for profile, by_chapter in data.items():
        for name, entry in by_chapter.items():
            assert name in chapters.CHAPTERS
            assert entry["total_s"] > 0 and entry["cells"]
            assert all(isinstance(i, int) and s >= 0 and isinstance(t, str) for i, s, t in entry["cells"])


def test_guide_pages_cover_every_chapter_and_their_tables_are_current():
    """Every chapter has a guide page whose generated tables (times, exercises, slides link) are
    what `python -m imagen_edu.classroom.guide` writes from cell_times.json today."""
    for name in chapters.CHAPTERS:
        page = guide.page_path(name)
        assert page.is_file(), page
        assert guide.render_page(page.read_text(encoding="utf-8"), name) == page.read_text(encoding="utf-8"), \
            f"{page} is stale: run python -m imagen_edu.classroom.guide"
    assert guide.OUTLINE.is_file()


def test_readme_time_table_is_the_measured_one():
    """The README's time table is generated from cell_times.json (the one table of measured times):
    editing a figure by hand, or measuring a chapter without regenerating, makes this fail."""
    text = guide.README.read_text(encoding="utf-8")
    assert guide.render_readme(text) == text, "README.md's time table is stale: run python -m imagen_edu.classroom.guide"
    data = {"cpu": {"01_attention": {"total_s": 276.4, "measured": "2026-12-01T10:00:00Z", "threads": "1",
                                     "cells": [[3, 250.0, "fit()"], [4, 0.2, "x"]]}}}
    table = timing.readme_table(["01_attention", "03_ddpm"], {"01_attention": "1. Attention"}, data)
    assert "| 1. Attention (`01_attention`) | not measured yet | 4 min 36 s | not measured yet |" in table
    assert table.splitlines()[-1].count("not measured yet") == 3  # a missing chapter leaves no sum


def test_every_chapter_shows_its_measured_times_and_quick_checks():
    """Each chapter's Time section reads the measured table (timing.show) rather than typing
    figures, and each chapter shows its own quick checks in the page, before the exercises."""
    for name in chapters.CHAPTERS:
        nb = chapters.read(name)
        srcs = [c.source for c in nb.cells]
        t = next(i for i, s in enumerate(srcs) if s.startswith("## Time"))
        assert srcs[t + 1].strip().endswith(f'timing.show("{name}")'), name
        assert not re.search(r"\d+ ?(s|min|minutes|seconds)\b", srcs[t]), f"{name}: a typed time in its Time section"
        q = next(i for i, s in enumerate(srcs) if s.startswith("## Quick checks"))
        assert f'guide.show_quiz("{name}")' in srcs[q + 1], name
        assert srcs[q + 2].startswith("## Exercises"), name
    data = {"cpu": {"x": {"total_s": 61.0, "measured": "2026-12-01T10:00:00Z", "threads": "1",
                          "cells": [[7, 55.2, "train(a | b)"], [2, 0.1, "import"]]}}}
    table = timing.page_table("x", data)
    assert "| `cpu` | 1 min 01 s | cell 7, 55 s: `train(a / b)` | 2026-12-01 |" in table
    assert "| `gpu` | not measured yet | | |" in table


def test_quiz_outputs_wait_for_a_loaded_mathjax():
    """Every MathJax test in the quick checks' script asks for a loaded MathJax (a version), not
    just the configuration object the page defines first (the browser side: tests/browser/test_quiz.py)."""
    html, js = guide.quiz_outputs("03_ddpm")
    assert "<div id=" in html and "data-shuffleanswers" in html
    tests = re.findall(r"typeof MathJax\s*!==?\s*'undefined'(.{0,40})", js)
    assert len(tests) >= 5
    assert all(t.startswith(" && typeof MathJax.version == 'string'") for t in tests), tests
    with pytest.raises(ValueError, match="no quick checks for 'nope'"):
        guide.quiz_outputs("nope")


def test_quick_checks_are_answerable():
    """Two or three quick checks per chapter, each with exactly one right answer (multiple
    choice) or a value (numeric), and feedback explaining it."""
    for name in chapters.CHAPTERS:
        qs = json.loads(guide.quiz_path(name).read_text(encoding="utf-8"))
        assert 2 <= len(qs) <= 3, name
        for q in qs:
            assert q["question"].strip()
            if q["type"] == "multiple_choice":
                assert sum(a["correct"] for a in q["answers"]) == 1, q["question"]
                assert all(a.get("feedback") for a in q["answers"]), q["question"]
            else:
                assert q["type"] == "numeric"
                right = [a for a in q["answers"] if a.get("correct")]
                assert len(right) == 1 and right[0]["type"] in ("value", "range") and right[0]["feedback"]


def test_guide_pages_speak_to_the_instructor_about_the_book_only():
    """The guide pages follow the book's one voice (tests/test_book_voice.py's patterns)."""
    for page in sorted(guide.GUIDE.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        hits = [m.group(0) for pat in FORBIDDEN for m in re.finditer(pat, text, flags=re.I)]
        assert not hits, f"{page.name}: {hits}"


def test_smoke_runs_are_never_recorded_as_measured_times(monkeypatch, tmp_path):
    """IMAGEN_EDU_SMOKE gives a profile's sizes with ci's run lengths: its times are not that
    profile's, so `times` refuses to record them (one line, exit 2), and nothing is written."""
    env = {**os.environ, "IMAGEN_EDU_SMOKE": "1"}
    run = subprocess.run([sys.executable, "-m", "imagen_edu.classroom", "times", "01_attention"],
                         capture_output=True, text=True, env=env, cwd=chapters.ROOT)
    assert run.returncode == 2 and "IMAGEN_EDU_SMOKE" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    monkeypatch.setenv("IMAGEN_EDU_SMOKE", "1")
    with pytest.raises(ValueError, match="SMOKE"):
        timing.record(["01_attention"], "cpu", path=tmp_path / "t.json")
    assert not (tmp_path / "t.json").exists()


def _times_table(monkeypatch, tmp_path) -> Path:
    """A times table holding one cpu entry (01_attention, 32 s), with smoke runs off."""
    monkeypatch.delenv("IMAGEN_EDU_SMOKE", raising=False)
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"cpu": {"01_attention": {"total_s": 32.0, "cells": []}}}))
    return path


def test_an_interrupted_times_run_keeps_what_it_measured(monkeypatch, tmp_path):
    """`times` merges into the table after each chapter: the other profiles' entries and every
    chapter timed before a failure are still in the file afterwards."""
    path = _times_table(monkeypatch, tmp_path)

    def fake_execute(name, profile, timeout=3600):
        if name == "03_ddpm":
            raise RuntimeError("a cell failed")
        return nbformat.v4.new_notebook(), 1.5

    monkeypatch.setattr(timing, "execute", fake_execute)
    with pytest.raises(RuntimeError, match="a cell failed"):
        timing.record(["02_language_model", "03_ddpm"], "ci", path=path)
    data = json.loads(path.read_text())
    assert data["cpu"]["01_attention"]["total_s"] == 32.0
    assert data["ci"]["02_language_model"]["total_s"] == 1.5
    assert "03_ddpm" not in data["ci"]
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]  # no temporary file left behind


def test_a_failed_write_of_the_times_table_leaves_the_old_table(monkeypatch, tmp_path):
    """The table is replaced atomically: a write that dies half way leaves the old file whole."""
    path = _times_table(monkeypatch, tmp_path)
    old = path.read_text()
    monkeypatch.setattr(timing, "execute", lambda name, profile, timeout=3600: (nbformat.v4.new_notebook(), 1.0))

    def half_write(self, text, *args, **kwargs):
        with open(self, "w") as f:
            f.write(text[: len(text) // 2])
        raise OSError("no space left on device")

    monkeypatch.setattr(Path, "write_text", half_write)
    with pytest.raises(OSError, match="no space"):
        timing.record(["02_language_model"], "ci", path=path)
    assert path.read_text() == old
