"""Waiting for a Jupyter kernel's replies in short slices, so that a missed wake-up costs a moment.

nbclient (which executes the book's notebooks, through jupyter-cache and myst-nb) waits for each
cell's ``execute_reply`` with one ``await socket.poll(timeout)`` on the kernel's shell socket. Now
and then, in a cell that shows an ipywidgets widget (``interact``), that poll does not wake when
the reply arrives: the kernel is idle, the reply is waiting in the socket, and the client sleeps
until the cell's whole timeout has passed (measured here: two runs in four of chapter 3's
notebook stalled at its ``interact`` cell for the full timeout, then went on with the right outputs,
``experiments/notebook_stall/hunt.py``; nbclient issue #312 reports the same). A ZeroMQ socket's file descriptor signals *edges*, so a
wake-up that another reader of the event loop consumed is not signalled again; when the poll
times out it checks the socket once more and finds the message.

:func:`install` makes every asynchronous kernel channel poll in slices of at most
``SLICE_S`` seconds, each ending with that check, until the caller's own timeout: the same
messages in the same order, at most ``SLICE_S`` late. It is installed wherever notebooks execute:
:mod:`imagen_edu.book_build`'s workers, :mod:`imagen_edu.classroom.timing`, the book's Sphinx
extension (:mod:`imagen_edu.classroom.sphinx_slides`) and the tests' root ``conftest.py``.
"""

from __future__ import annotations

from queue import Empty
from time import monotonic

from jupyter_client.channels import AsyncZMQSocketChannel

__all__ = ["SLICE_S", "install", "installed"]

#: the longest single wait on a kernel socket, in seconds
SLICE_S = 0.5


async def _get_msg_in_slices(self, timeout: float | None = None):
    """``AsyncZMQSocketChannel.get_msg`` with the wait cut into :data:`SLICE_S` slices.

    Returns the next message, or raises ``queue.Empty`` once ``timeout`` seconds (``None``: no
    limit) have passed without one, as the original does.
    """
    deadline = None if timeout is None else monotonic() + max(0.0, float(timeout))
    while True:
        left = SLICE_S if deadline is None else max(0.0, min(SLICE_S, deadline - monotonic()))
        if await self.socket.poll(int(left * 1000)):
            return await self._recv()
        if deadline is not None and monotonic() >= deadline:
            raise Empty


def install() -> None:
    """Make every ``AsyncZMQSocketChannel`` in this process wait in slices (idempotent)."""
    AsyncZMQSocketChannel.get_msg = _get_msg_in_slices


def installed() -> bool:
    """Whether :func:`install` is in effect in this process."""
    return AsyncZMQSocketChannel.get_msg is _get_msg_in_slices
