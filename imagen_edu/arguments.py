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
import os
import tempfile
from pathlib import Path

from .errors import UsageError

__all__ = ["ArgumentParser", "MAX_SEED", "check_count", "check_seed", "check_seconds", "input_file",
           "output_file"]

#: seeds are ints in ``[0, MAX_SEED)``: what every torch and numpy generator of the package accepts
MAX_SEED = 2 ** 63


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors raise :class:`UsageError` (one line, exit 2
    through ``run_cli``) instead of printing the usage and calling ``sys.exit``. Sub-parsers made
    with ``add_subparsers`` are of this class too. ``--help`` still prints the help and exits 0."""

    def error(self, message):  # argparse's hook for every usage error
        raise UsageError(f"{message} (see {self.prog} --help)")


def check_count(value, name: str, *, minimum: int = 1) -> int:
    """``value`` if it is an int ``>= minimum`` (not a bool), else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return value


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
        fd, probe = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".probe", dir=parent)
    except OSError as err:
        raise ValueError(f"{name} {p}: cannot write in {parent} ({err.strerror})") from None
    os.close(fd)
    os.unlink(probe)
    return p
