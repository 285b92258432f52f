"""One error path for every command line of the package (``python -m imagen_edu`` and the chapter CLIs).

A user's mistake (a bad argument, a missing or unreadable file, a folder that cannot be written)
is reported as one line on stderr, ``error: WHAT``, and exit status 2, before any work where
it can be checked before. Anything else is a bug of the package: one line that says so and
where to report it, exit status 1 (set ``IMAGEN_EDU_TRACEBACK=1`` to see the traceback).
Ctrl-C prints one line and exits 130.

:func:`run_cli` wraps a command's ``main``; the functions raise, they never print or exit.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

__all__ = ["USER_ERRORS", "REPORT", "UsageError", "run_cli"]


class UsageError(ValueError):
    """A user's mistake that is neither a bad value nor a missing file (e.g. a folder in use)."""


#: exceptions that mean "the user asked for something impossible": one line, exit 2
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, KeyError, OSError, OverflowError)

#: where an unexpected error is reported
REPORT = ("this is a bug in imagen_edu: please report it on the project's issue tracker with the command "
          "you ran and this line (README, 'Reporting a problem'); IMAGEN_EDU_TRACEBACK=1 shows the traceback")


def _one_line(err: BaseException) -> str:
    if isinstance(err, KeyError) and err.args:
        text = str(err.args[0])
    elif isinstance(err, OSError) and err.filename is not None and err.strerror:
        text = f"{err.strerror}: {err.filename}"
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


def run_cli(main: Callable[[], int | None], prog: str = "imagen_edu") -> int:
    """Run ``main()`` and turn what it raises into one line on stderr and an exit status.

    Returns ``main``'s status (0 for ``None``); 2 for a :data:`USER_ERRORS` exception; 1 for any
    other (with :data:`REPORT`); 130 on Ctrl-C. ``SystemExit`` (argparse's usage errors, exit 2)
    passes through.
    """
    try:
        status = main()
        return 0 if status is None else int(status)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if os.environ.get("IMAGEN_EDU_TRACEBACK") == "1":
            raise
        print(f"{prog}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - the one place that catches everything, to say where to report it
        if os.environ.get("IMAGEN_EDU_TRACEBACK") == "1":
            raise
        print(f"{prog}: internal error: {type(err).__name__}: {_one_line(err)}. {REPORT}", file=sys.stderr)
        return 1
