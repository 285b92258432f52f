"""The repository's pytest plugin: this conftest.py sits at the root, so it applies to every pytest
run here, whatever is named on the command line (``tests/``, ``tests/browser`` or a notebook in
``book/`` collected by nbval):

* the ``ci`` compute profile, set before any notebook kernel starts, so nbval's kernels inherit it;
* Hugging Face libraries told to stay offline;
* under pytest-xdist, each worker's share of the CPU threads;
* kernel replies awaited in short slices (imagen_edu.kernel_polling: a missed wake-up must not
  stall a notebook a test executes until its timeout);
* outgoing connections to anything but this machine fail loudly, so a test that would download
  something fails instead of quietly passing on a connected laptop.

The tests' fixtures live in ``tests/conftest.py``, their helpers (the browser driver, the DDP
script) in ``tests/support/``; none of it is part of the ``imagen_edu`` package.
"""

import os
import socket
import sys

os.environ["IMAGEN_EDU_PROFILE"] = "ci"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")

# Under pytest-xdist (``pytest -n auto``, the README's test command) the workers share the cores:
# each gets its share of the threads, for torch here and for the processes a test starts.
if os.environ.get("PYTEST_XDIST_WORKER") and "OMP_NUM_THREADS" not in os.environ:
    from imagen_edu.book_build import kernel_threads  # the cores shared out, as among the book's kernels

    _share = kernel_threads(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(_share)
    if "torch" in sys.modules:  # imported already (imagen_edu, a plugin): it read the variable before
        sys.modules["torch"].set_num_threads(_share)

_LOCAL_HOSTS = {"127.0.0.1", "::1", "localhost", "0.0.0.0", ""}
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


class NetworkAccessError(RuntimeError):
    """Raised when a test tries to reach a host other than this machine."""


def _check(sock, address):
    if sock.family == getattr(socket, "AF_UNIX", object()):
        return
    host = address[0] if isinstance(address, tuple) else str(address)
    if host in _LOCAL_HOSTS or str(host).startswith("127."):
        return
    raise NetworkAccessError(f"tests must not use the network: tried to connect to {address!r}")


def _guarded_connect(self, address):
    _check(self, address)
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    _check(self, address)
    return _real_connect_ex(self, address)


def pytest_configure(config):
    # notebooks executed by the tests (nbclient, nbgrader) wait for kernel replies in short slices
    from imagen_edu import kernel_polling
    kernel_polling.install()
    socket.socket.connect = _guarded_connect
    socket.socket.connect_ex = _guarded_connect_ex


def pytest_unconfigure(config):
    socket.socket.connect = _real_connect
    socket.socket.connect_ex = _real_connect_ex
