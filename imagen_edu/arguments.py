"""Checks of command-line arguments, shared by the chapter command lines.

``python -m imagen_edu.lm``, ``.clip``, ``.evaluate``, ``.ddpm_images`` and ``.data.shapes`` check
every argument *before* any work (training, sampling, loading a model): a mistake must cost
seconds, never a finished run. Each check returns the cleaned value or raises a ``ValueError``
(or ``FileNotFoundError``) whose message names the argument, what was given and what was
expected; :func:`imagen_edu.errors.run_cli` prints it as one line and exits with status 2.

:class:`ArgumentParser` is argparse's parser with the same one-line error path: a usage error
(``--n abc``, an unknown option) raises :class:`~imagen_edu.errors.UsageError` instead of
printing the usage text and exiting.
"""

from __future__ import annotations

import argparse
import math
import numbers
from pathlib import Path

from .errors import UsageError
from .outputs import probe_write

__all__ = ["ArgumentParser", "MAX_SEED", "NumberTypeError", "check_int", "check_real", "check_count", "check_seed",
           "check_seconds", "input_file", "output_file"]

#: seeds are ints in ``[0, MAX_SEED)``: what every torch and numpy generator of the package accepts
MAX_SEED = 2 ** 63


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors raise :class:`UsageError` (one line, exit 2
    through ``run_cli``) instead of printing the usage and calling ``sys.exit``. Sub-parsers made
    with ``add_subparsers`` are of this class too. ``--help`` still prints the help and exits 0."""

    def error(self, message):  # argparse's hook for every usage error
        raise UsageError(f"{message} (see {self.prog} --help)")


class NumberTypeError(TypeError, ValueError):
    """A value that is not a number of the right kind (a float or a bool where an int belongs, a str, ...).

    Both a ``TypeError`` (what it is) and a ``ValueError`` (so that a config read back from a
    checkpoint fails with a ``ValueError``, as every other nonsense value does).
    """


def _range_text(low, high, low_open: bool = False, high_open: bool = False) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high}"
    return ""


def check_int(v, name: str, *, low: int | None = None, high: int | None = None) -> int:
    """``v`` as an ``int`` if it is an integer (not a bool, not a float: ``1.7`` is no seed) in ``[low, high]``.

    A wrong type raises :class:`NumberTypeError`, a value out of range ``ValueError``; both name
    ``name`` and say what was given and what is expected.
    """
    want = " ".join(("an int", _range_text(low, high))).strip()
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise NumberTypeError(f"{name} must be {want}, got {v!r} ({type(v).__name__})")
    v = int(v)
    if (low is not None and v < low) or (high is not None and v > high):
        raise ValueError(f"{name} must be {want}, got {v}")
    return v


def check_real(v, name: str, *, low: float | None = None, high: float | None = None,
               low_open: bool = False, high_open: bool = False) -> float:
    """``v`` as a finite ``float`` in the range (``low``/``high``, open or closed), else an error naming ``name``.

    ``inf`` and ``nan`` are refused (``ValueError``), as is a bool or a non-number
    (:class:`NumberTypeError`).
    """
    want = " ".join(("a finite number", _range_text(low, high, low_open, high_open))).strip()
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise NumberTypeError(f"{name} must be {want}, got {v!r} ({type(v).__name__})")
    try:
        x = float(v)
    except OverflowError:
        x = math.inf
    if not math.isfinite(x) or (low is not None and (x <= low if low_open else x < low)) or \
            (high is not None and (x >= high if high_open else x > high)):
        raise ValueError(f"{name} must be {want}, got {v!r}")
    return x



def check_count(value, name: str, *, minimum: int = 1) -> int:
    """``value`` if it is an int ``>= minimum`` (not a bool), else an error naming ``name`` (:func:`check_int`)."""
    return check_int(value, name, low=minimum)


def check_seed(value, name: str = "--seed") -> int:
    """``value`` if it is an int in ``[0, 2**63)`` (not a bool, not a float), else an error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int in [0, 2**63), got {value!r} ({type(value).__name__})")
    if not 0 <= value < MAX_SEED:
        raise ValueError(f"{name} must be an int in [0, 2**63), got {value}")
    return value


def check_seconds(value, name: str) -> float:
    """``value`` if it is a finite number ``>= 0`` (a duration in seconds), else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


def input_file(path, name: str) -> Path:
    """``Path(path)`` if it is an existing file; ``FileNotFoundError`` or ``ValueError`` naming ``name`` otherwise."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{name} {p} is a folder; expected a file")
    if not p.is_file():
        raise FileNotFoundError(f"{name} {p}: no such file")
    return p


def output_file(path, name: str) -> Path:
    """``Path(path)`` if a file can be written there; ``ValueError`` naming ``name`` otherwise.

    Checked before any work: ``path`` must not be a folder, and its folder must exist and accept
    a new file (probed by creating and removing an empty temporary file beside ``path``, which,
    unlike ``os.access``, also catches read-only mounts). An existing file at ``path`` is allowed:
    writers of the package write a new file and rename it over the old one (write new, then
    rename), so the old file stays whole until its replacement exists.
    """
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{name} {p} is a folder; expected a file name to write")
    parent = p.parent
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise ValueError(f"{name} {p}: its folder {parent} {what}; create it first")
    try:
        probe_write(parent, prefix=f".{p.name}.")
    except OSError as err:
        raise ValueError(f"{name} {p}: cannot write in {parent} ({err.strerror})") from None
    return p
