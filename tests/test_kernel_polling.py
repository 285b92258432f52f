"""imagen_edu.kernel_polling: a kernel channel waits in short slices, so a reply whose wake-up was
missed is picked up at the end of the slice instead of at the end of the cell's timeout."""

import asyncio
import time
from queue import Empty

import pytest
from jupyter_client.channels import AsyncZMQSocketChannel

from imagen_edu import kernel_polling


class _Socket:
    """A stand-in socket: ``poll(ms)`` sleeps ``ms`` and reports a message from call ``ready_at`` on
    (as a ZeroMQ poll does when, at its timeout, it checks the socket again)."""

    def __init__(self, ready_at):
        self.calls, self.ready_at = [], ready_at

    async def poll(self, timeout_ms):
        self.calls.append(timeout_ms)
        if self.ready_at is not None and len(self.calls) >= self.ready_at:
            return 1
        await asyncio.sleep((timeout_ms or 0) / 1000)
        return 0


class _Channel:
    def __init__(self, socket):
        self.socket = socket

    async def _recv(self):
        return {"msg_type": "execute_reply"}


def test_a_waiting_message_is_found_at_the_end_of_a_slice():
    sock = _Socket(ready_at=3)
    msg = asyncio.run(kernel_polling._get_msg_in_slices(_Channel(sock), timeout=1200))
    assert msg == {"msg_type": "execute_reply"}
    assert len(sock.calls) == 3 and max(sock.calls) <= kernel_polling.SLICE_S * 1000


def test_no_timeout_waits_in_slices_too():
    sock = _Socket(ready_at=2)
    asyncio.run(kernel_polling._get_msg_in_slices(_Channel(sock), timeout=None))
    assert sock.calls[0] == int(kernel_polling.SLICE_S * 1000)


def test_nothing_before_the_timeout_raises_empty_at_the_timeout():
    sock = _Socket(ready_at=None)
    start = time.perf_counter()
    with pytest.raises(Empty):
        asyncio.run(kernel_polling._get_msg_in_slices(_Channel(sock), timeout=1.2))
    assert 1.2 <= time.perf_counter() - start < 2.0
    assert len(sock.calls) >= 3 and max(sock.calls) <= kernel_polling.SLICE_S * 1000


def test_install_replaces_the_channels_wait(monkeypatch):
    monkeypatch.setattr(AsyncZMQSocketChannel, "get_msg", AsyncZMQSocketChannel.get_msg)
    kernel_polling.install()
    assert kernel_polling.installed() and AsyncZMQSocketChannel.get_msg is kernel_polling._get_msg_in_slices
