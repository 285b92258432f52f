"""``python -m imagen_edu.classroom``: the instructor's commands (see the package docstring)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import run_cli
from . import chapters, grading, slides, student, timing


def _names(items: list[str]) -> list[str]:
    """Chapter names from CLI arguments (``book/01_attention.ipynb`` or ``01_attention``)."""
    return [chapters.chapter_path(i).stem for i in items] or list(chapters.CHAPTERS)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m imagen_edu.classroom",
                                 description="The classroom kit: student edition, grading, slides, cell times.")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("student", help="write the student edition (an nbgrader course folder) to OUT")
    p.add_argument("out", type=Path)
    p.add_argument("chapters", nargs="*", help="chapter notebooks (default: every chapter)")
    p = sub.add_parser("grade", help="autograde a folder of submissions (SUBMISSIONS/STUDENT/CHAPTER.ipynb)")
    p.add_argument("submissions", type=Path)
    p.add_argument("--course", type=Path, required=True, help="the folder `student` wrote")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per cell (default 1800)")
    p = sub.add_parser("slides", help="write a reveal.js deck per chapter to OUT/slides")
    p.add_argument("out", type=Path)
    p.add_argument("chapters", nargs="*")
    p.add_argument("--executed", type=Path, default=slides.EXECUTED,
                   help=f"folder of executed chapter notebooks (default {slides.EXECUTED})")
    p.add_argument("--cache", type=Path, default=slides.CACHE,
                   help=f"the book build's execution cache, read first (default {slides.CACHE})")
    p = sub.add_parser("times", help=f"time every cell; writes {timing.TIMES}")
    p.add_argument("chapters", nargs="*")
    p.add_argument("--profile", default="cpu", choices=["ci", "cpu", "gpu"])
    args = ap.parse_args(argv)

    if args.command == "student":
        for nb in student.build(args.out, _names(args.chapters)):
            print(f"student edition: {nb}")
        print(f"hand out {args.out}/release/; keep {args.out} (source/, gradebook.db) for grading")
    elif args.command == "grade":
        print(grading.table(grading.grade(args.submissions, args.course, args.timeout)))
    elif args.command == "slides":
        for deck in slides.build(args.out, _names(args.chapters), args.executed, args.cache):
            print(f"slides: {deck}")
    else:
        timing.record(_names(args.chapters), args.profile)
        print(f"cell times: {timing.TIMES}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m imagen_edu.classroom"))
