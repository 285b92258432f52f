"""Checked exercises: each chapter's checks take the reader's function and say pass or fail.

A check returns a :class:`Result` (truthy when passed) and prints a verdict with a hint on
failure, so a reader can call it at the end of a cell: ``exercises.ch01.check_softmax(my_fn)``.
Chapter modules (``ch01``, ``ch02``, ...) live beside this file.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Result:
    """The outcome of one exercise check."""

    name: str
    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'}: {self.name}: {self.message}"


def run_check(name: str, fn, hint: str, *, verbose: bool = True) -> Result:
    """Run ``fn()`` (which raises ``AssertionError`` with a message on failure) as a check.

    Any other exception from the reader's code also fails the check, with its type and text,
    so a typo in an exercise gives a verdict rather than a traceback.
    """
    try:
        fn()
        res = Result(name, True, "well done")
    except AssertionError as err:
        res = Result(name, False, f"{err} -- hint: {hint}")
    except Exception as err:  # the reader's code crashed
        res = Result(name, False, f"your code raised {type(err).__name__}: {err} -- hint: {hint}")
    if verbose:
        print(repr(res))
    return res
