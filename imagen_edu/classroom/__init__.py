"""The classroom kit: what an instructor needs to teach the book's chapters live.

``python -m imagen_edu.classroom COMMAND`` with COMMAND one of

* ``student OUT``: the student edition of every chapter (solutions removed, checks kept as the
  grader), as an nbgrader course folder (:mod:`.student`);
* ``grade SUBMISSIONS``: autograde a folder of submitted notebooks and print a score table
  (:mod:`.grading`);
* ``slides OUT``: a reveal.js deck per chapter, offline (:mod:`.slides`);
* ``times [--profile cpu] [NOTEBOOK...]``: per-cell wall times into
  ``data/benchmarks/cell_times.json`` (:mod:`.timing`), which the instructor's guide tables
  (:mod:`.guide`) are made from.

The exercise checks themselves stay in :mod:`imagen_edu.exercises`: the book, the grader and the
solutions appendix share one source.
"""
