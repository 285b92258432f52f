"""Checked exercises: each chapter's checks take the reader's function and say pass or fail.

A check returns a :class:`Result` (truthy when passed) and prints a verdict with a hint on
failure, so a reader can call it at the end of a cell: ``exercises.ch01.check_softmax(my_fn)``.
Chapter modules (``ch01``, ``ch02``, ...) live beside this file; each also holds a reference
``solution_X`` for its ``check_X``, which :func:`solution_functions` lists and
:func:`check_solutions` runs (the appendix "Exercise solutions" shows them).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass


@dataclass
class Result:
    """The outcome of one exercise check: passed, failed, or not attempted yet.

    An exercise whose function still raises ``NotImplementedError`` (the stub the page gives)
    is *not attempted*: falsy like a failure, but reported as ``NOT ATTEMPTED YET`` so that an
    unanswered exercise never reads as a mistake (and never stops the notebook).
    """

    name: str
    passed: bool
    message: str
    attempted: bool = True

    def __bool__(self) -> bool:
        return self.passed

    @property
    def verdict(self) -> str:
        """``"PASS"``, ``"FAIL"`` or ``"NOT ATTEMPTED YET"``."""
        return "PASS" if self.passed else ("FAIL" if self.attempted else "NOT ATTEMPTED YET")

    def __repr__(self) -> str:
        return f"{self.verdict}: {self.name}: {self.message}"


def run_check(name: str, fn, hint: str, *, verbose: bool = True) -> Result:
    """Run ``fn()`` (which raises ``AssertionError`` with a message on failure) as a check.

    Any other exception from the reader's code also fails the check, with its type and text,
    so a typo in an exercise gives a verdict rather than a traceback; ``NotImplementedError``
    (the stub) gives "not attempted yet".
    """
    try:
        fn()
        res = Result(name, True, "well done")
    except NotImplementedError:  # the page's stub: nothing written yet
        res = Result(name, False, "not attempted yet: replace the `raise NotImplementedError` "
                     "with your code and run the cell again", attempted=False)
    except AssertionError as err:
        res = Result(name, False, f"{err} -- hint: {hint}")
    except Exception as err:  # the reader's code crashed
        res = Result(name, False, f"your code raised {type(err).__name__}: {err} -- hint: {hint}")
    if verbose:
        print(repr(res))
    return res


def solution_functions(module) -> list:
    """The reference solutions of an exercise module (``imagen_edu.exercises.chNN``).

    Returns ``[(name, function), ...]`` for every ``solution_*`` function the module defines, in
    the order of its source (the order of the chapter's exercises).
    """
    found = [(n, f) for n, f in vars(module).items()
             if n.startswith("solution_") and inspect.isfunction(f) and f.__module__ == module.__name__]
    return sorted(found, key=lambda nf: inspect.getsourcelines(nf[1])[1])


def check_solutions(module) -> dict:
    """Run each ``solution_X`` of an exercise module through the module's ``check_X``.

    Returns ``{name: Result}`` for the solutions that have a check; raises ``AssertionError``
    naming the first solution that fails its own check.
    """
    results = {}
    for name, fn in solution_functions(module):
        check = getattr(module, "check_" + name[len("solution_"):], None)
        if check is None:
            continue
        res = check(fn, verbose=False)
        if not res:
            raise AssertionError(f"{module.__name__}.{name} fails its check: {res!r}")
        results[name] = res
    return results

