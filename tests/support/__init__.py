"""Helpers of the test suite, kept out of the ``imagen_edu`` package (``pythonpath = ["tests"]`` in
pyproject.toml makes this folder importable as ``support``):

* :mod:`support.browser`: opens the built book in headless Chromium (``tests/browser``);
* :mod:`support.ddp_smoke`: tiny training problems and the script ``torchrun`` runs
  (``tests/test_distributed.py``, ``tests/test_train.py``).
"""
