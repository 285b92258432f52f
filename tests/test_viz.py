"""The book's pictures and explorers: ``imagen_edu.viz``, ``imagen_edu.widgets``, ``imagen_edu.pixels``.

The drawing itself is tested with the chapters that use it (tests/test_attention.py for the
attention pictures and explorer, tests/test_exercises_ch05.py for the guidance plot); here: the
layout of the three modules and the one conversion they share.
"""

from __future__ import annotations

import ast
import base64
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from imagen_edu import exercises, pixels, viz, widgets

ROOT = Path(__file__).resolve().parents[1]
MODULES = {name: ROOT / "imagen_edu" / f"{name}.py" for name in ("viz", "widgets", "pixels")}


def test_no_function_local_imports():
    """Issue 14: no function-local import hides a dependency of viz, widgets or pixels (every one
    of them, matplotlib, ipywidgets, IPython, torch, einops, is a dependency of the package)."""
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        local = [f"{fn.name}:{node.lineno}" for fn in ast.walk(tree)
                 if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for node in ast.walk(fn) if isinstance(node, (ast.Import, ast.ImportFrom))]
        assert not local, f"imagen_edu/{name}.py imports inside functions: {local}"


def test_widgets_and_pixels_do_not_import_viz():
    """Issue 14: one idea per module with no cycle: viz re-exports the explorers and the
    conversion, so widgets and pixels must not import viz back."""
    for name in ("widgets", "pixels"):
        tree = ast.parse(MODULES[name].read_text())
        imported = {(node.module or "") for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for a in node.names}
        assert "viz" not in imported and "imagen_edu.viz" not in imported, f"{name} imports viz"


def test_every_viz_name_the_book_uses_exists():
    """Moving a helper out of viz keeps ``viz.X`` working for every X a book notebook calls."""
    used = set()
    for nb in sorted((ROOT / "book").glob("*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            used |= set(re.findall(r"\bviz\.(\w+)", "".join(cell["source"])))
    assert {"show_source", "show_grid", "attention_explorer", "prompt_widget"} <= used
    missing = sorted(n for n in used if not hasattr(viz, n))
    assert not missing, f"the book calls viz names that do not exist: {missing}"
    assert viz.attention_explorer is widgets.attention_explorer
    assert viz.to_display is pixels.to_display
    assert viz.check_solutions is exercises.check_solutions


def test_importing_viz_picks_no_matplotlib_backend():
    """Importing viz leaves matplotlib's backend to the notebook (no ``matplotlib.use``): no
    backend module is loaded by the import, so the kernel's inline backend applies."""
    code = ("import sys, imagen_edu.viz, imagen_edu.widgets; "
            "print([m for m in sys.modules if m.startswith('matplotlib.backends.backend_')])")
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # the test harness sets Agg
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**env, "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_to_display_maps_minus_one_one_to_zero_one_and_png_keeps_the_pixels():
    """The data layer's images are (N, C, H, W) in [-1, 1]; a picture is (N, H, W, 3) in [0, 1]
    via (x + 1) / 2, grey channels repeated; the PNG of a widget holds the same pixels."""
    x = torch.tensor([-1.0, 0.0, 1.0, 3.0]).reshape(1, 1, 2, 2)
    img = pixels.to_display(x)
    assert img.shape == (1, 2, 2, 3)
    np.testing.assert_allclose(img[0, :, :, 0], [[0.0, 0.5], [1.0, 1.0]])  # clamped to [0, 1]
    assert (img[..., 0] == img[..., 2]).all()
    rgb = pixels.to_display(torch.rand(3, 5, 4) * 2 - 1)[0]
    uri = pixels.png_data_uri(rgb)
    assert uri.startswith("data:image/png;base64,")
    back = plt.imread(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])), format="png")[..., :3]
    np.testing.assert_allclose(back, rgb, atol=1 / 255 + 1e-6)
