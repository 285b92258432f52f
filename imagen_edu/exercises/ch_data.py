"""Checks for the exercises of the shapes-benchmark page (``book/shapes_benchmark.ipynb``).

::

    from imagen_edu.exercises import ch_data
    ch_data.check_half_width(my_half_width)     # my_half_width(shape, dy, h) -> half-width tensor
    ch_data.check_shape_features(my_features)   # my_features(mask (H, W) bool) -> (fill, mass_y)
    ch_data.check_relation(my_relation)         # my_relation(box_a, box_b, relation) -> bool
"""

from __future__ import annotations

import random

import torch

from .. import evaluate
from ..data import shapes
from . import Result, run_check

__all__ = ["check_half_width", "check_shape_features", "check_relation"]


def check_half_width(fn, *, verbose: bool = True) -> Result:
    """``fn(shape, dy, h)``: half-width of the shape's cross-section at offset ``dy`` below its centre.

    ``shape`` is ``"circle"``, ``"square"`` or ``"triangle"``; ``dy`` a 1-D tensor; ``h`` half the
    object's size. Zero where the horizontal line misses the shape (Eq. data-eq-halfwidth).
    """

    def body():
        dy = torch.linspace(-0.3, 0.3, 61)
        for name in ("circle", "square", "triangle"):
            for h in (0.1, 0.2):
                sid = torch.tensor([float(shapes.SHAPES.index(name))])
                want = shapes.half_widths(sid, torch.zeros(1), torch.tensor([2 * h]), dy)[0]
                got = fn(name, dy.clone(), h)
                assert isinstance(got, torch.Tensor), f"return a tensor, got {type(got).__name__}"
                assert got.shape == dy.shape, f"{name}: expected shape {tuple(dy.shape)}, got {tuple(got.shape)}"
                err = (got.float() - want).abs().max().item()
                assert err < 1e-4, f"{name} with h={h}: off by up to {err:.3g}"

    return run_check("half-width of a cross-section", body,
                     "circle sqrt(h^2 - dy^2); square h; triangle (dy + h) / 2 (apex at dy = -h); "
                     "and 0 wherever |dy| > h", verbose=verbose)


def check_shape_features(fn, *, verbose: bool = True) -> Result:
    """``fn(mask)`` for a bool mask (H, W) of one object -> ``(fill, mass_y)`` as the judge defines them."""

    def body():
        for i, name in enumerate(("circle", "square", "triangle")):
            scene = shapes.Scene((shapes.SceneObject("red", name, (0.45 + 0.03 * i, 0.5), 0.5),))
            img = shapes.render(scene, 64)[0]
            mask = evaluate.colour_masks(img[None])[0, 0]
            obj = evaluate.detect_objects(img)[0]
            fill, mass_y = fn(mask.clone())
            assert abs(float(fill) - obj.fill) < 1e-4, f"{name}: fill {float(fill):.4f}, expected {obj.fill:.4f}"
            assert abs(float(mass_y) - obj.mass_y) < 1e-4, \
                f"{name}: mass_y {float(mass_y):.4f}, expected {obj.mass_y:.4f}"

    return run_check("shape features", body,
                     "box = rows/columns that contain any pixel (w = x1 - x0 + 1); fill = pixels / (w h); "
                     "mass_y = (mean row + 0.5 - y0) / h", verbose=verbose)


def check_relation(fn, *, verbose: bool = True) -> Result:
    """``fn(box_a, box_b, relation)`` -> whether ``a RELATION b`` holds (boxes ``(x0, y0, x1, y1)``, y down)."""

    def body():
        rng = random.Random(0)
        for _ in range(400):
            boxes = []
            for _ in range(2):
                x0, y0 = rng.uniform(0, 0.7), rng.uniform(0, 0.7)
                s = rng.uniform(0.1, 0.3)
                boxes.append((x0, y0, x0 + s, y0 + s))
            rel = rng.choice(shapes.RELATIONS)
            a, b = (evaluate.DetectedObject("red", "circle", (0, 0), 0, box=bx) for bx in boxes)
            want = evaluate.relation_holds(a, b, rel)
            got = fn(boxes[0], boxes[1], rel)
            assert bool(got) == want, f"{rel} with boxes {boxes}: got {bool(got)}, expected {want}"

    return run_check("relation", body, "'left of': a's right edge (x1) <= b's left edge (x0); y points down, "
                     "so 'above' compares a's bottom (y1) with b's top (y0)", verbose=verbose)


# ---------------------------------------------------------------------------------------------
# Reference solutions: the page's hidden solution cells and the appendix render these with
# imagen_edu.viz.show_source, and each one passes the check of the same name.
# ---------------------------------------------------------------------------------------------
def solution_half_width(shape: str, dy: torch.Tensor, h: float) -> torch.Tensor:
    """Eq. data-eq-halfwidth: the half-width of the horizontal cross-section ``dy`` below the centre
    (circle: Pythagoras; square: constant; triangle: grows linearly from the apex at dy = -h)."""
    w = {"circle": (h * h - dy * dy).clamp(min=0).sqrt(), "square": torch.full_like(dy, h),
         "triangle": (dy + h) / 2}[shape]
    return torch.where(dy.abs() <= h, w, torch.zeros_like(w))


def solution_shape_features(mask: torch.Tensor):
    """Eq. data-eq-features on pixels: ``mask (H, W)`` bool -> ``(fill, mass_y)``, the share of the
    bounding box covered and the height of the centre of mass (from the box's top, in box heights)."""
    rows, cols = mask.nonzero(as_tuple=True)
    w = (cols.max() - cols.min() + 1).item()
    h = (rows.max() - rows.min() + 1).item()
    return len(rows) / (w * h), (rows.float().mean().item() + 0.5 - rows.min().item()) / h


def solution_relation(box_a, box_b, relation: str) -> bool:
    """``a RELATION b`` for boxes ``(x0, y0, x1, y1)`` with y pointing down: the gap of
    Eq. data-eq-margin between the facing edges must be >= 0."""
    a, b = box_a, box_b
    gap = {"left of": b[0] - a[2], "right of": a[0] - b[2],
           "above": b[1] - a[3], "below": a[1] - b[3]}[relation]
    return gap >= 0
