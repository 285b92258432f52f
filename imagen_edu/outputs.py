"""Where results are written: checked before any work, written atomically, one writer per result (chapter 6).

Nothing a command finished is lost by a mistake or a crash:

* :func:`check_output_dir` and :func:`check_output_file` run before any work, so an
  unwritable ``--out`` (an existing file, a read-only folder) fails in the first second, not
  after an hour of training; an existing result is refused unless the caller passes
  ``overwrite=True``.
* :func:`atomic_write` writes a temporary file beside the target and moves it into place
  (``os.replace``): a reader, or a crash, sees the old file or the new one, never half of one.
* :class:`FolderLock` lets one process at a time write one result in a folder (a second trainer
  of the same stage into the same ``--out`` stops at once with a message naming the first).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from .errors import UsageError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock
    fcntl = None

__all__ = ["check_output_dir", "check_output_file", "probe_write", "atomic_write", "atomic_write_text", "FolderLock"]


def probe_write(folder, prefix: str = ".write-test.") -> None:
    """Create and remove an empty temporary file in ``folder``; raises ``OSError`` if it cannot.

    Unlike ``os.access`` this also catches read-only mounts, and it answers truly for root.
    """
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=folder)
    os.close(fd)
    os.unlink(tmp)


def _probe_write(folder: Path, what: str) -> None:
    try:
        probe_write(folder)
    except OSError as err:
        raise UsageError(f"{what} {folder} is not writable ({err.strerror or err}): choose a folder you can "
                         "write to") from None


def check_output_dir(path, what: str = "--out") -> Path:
    """The folder ``path`` exists (it is created) and can be written; returns it as a ``Path``.

    Raises :class:`~imagen_edu.errors.UsageError` (a ``ValueError``) naming ``what`` if ``path``
    is an existing file, cannot be created or is not writable.
    """
    if path is None or not str(path).strip():
        raise UsageError(f"{what} must name a folder, got {path!r}")
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{what} {p} is an existing file, not a folder: choose a folder for the results")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"{what} {p} cannot be created ({err.strerror or err})") from None
    _probe_write(p, what)
    return p


def check_output_file(path, what: str = "--out", *, overwrite: bool = False) -> Path:
    """``path`` can be written as a file: not a folder, its folder writable (created if missing),
    and not an existing file unless ``overwrite``. Returns it as a ``Path``."""
    if path is None or not str(path).strip():
        raise UsageError(f"{what} must name a file, got {path!r}")
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{what} {p} is a folder: give a file name, e.g. {p / 'result.json'}")
    if p.exists() and not overwrite:
        raise UsageError(f"{what} {p} already exists: pass --overwrite to replace it, or choose another file")
    check_output_dir(p.parent if str(p.parent) else Path("."), what=f"the folder of {what}")
    return p


def atomic_write(path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` for a temporary file beside ``path`` (its folder is created), then
    move it onto ``path``: the old file stays whole until the new one is complete and on disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; results are meant to be shared
        with open(tmp, "rb") as f:  # on disk before the rename: a power cut never leaves an empty file
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path, text: str) -> Path:
    """:func:`atomic_write` of a text file."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


class FolderLock:
    """An exclusive, non-blocking lock on ``folder/.NAME.lock`` for as long as the block runs.

    A second process asking for the same lock gets a :class:`~imagen_edu.errors.UsageError`
    naming the process that holds it (with ``wait=True`` it waits its turn instead, for short
    writes such as a manifest entry); the lock is released when the block ends or the process
    dies (POSIX ``flock``; a no-op where ``fcntl`` is missing).
    """

    def __init__(self, folder, name: str, what: str = "this result", *, wait: bool = False):
        self.path = Path(folder) / f".{name}.lock"
        self.what = what
        self.wait = wait
        self.f = None

    def __enter__(self):
        if fcntl is None:  # pragma: no cover - Windows
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX if self.wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise UsageError(f"{self.path.parent} is in use: {holder} is writing {self.what} there. Wait for it "
                             "to finish, or choose another --out") from None
        f.seek(0)
        f.truncate()
        f.write(f"process {os.getpid()}")
        f.flush()
        self.f = f
        return self

    def __exit__(self, *exc):
        if self.f is not None:
            fcntl.flock(self.f, fcntl.LOCK_UN)
            self.f.close()
            self.f = None
