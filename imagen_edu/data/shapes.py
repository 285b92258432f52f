"""The shapes benchmark: procedural scenes with exact captions, rendered at any resolution.

Derived on the book page "The shapes benchmark" (``book/shapes_benchmark.ipynb``). A *scene* is one or two filled, fully saturated objects on a
black square canvas, described in the caption grammar of :mod:`imagen_edu.data.captions`
(``a red circle`` or ``a red circle left of a blue square``). The pipeline is

1. :func:`sample_scene` draws a caption uniformly from the split's captions and then a geometry
   for it (sizes and centres in [0, 1] canvas coordinates, ``x`` to the right, ``y`` *down*, so
   "above" means a smaller ``y``);
2. :func:`render` draws the scene analytically from that geometry at every requested resolution.

Geometry conventions (every shape has the same bounding box, a square of side ``size`` centred
on ``centre``):

* circle: diameter ``size``;
* square: axis-aligned, side ``size``;
* triangle: isosceles, apex up, base = height = ``size``.

Two-object scenes never overlap and their relation holds with a clear margin: for
``A left of B``, A's right edge is at least :data:`RELATION_MARGIN` (a fraction of the canvas)
left of B's left edge, and likewise for the other relations.

Anti-aliasing is by supersampling: each pixel is the fraction of it that the object covers,
measured on :data:`SAMPLE_GRID` horizontal sample lines across the canvas (at least
:data:`MIN_SUPERSAMPLE` per pixel row) and exactly along each line (every shape meets a line in
one interval). Because 16, 32 and 64 px share the same 256 sample lines, the 16 px render
*equals* the 64 px render area-averaged by 4 x 4 (up to float rounding), so a super-resolution
stage trains on exact (low, high) pairs.

Splits (seeds never shared: the split's name is part of every scene's random seed):

* ``train``: captions with no object of :data:`HELDOUT_PAIRS`;
* ``test``: the same caption distribution as ``train``, from disjoint random streams;
* ``heldout``: captions with at least one held-out object.

Run ``python -m imagen_edu.data.shapes bench`` for the render speed (JSON).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from einops import rearrange

from .captions import COLOURS, GRAMMAR, HELDOUT_PAIRS, RELATIONS, SHAPES, ParsedCaption, all_captions, parse_caption
from ..arguments import ArgumentParser, check_count
from ..errors import run_cli
from ..profiles import torch_threads

__all__ = [
    "GRAMMAR", "HELDOUT_PAIRS", "RELATIONS", "RGB", "SPLITS", "RELATION_MARGIN", "Scene", "SceneObject",
    "MAX_LENGTH", "MAX_RENDER_BYTES", "MAX_RESOLUTION", "MIN_RESOLUTION",
    "ShapesDataset", "benchmark", "single_thread", "check_resolution", "coverage", "half_widths", "make_batch", "place_objects",
    "relation_gap", "render", "render_batch", "render_captions", "sample_scene", "scene_at", "scene_for_caption",
    "split_captions",
]

SPLITS: tuple[str, ...] = ("train", "test", "heldout")
_SPLIT_CODE = {"train": 0, "test": 1, "heldout": 2}

#: Gap between the two objects along the relation's axis, as a fraction of the canvas.
RELATION_MARGIN: float = 0.08
#: Empty border kept around every object, as a fraction of the canvas.
BORDER: float = 0.04
#: Object size (side of its bounding box, fraction of the canvas) in one-object scenes.
ONE_OBJECT_SIZE: tuple[float, float] = (0.35, 0.6)
#: Object size in two-object scenes (each object independently).
TWO_OBJECT_SIZE: tuple[float, float] = (0.25, 0.4)
#: Minimum number of horizontal sample lines across the canvas (16, 32 and 64 px share them exactly).
SAMPLE_GRID: int = 256
#: Minimum number of sample lines per pixel row.
MIN_SUPERSAMPLE: int = 4
#: Resolutions the renderer accepts, in pixels (checked by :func:`check_resolution`): below 4 px no
#: shape is recognisable; 1024 px is 16 times the book's largest stage and still renders in
#: bounded memory (:func:`render_batch` shrinks its chunks as the resolution grows).
MIN_RESOLUTION: int = 4
MAX_RESOLUTION: int = 1024
#: Most items of a :class:`ShapesDataset` (scenes are drawn lazily; the bound catches a typo).
MAX_LENGTH: int = 2 ** 31 - 1
#: Most bytes :func:`render_batch` may return at once (32 GiB): a larger request is refused before
#: any allocation, with the size it would need.
MAX_RENDER_BYTES: int = 32 * 2 ** 30
#: Most float32 values of the largest temporary of one rendered chunk (128 MiB).
_CHUNK_ELEMENTS: int = 2 ** 25


def hue_to_rgb(hue: float) -> tuple[float, float, float]:
    """RGB in [0, 1] of a fully saturated, full-value colour with ``hue`` in degrees."""
    def f(n: float) -> float:  # the standard HSV -> RGB formula with S = V = 1
        k = (n + hue / 60.0) % 6
        return 1.0 - max(0.0, min(k, 4 - k, 1.0))
    return (f(5), f(3), f(1))


RGB: dict[str, tuple[float, float, float]] = {c: hue_to_rgb(h) for c, h in COLOURS.items()}


# ---------------------------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SceneObject:
    """One object: its colour and shape names, centre ``(x, y)`` in [0, 1] (y down), size in [0, 1]."""

    colour: str
    shape: str
    centre: tuple[float, float]
    size: float

    @property
    def box(self) -> tuple[float, float, float, float]:
        """Bounding box ``(x0, y0, x1, y1)`` in canvas coordinates."""
        (x, y), h = self.centre, self.size / 2
        return (x - h, y - h, x + h, y + h)


@dataclass(frozen=True)
class Scene:
    """A scene: one or two :class:`SceneObject` and, for two, the relation of ``objects[0]`` to ``objects[1]``."""

    objects: tuple[SceneObject, ...]
    relation: str | None = None

    @property
    def parsed(self) -> ParsedCaption:
        return ParsedCaption(tuple((o.colour, o.shape) for o in self.objects), self.relation)

    @property
    def caption(self) -> str:
        """The scene's exact caption in the benchmark grammar."""
        return self.parsed.text


def relation_gap(a: SceneObject, b: SceneObject, relation: str) -> float:
    """Signed gap (canvas fraction) by which ``a RELATION b`` holds: > 0 when it holds.

    For ``left of`` it is ``b``'s left edge minus ``a``'s right edge, and so on (y points down).
    Derived in the shapes-benchmark page (``book/shapes_benchmark.ipynb``), Eq. (data-eq-margin).
    """
    ax0, ay0, ax1, ay1 = a.box
    bx0, by0, bx1, by1 = b.box
    gaps = {"left of": bx0 - ax1, "right of": ax0 - bx1, "above": by0 - ay1, "below": ay0 - by1}
    if relation not in gaps:
        raise ValueError(f"unknown relation {relation!r}: expected one of {list(gaps)}")
    return gaps[relation]


@lru_cache(maxsize=None)
def split_captions(split: str, n_objects: int) -> tuple[ParsedCaption, ...]:
    """All captions with ``n_objects`` objects that the split may use, in a fixed order."""
    _check_split(split)
    caps = [c for c in all_captions() if len(c.objects) == n_objects]
    if split == "heldout":
        return tuple(c for c in caps if c.heldout)
    return tuple(c for c in caps if not c.heldout)


def _check_split(split) -> None:
    if not isinstance(split, str) or split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {list(SPLITS)}")


def _check_fraction(two_object_fraction) -> float:
    if isinstance(two_object_fraction, bool) or not isinstance(two_object_fraction, (int, float)):
        raise TypeError(f"two_object_fraction must be a number in [0, 1], got {type(two_object_fraction).__name__}")
    if not 0.0 <= float(two_object_fraction) <= 1.0:
        raise ValueError(f"two_object_fraction must be in [0, 1], got {two_object_fraction}")
    return float(two_object_fraction)


def place_objects(rng: np.random.Generator, parsed: ParsedCaption) -> Scene:
    """Sample sizes and centres for the objects of ``parsed`` so that its relation holds.

    One object: size in :data:`ONE_OBJECT_SIZE`, anywhere inside the border. Two objects: sizes in
    :data:`TWO_OBJECT_SIZE`; along the relation's axis the gap between the boxes is uniform in
    ``[RELATION_MARGIN, room]``; across it each object is placed independently.
    """
    if len(parsed.objects) == 1:
        (colour, shape), = parsed.objects
        s = rng.uniform(*ONE_OBJECT_SIZE)
        x, y = rng.uniform(BORDER + s / 2, 1 - BORDER - s / 2, size=2)
        return Scene((SceneObject(colour, shape, (float(x), float(y)), float(s)),), None)
    sa, sb = rng.uniform(*TWO_OBJECT_SIZE, size=2)
    room = 1 - 2 * BORDER - sa - sb
    gap = rng.uniform(RELATION_MARGIN, room)
    start = rng.uniform(BORDER, 1 - BORDER - (sa + gap + sb))
    # along the axis: the first-listed (leading) object, then the gap, then the other
    rel = parsed.relation
    a_first = rel in ("left of", "above")
    first, second = (sa, sb) if a_first else (sb, sa)
    c_first = start + first / 2
    c_second = start + first + gap + second / 2
    ca, cb = (c_first, c_second) if a_first else (c_second, c_first)
    # across the axis: independent
    oa = rng.uniform(BORDER + sa / 2, 1 - BORDER - sa / 2)
    ob = rng.uniform(BORDER + sb / 2, 1 - BORDER - sb / 2)
    if rel in ("left of", "right of"):
        pa, pb = (ca, oa), (cb, ob)
    else:
        pa, pb = (oa, ca), (ob, cb)
    (ca_, sha), (cb_, shb) = parsed.objects
    a = SceneObject(ca_, sha, (float(pa[0]), float(pa[1])), float(sa))
    b = SceneObject(cb_, shb, (float(pb[0]), float(pb[1])), float(sb))
    return Scene((a, b), rel)


def sample_scene(rng: np.random.Generator, split: str = "train", two_object_fraction: float = 0.5,
                 caption: str | None = None) -> Scene:
    """Sample a scene of ``split``: a caption uniform over the split's captions, then a geometry.

    ``rng`` is a ``numpy.random.Generator``. With probability ``two_object_fraction`` the scene
    has two objects. Pass ``caption`` to draw a geometry for that caption instead (any split).
    """
    _check_split(split)
    frac = _check_fraction(two_object_fraction)
    if caption is not None:
        return place_objects(rng, parse_caption(caption))
    n = 2 if rng.random() < frac else 1
    caps = split_captions(split, n)
    return place_objects(rng, caps[int(rng.integers(len(caps)))])


def scene_rng(split: str, seed: int, index: int) -> np.random.Generator:
    """The random generator of scene ``index`` of ``split`` for ``seed`` (streams never shared)."""
    _check_split(split)
    return np.random.default_rng([int(seed), _SPLIT_CODE[split], int(index)])


def scene_at(split: str, seed: int, index: int, two_object_fraction: float = 0.5) -> Scene:
    """Scene number ``index`` of ``split``: a pure function of ``(split, seed, index, fraction)``."""
    return sample_scene(scene_rng(split, seed, index), split, two_object_fraction)


def scene_for_caption(caption: str, seed: int = 0) -> Scene:
    """A geometry for ``caption`` (which must be in the grammar), deterministic in ``seed``."""
    return sample_scene(np.random.default_rng([int(seed), 99]), "train", 0.5, caption=caption)


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------
def check_resolution(resolution) -> tuple[int, ...]:
    """Validate ``resolution`` (an int or a tuple/list of ints) -> sorted tuple, smallest first.

    Each resolution must be an int in ``[MIN_RESOLUTION, MAX_RESOLUTION]`` (4 to 1024 px) and
    distinct from the others; ``TypeError`` / ``ValueError`` naming the value otherwise.
    """
    vals = resolution if isinstance(resolution, (tuple, list)) else (resolution,)
    if len(vals) == 0:
        raise ValueError("resolution must be a positive int or a non-empty tuple of them, got ()")
    out = []
    for r in vals:
        if isinstance(r, bool) or not isinstance(r, (int, np.integer)):
            raise TypeError(f"resolution must be a positive int or a tuple of positive ints, "
                            f"got {r!r} ({type(r).__name__})")
        if r <= 0:
            raise ValueError(f"resolution must be positive, got {r}")
        if not MIN_RESOLUTION <= r <= MAX_RESOLUTION:
            raise ValueError(f"resolution must be between {MIN_RESOLUTION} and {MAX_RESOLUTION} px, got {r}")
        out.append(int(r))
    if len(set(out)) != len(out):
        raise ValueError(f"resolutions must be distinct, got {tuple(out)}")
    return tuple(sorted(out))


def supersample_factor(size: int) -> int:
    """Sub-samples per pixel side at ``size`` px: ``max(MIN_SUPERSAMPLE, ceil(SAMPLE_GRID / size))``."""
    return max(MIN_SUPERSAMPLE, math.ceil(SAMPLE_GRID / size))


_SHAPE_ID = {s: i for i, s in enumerate(SHAPES)}


def _scene_params(scenes) -> dict[str, torch.Tensor]:
    """Pack scenes into (B, K=2) parameter tensors (absent second objects have present = 0)."""
    rows = []  # per scene and slot: cx, cy, s, present, shape, r, g, b
    for sc in scenes:
        slot = [[*o.centre, o.size, 1.0, float(_SHAPE_ID[o.shape]), *RGB[o.colour]] for o in sc.objects]
        slot += [[0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]] * (2 - len(slot))
        rows.append(slot)
    t = torch.tensor(rows, dtype=torch.float32)  # (B, 2, 8)
    return {"cx": t[..., 0], "cy": t[..., 1], "s": t[..., 2], "present": t[..., 3], "shape": t[..., 4],
            "rgb": t[..., 5:8]}


def half_widths(shape_id: torch.Tensor, cy: torch.Tensor, s: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Half-width of each object's cross-section along the horizontal lines ``y = rows``.

    ``shape_id, cy, s``: (B,); ``rows``: (G,) y positions. Returns (B, G), 0 where the line misses
    the object. A horizontal line at ``y`` meets every shape in one interval ``[cx - w, cx + w]``:

    * circle of radius ``h = s/2``: ``w = sqrt(h^2 - (y - cy)^2)``;
    * square: ``w = h`` for ``|y - cy| <= h``;
    * triangle, apex up at ``cy - h``, base ``2h`` at ``cy + h``: ``w = (y - cy + h) / 2``.

    Derived in the shapes-benchmark page, Eq. (data-eq-halfwidth).
    """
    dy = rows[None, :] - cy[:, None]          # (B, G)
    h = (s / 2)[:, None]
    inside = dy.abs() <= h
    circle = torch.sqrt((h * h - dy * dy).clamp(min=0))
    square = h.expand_as(dy)
    triangle = (dy + h) / 2
    sid = shape_id[:, None]
    w = torch.where(sid == _SHAPE_ID["circle"], circle, torch.where(sid == _SHAPE_ID["square"], square, triangle))
    return torch.where(inside, w, torch.zeros_like(w))


def coverage(shape_id: torch.Tensor, cx, cy, s, size: int) -> torch.Tensor:
    """Fraction of each pixel covered by each object: (B, size, size) in [0, 1], rows = y (down).

    Supersampled vertically (``supersample_factor(size)`` lines per pixel row) and exact
    horizontally: each line crosses the shape in one interval, whose overlap with each pixel's
    x-range is computed in closed form. The sample lines are the same for 16, 32 and 64 px, so a
    16 px coverage is exactly the 4 x 4 area average of the 64 px one.
    Derived in the shapes-benchmark page, Eq. (data-eq-coverage).
    """
    ss = supersample_factor(size)
    rows = (torch.arange(size * ss, dtype=torch.float32) + 0.5) / (size * ss)
    w = half_widths(shape_id, cy, s, rows)                       # (B, G)
    xl, xr = (cx[:, None] - w)[..., None], (cx[:, None] + w)[..., None]   # (B, G, 1)
    edges = torch.arange(size + 1, dtype=torch.float32) / size
    lo, hi = edges[:-1], edges[1:]                               # pixel x-ranges (size,)
    # a missed line has w = 0, so xl = xr and every overlap clamps to 0
    overlap = (torch.minimum(xr, hi) - torch.maximum(xl, lo)).clamp(min=0) * size   # (B, G, size)
    return rearrange(overlap, "b (r k) x -> b r k x", k=ss).mean(dim=2)


def single_thread():
    """Run the enclosed torch code on one CPU thread, restoring the thread count afterwards.

    Rendering and judging work on many small tensors; on one thread they are fast (thousands of
    images/s) and do not fight a training loop, or other processes, for the cores. Measured on a
    busy 2-core machine, two threads were several times *slower* than one for this work.
    """
    return torch_threads(1)


def render_batch(scenes, resolution, chunk: int = 128) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Render a list of scenes at once: ``(B, 3, R, R)`` in [-1, 1], or a tuple (smallest first).

    Scenes are processed at most ``chunk`` at a time, fewer at large resolutions, so that a
    chunk's largest temporary (``(chunk, R * supersample, R)`` floats) stays under 128 MiB; every
    scene is rendered on its own, so the chunking never changes a pixel. A request whose result
    would exceed :data:`MAX_RENDER_BYTES` is refused before any allocation. One thread
    (:func:`single_thread`).
    """
    sizes = check_resolution(resolution)
    check_count(chunk, "chunk")
    scenes = list(scenes)
    if len(scenes) == 0:
        raise ValueError("render_batch needs at least one scene")
    need = len(scenes) * 3 * sum(r * r for r in sizes) * 4
    if need > MAX_RENDER_BYTES:
        raise ValueError(f"rendering {len(scenes)} scenes at {sizes} px would need {need / 2 ** 30:.1f} GiB "
                         f"(more than {MAX_RENDER_BYTES / 2 ** 30:.0f} GiB): render fewer at once")
    top = sizes[-1]
    chunk = max(1, min(chunk, _CHUNK_ELEMENTS // (top * supersample_factor(top) * top)))
    with single_thread():
        parts = [_render_chunk(scenes[i:i + chunk], sizes) for i in range(0, len(scenes), chunk)]
    res = tuple(torch.cat([p[j] for p in parts]) for j in range(len(sizes)))
    return res[0] if len(res) == 1 else res


def _render_chunk(scenes, sizes) -> list[torch.Tensor]:
    p = _scene_params(scenes)
    out = []
    for r in sizes:
        cov = torch.stack([coverage(p["shape"][:, k], p["cx"][:, k], p["cy"][:, k], p["s"][:, k], r)
                           * p["present"][:, k, None, None] for k in range(2)], dim=1)   # (B, 2, R, R)
        # image = sum over objects of coverage * colour (objects never overlap)
        img = torch.einsum("bkhw,bkc->bchw", cov, p["rgb"])
        out.append((img.clamp(0, 1) * 2 - 1).contiguous())
    return out


def render(scene: Scene, sizes) -> list[torch.Tensor]:
    """Draw ``scene`` at each size in ``sizes`` (int or sequence): a list of ``(3, R, R)`` tensors in [-1, 1].

    The list follows the order of ``sizes``. Anti-aliased by supersampling (see module docstring).
    """
    req = list(sizes) if isinstance(sizes, (tuple, list)) else [sizes]
    check_resolution(req)
    imgs = render_batch([scene], tuple(req))
    imgs = imgs if isinstance(imgs, tuple) else (imgs,)
    by_size = dict(zip(sorted(req), imgs))
    return [by_size[r][0] for r in req]


# ---------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------
class ShapesDataset(torch.utils.data.Dataset):
    """The shapes benchmark as a ``torch.utils.data.Dataset``.

    ``ds[i]`` returns ``(image, caption)``: ``image`` a float tensor in [-1, 1] of shape
    ``(3, R, R)``, or, when ``resolution`` is a tuple, a tuple of such tensors, one per resolution,
    smallest first (the same scene at each). Item ``i`` is a pure function of
    ``(split, seed, i, two_object_fraction)``: same arguments, byte-identical images.

    Args:
        split: ``"train"``, ``"test"`` or ``"heldout"`` (see the module docstring).
        resolution: an int, or a tuple of ints for a cascade, each in [4, 1024] px
            (:func:`check_resolution`; refused when the dataset is built, before any rendering).
        length: number of items, in [1, 2**31 - 1].
        seed: selects the random streams (a different seed gives different scenes).
        two_object_fraction: probability that a scene has two objects.

    For speed, :meth:`batch` renders many items at once (what :func:`make_batch` uses).
    """

    def __init__(self, split: str = "train", resolution=32, length: int = 10_000, seed: int = 0,
                 two_object_fraction: float = 0.5):
        _check_split(split)
        self.resolutions = check_resolution(resolution)
        self.cascade = isinstance(resolution, (tuple, list))
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or not 0 < length <= MAX_LENGTH:
            raise ValueError(f"length must be an int in [1, {MAX_LENGTH}], got {length!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.split, self.length, self.seed = split, int(length), int(seed)
        self.two_object_fraction = _check_fraction(two_object_fraction)

    def __len__(self) -> int:
        return self.length

    def _index(self, i) -> int:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(i).__name__}")
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for a dataset of length {self.length}")
        return int(i)

    def scene(self, i: int) -> Scene:
        """The scene of item ``i`` (no rendering: cheap)."""
        return scene_at(self.split, self.seed, self._index(i), self.two_object_fraction)

    def __getitem__(self, i):
        imgs, caps = self.batch([i])
        if self.cascade:
            return tuple(x[0] for x in imgs), caps[0]
        return imgs[0], caps[0]

    def batch(self, indices):
        """Render items ``indices`` at once: ``(images (B, 3, R, R) or tuple of them, captions)``."""
        scenes = [self.scene(i) for i in indices]
        imgs = render_batch(scenes, self.resolutions)
        if self.cascade and not isinstance(imgs, tuple):
            imgs = (imgs,)
        return imgs, [s.caption for s in scenes]


def make_batch(batch_size: int, split: str = "train", resolution=32, seed: int = 0, start: int = 0,
               two_object_fraction: float = 0.5):
    """Items ``start .. start + batch_size - 1`` of ``ShapesDataset(split, resolution, seed=seed)``.

    Returns ``(images, captions)``: images ``(B, 3, R, R)`` in [-1, 1] (a tuple of them when
    ``resolution`` is a tuple), captions a list of ``B`` strings. The fast path for training loops.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    ds = ShapesDataset(split, resolution, length=start + batch_size, seed=seed,
                       two_object_fraction=two_object_fraction)
    return ds.batch(range(start, start + batch_size))


def render_captions(captions, resolution=32, seed: int = 0):
    """Render one scene per caption (a geometry sampled for each): ``(B, 3, R, R)`` or a tuple."""
    scenes = [scene_for_caption(c, seed=seed * 100_003 + i) for i, c in enumerate(captions)]
    return render_batch(scenes, resolution)


# ---------------------------------------------------------------------------------------------
# Command line: python -m imagen_edu.data.shapes bench
# ---------------------------------------------------------------------------------------------
def benchmark(sizes=(32, 64), batch_size: int = 256, n_batches: int = 4, threads: int | None = None) -> dict:
    """Images/s of :func:`make_batch` (scene sampling + rendering) at each size, on this machine.

    ``threads`` sets ``torch.set_num_threads`` for the measurement (restored afterwards); rendering
    itself always runs on one thread (:func:`single_thread`), so this mostly shows it has no effect.
    """
    with torch_threads(threads or None):
        out = {"batch_size": batch_size, "threads": torch.get_num_threads(), "images_per_s": {}}
        runs = [(str(r), r) for r in sizes] + [("16+32+64", (16, 32, 64))]
        for name, r in runs:
            make_batch(8, resolution=r)  # warm up
            t0 = time.perf_counter()
            for b in range(n_batches):
                make_batch(batch_size, resolution=r, start=b * batch_size)
            out["images_per_s"][name] = round(n_batches * batch_size / (time.perf_counter() - t0), 1)
    return out


PROG = "python -m imagen_edu.data.shapes"


def _main(argv=None) -> None:
    ap = ArgumentParser(prog=PROG, description="Shapes benchmark tools. 'bench' prints render speed as JSON.")
    ap.add_argument("command", choices=["bench"])
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args(argv)
    check_count(args.batch_size, "--batch-size")
    check_count(args.batches, "--batches")
    if args.threads is not None:
        check_count(args.threads, "--threads")
    print(json.dumps(benchmark(batch_size=args.batch_size, n_batches=args.batches, threads=args.threads)))


def main(argv=None) -> int:
    """``python -m imagen_edu.data.shapes bench ...``: the exit status (2 with one line on stderr for a
    bad argument; :func:`imagen_edu.errors.run_cli`)."""
    return run_cli(lambda: _main(argv), prog=PROG)


if __name__ == "__main__":
    raise SystemExit(main())
