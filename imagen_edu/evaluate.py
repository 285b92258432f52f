"""The project's own judge: does an image show what its shapes-benchmark caption says?

An analytic checker with no learned weights, so it shares nothing with any generator
(derived in the book's shapes-benchmark page, ``book/shapes_benchmark.ipynb``, Eq. (data-eq-features)):

1. **Segment by colour.** Pixels with value ``V = max(r, g, b) >= 0.5`` and saturation
   ``S = (V - min) / V >= 0.5`` are foreground; each gets the nearest of the six hues
   (0, 60, ..., 300 degrees). Anti-aliased edges keep their hue, so only their value drops.
2. **Connected components** (8-connected) of each colour; components smaller than
   ``min_area`` (a fraction of the canvas) are ignored as specks.
3. **Shape from geometry.** Every benchmark shape has a square bounding box; what differs is
   the *fill ratio* (area / box area: square 1, circle pi/4 ~ 0.785, triangle 1/2) and *where
   the mass is* (the centroid's height in the box from the top: 1/2 for circle and square,
   2/3 for an apex-up triangle). A component is a triangle when its mass sits low, else a
   square when its box is nearly full, else a circle (thresholds in :func:`_classify`).
4. **Relation from positions**: ``A left of B`` holds when A's box ends left of where B's box
   starts (their projections on the x axis are disjoint and in that order, with an optional
   ``margin``); likewise for the other relations (y points down).

Verdicts per caption (see :func:`attribute_accuracy`):

* ``colour``: every named colour is present;
* ``shape``: for every named ``(colour, shape)`` some object of that colour has that shape;
* ``relation``: two-object captions only (``None`` for one-object captions, whose mean is taken
  over two-object captions only, and ``None`` when there is none): the relation holds between
  the named objects;
* ``count``: the image has exactly as many objects as the caption names;
* ``all``: colour and shape and count, and the relation for two-object captions.

A **clean** object is a detected object whose box is roughly square and whose features lie
near its shape's prototype, with a tolerance that grows for small objects (:func:`is_clean`);
:func:`count_clean_objects` counts them per image.

The judge at work on the chapter-5 cascade: :func:`eval_captions` (test and heldout captions,
one- and two-object half and half), :func:`evaluate_cascade` (the accuracies that ``python -m
imagen_edu eval`` prints), :func:`evaluate_stage` (the same for a base stage alone) and
:func:`relation_loss_test` (does a base stage read the relation?).
The chapter-4 CLIP metrics :func:`clip_score` and :func:`rerank` are re-exported from
:mod:`imagen_edu.clip_eval`, so that every way of judging images is found here.

A mean over no caption is ``None`` (JSON ``null``), never ``nan`` or 0: the results are valid
JSON (``json.dumps(result, allow_nan=False)``) and never claim a score for captions that were not
there.

Run ``python -m imagen_edu.evaluate selftest --n 500`` for the judge's figures (JSON).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange

from . import text_encoders
from .arguments import ArgumentParser, check_count, check_seed
from .clip_eval import clip_score, rerank  # CLIP-based metrics (chapter 4), re-exported: every judge in one module
from .data.captions import COLOURS, SHAPES, converse_caption, parse_caption
from .data.shapes import make_batch, render_batch, scene_at, single_thread
from .errors import run_cli

__all__ = ["DetectedObject", "attribute_accuracy", "colour_masks", "connected_components", "count_clean_objects",
           "detect_objects", "detect_objects_batch", "is_clean", "relation_holds", "selftest", "verdict", "SHAPES",
           "clip_score", "rerank", "eval_captions", "evaluate_cascade", "evaluate_stage", "relation_loss_test"]

COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)  # hue order: index k has hue 60 k degrees
#: (fill ratio, centroid height in the box from the top) of each shape, and the feature scales
PROTOTYPES: dict[str, tuple[float, float]] = {"circle": (math.pi / 4, 0.5), "square": (1.0, 0.5),
                                              "triangle": (0.5, 2 / 3)}
FEATURE_SCALE: tuple[float, float] = (0.1, 0.05)
VALUE_THRESHOLD = 0.5
SATURATION_THRESHOLD = 0.5
MIN_AREA = 0.005


@dataclass(frozen=True)
class DetectedObject:
    """One object found in an image.

    ``centre`` is ``(x, y)`` in [0, 1] (y down); ``area`` the fraction of the canvas it covers;
    ``box`` ``(x0, y0, x1, y1)`` in [0, 1]; ``fill`` and ``mass_y`` the shape features;
    ``clean`` whether it looks like a clean benchmark object (near a prototype, square box).
    """

    colour: str
    shape: str
    centre: tuple[float, float]
    area: float
    box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    fill: float = 0.0
    mass_y: float = 0.0
    clean: bool = True


def _as_batch(images) -> torch.Tensor:
    """Images (N, 3, H, W) or (3, H, W) in [-1, 1] -> (N, 3, H, W) float in [0, 1]."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor of shape (N, 3, H, W) or (3, H, W) in [-1, 1], "
                        f"got {type(images).__name__}")
    if images.dim() == 3:
        images = images[None]
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (N, 3, H, W) or (3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be a float tensor in [-1, 1], got dtype {images.dtype}")
    return ((images.detach().float().cpu() + 1) / 2).clamp(0, 1)


def colour_masks(images) -> torch.Tensor:
    """Foreground mask of each colour: bool (N, 6, H, W), colours in :data:`COLOUR_NAMES` order.

    ``images``: (N, 3, H, W) in [-1, 1]. Step 1 of the judge.
    """
    x = _as_batch(images)
    v, _ = x.max(dim=1)
    mn, _ = x.min(dim=1)
    delta = v - mn
    sat = torch.where(v > 0, delta / v.clamp(min=1e-8), torch.zeros_like(v))
    r, g, b = x.unbind(dim=1)
    d = delta.clamp(min=1e-8)
    # the standard RGB -> hue formula, in units of 60 degrees
    hue = torch.where(v == r, ((g - b) / d) % 6, torch.where(v == g, (b - r) / d + 2, (r - g) / d + 4))
    idx = torch.round(hue).long() % 6
    fg = (v >= VALUE_THRESHOLD) & (sat >= SATURATION_THRESHOLD)
    return F.one_hot(idx, 6).permute(0, 3, 1, 2).bool() & fg[:, None]


def _run_max(lab: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Give every horizontal run of foreground pixels the largest label in the run. (M, H, W)."""
    M, H, W = lab.shape
    start = masks & ~F.pad(masks, (1, 0))[..., :W]             # a run starts where the left pixel is off
    run = torch.cumsum(start.flatten().long(), 0).reshape(M, H, W)   # globally unique run ids
    best = torch.zeros(int(run.max()) + 1).scatter_reduce(0, run.flatten(), lab.flatten(), "amax")
    return best[run] * masks


def connected_components(masks: torch.Tensor) -> torch.Tensor:
    """8-connected component labels of bool masks (M, H, W): int64 (M, H, W), 0 = background.

    Each foreground pixel starts with its own label; the largest label then spreads over each
    component by 3 x 3 max-pooling inside the mask (which crosses diagonals) alternated with
    taking the maximum along each horizontal and vertical run, until nothing changes.
    """
    M, H, W = masks.shape
    masks = masks.bool()
    fm = masks.float()
    lab = torch.arange(1, H * W + 1, dtype=torch.float32).reshape(1, H, W).expand(M, H, W) * fm
    masks_t = masks.transpose(1, 2)
    while True:
        new = F.max_pool2d(lab[:, None], 3, stride=1, padding=1)[:, 0] * fm
        new = _run_max(new, masks)
        new = _run_max(new.transpose(1, 2).contiguous(), masks_t).transpose(1, 2)
        if torch.equal(new, lab):
            return lab.long()
        lab = new.contiguous()


def _classify(fill: float, mass_y: float) -> tuple[str, float]:
    """Shape from the features -> (shape, scaled distance to that shape's prototype at large sizes).

    Triangle when the mass sits low in the box (``mass_y >= 0.58``, halfway between 1/2 and
    2/3); otherwise square when the box is nearly full (``fill >= 0.93``), else circle. The
    fill boundary sits nearer 1 than pi/4 because small digitised discs fill their box more
    than pi/4 (up to about 0.9 at 32 px).
    """
    if mass_y >= 0.58:
        shape = "triangle"
    else:
        shape = "square" if fill >= 0.93 else "circle"
    f0, m0 = PROTOTYPES[shape]
    return shape, math.hypot((fill - f0) / FEATURE_SCALE[0], (mass_y - m0) / FEATURE_SCALE[1])


def is_clean(shape: str, fill: float, mass_y: float, w: int, h: int) -> bool:
    """Whether a component of ``w x h`` pixels with these features looks like a clean ``shape``.

    Its box must be roughly square (aspect within [0.7, 1/0.7], or sides within 1 px) and its
    features within 1.5 tolerances of the shape's prototype (Eq. data-eq-features). The
    tolerances, 0.1 for fill and 0.05 for mass_y, grow by 1.5 / n and 0.5 / n for a box of
    ``n = min(w, h)`` px, because a small digitised shape departs from its continuous values
    (an 8 px triangle fills about 5/8 of its box, not 1/2).
    """
    n = max(1, min(w, h))
    square_box = abs(w - h) <= 1 or 0.7 <= w / h <= 1 / 0.7
    f0, m0 = PROTOTYPES[shape]
    d = math.hypot((fill - f0) / (FEATURE_SCALE[0] + 1.5 / n), (mass_y - m0) / (FEATURE_SCALE[1] + 0.5 / n))
    return bool(square_box and d < 1.5)


def detect_objects_batch(images, min_area: float = MIN_AREA) -> list[list[DetectedObject]]:
    """:func:`detect_objects` for a batch ``(N, 3, H, W)`` in [-1, 1]: one list per image.

    Runs on one CPU thread (see :func:`imagen_edu.data.shapes.single_thread`).
    """
    with single_thread():
        return _detect(images, min_area)


def _detect(images, min_area: float) -> list[list[DetectedObject]]:
    masks = colour_masks(images)                        # (N, 6, H, W)
    N, C, H, W = masks.shape
    planes = rearrange(masks, "n c h w -> (n c) h w")
    keep = planes.flatten(1).any(dim=1).nonzero()[:, 0]  # only colour planes with any pixel
    out: list[list[DetectedObject]] = [[] for _ in range(N)]
    if len(keep) == 0:
        return out
    lab = connected_components(planes[keep])            # (M, H, W)
    m_idx, ys, xs = lab.nonzero(as_tuple=True)
    key = m_idx * (H * W + 1) + lab[m_idx, ys, xs]
    uniq, inv = torch.unique(key, return_inverse=True)
    K = len(uniq)
    cnt = torch.zeros(K).index_add_(0, inv, torch.ones(len(inv)))
    sx = torch.zeros(K).index_add_(0, inv, xs.float())
    sy = torch.zeros(K).index_add_(0, inv, ys.float())

    def red(v, how, init):
        return torch.full((K,), init, dtype=torch.long).scatter_reduce(0, inv, v, how, include_self=False)

    x0, x1 = red(xs, "amin", W), red(xs, "amax", -1)
    y0, y1 = red(ys, "amin", H), red(ys, "amax", -1)
    plane = keep[uniq // (H * W + 1)]
    for k in (cnt >= min_area * H * W).nonzero()[:, 0].tolist():  # specks are dropped here
        area = cnt[k].item()
        n, c = divmod(int(plane[k]), C)
        w, h = int(x1[k] - x0[k]) + 1, int(y1[k] - y0[k]) + 1
        fill = area / (w * h)
        cy = sy[k].item() / area
        mass_y = (cy + 0.5 - int(y0[k])) / h
        shape, _ = _classify(fill, mass_y)
        out[n].append(DetectedObject(
            colour=COLOUR_NAMES[c], shape=shape,
            centre=((sx[k].item() / area + 0.5) / W, (cy + 0.5) / H), area=area / (H * W),
            box=(int(x0[k]) / W, int(y0[k]) / H, (int(x1[k]) + 1) / W, (int(y1[k]) + 1) / H),
            fill=fill, mass_y=mass_y, clean=is_clean(shape, fill, mass_y, w, h)))
    for objs in out:
        objs.sort(key=lambda o: -o.area)
    return out


def detect_objects(image, min_area: float = MIN_AREA) -> list[DetectedObject]:
    """The objects in one image ``(3, H, W)`` in [-1, 1], largest first.

    Each :class:`DetectedObject` has ``colour``, ``shape``, ``centre`` ``(x, y)`` in [0, 1] and
    ``area`` (fraction of the canvas). Components smaller than ``min_area`` are ignored.
    """
    if isinstance(image, torch.Tensor) and image.dim() == 4:
        if image.shape[0] != 1:
            raise ValueError(f"detect_objects takes one image (3, H, W); use detect_objects_batch for "
                             f"{tuple(image.shape)}")
        image = image[0]
    if isinstance(image, torch.Tensor) and image.dim() != 3:
        raise ValueError(f"image must have shape (3, H, W), got {tuple(image.shape)}")
    return detect_objects_batch(image, min_area)[0]


def count_clean_objects(images, min_area: float = MIN_AREA) -> list[int]:
    """Number of *clean* objects in each image of ``(N, 3, H, W)`` (or one ``(3, H, W)``).

    Clean: one saturated colour, at least ``min_area`` of the canvas, a roughly square box and
    fill/mass features near one of the three prototypes. An image "with one or two clean
    objects" that also has unclean blobs can be found with ``detect_objects_batch``.
    """
    return [sum(o.clean for o in objs) for objs in detect_objects_batch(images, min_area)]


def relation_holds(a: DetectedObject, b: DetectedObject, relation: str, margin: float = 0.0) -> bool:
    """Whether ``a RELATION b`` holds: their boxes' projections on the relation's axis are disjoint,
    in the stated order, with a gap of at least ``margin`` (fraction of the canvas; y points down)."""
    ax0, ay0, ax1, ay1 = a.box
    bx0, by0, bx1, by1 = b.box
    gaps = {"left of": bx0 - ax1, "right of": ax0 - bx1, "above": by0 - ay1, "below": ay0 - by1}
    if relation not in gaps:
        raise ValueError(f"unknown relation {relation!r}: expected one of {list(gaps)}")
    return gaps[relation] >= margin


def _pick(objs: list[DetectedObject], colour: str, shape: str) -> DetectedObject | None:
    """The object meant by ``(colour, shape)``: of that colour, the named shape preferred, largest first."""
    cands = [o for o in objs if o.colour == colour]
    if not cands:
        return None
    return max(cands, key=lambda o: (o.shape == shape, o.area))


def verdict(objs: list[DetectedObject], caption: str, margin: float = 0.0) -> dict:
    """The judge's verdict for one caption given the objects detected in its image."""
    parsed = parse_caption(caption)
    named = parsed.objects
    colour = all(any(o.colour == c for o in objs) for c, _ in named)
    shape = all(any(o.colour == c and o.shape == s for o in objs) for c, s in named)
    count = len(objs) == len(named)
    relation = None
    if parsed.relation is not None:
        a, b = _pick(objs, *named[0]), _pick(objs, *named[1])
        relation = bool(a is not None and b is not None and relation_holds(a, b, parsed.relation, margin))
    ok = colour and shape and count and (relation is None or relation)
    return {"caption": caption, "colour": colour, "shape": shape, "relation": relation, "count": count,
            "all": ok}


def attribute_accuracy(images, captions, margin: float = 0.0, min_area: float = MIN_AREA) -> dict:
    """Judge images against their captions: per-caption verdicts and mean accuracies.

    Args:
        images: (N, 3, H, W) float in [-1, 1] (or one (3, H, W)).
        captions: N captions in the shapes grammar (``ValueError`` otherwise).

    Returns a dict with ``"colour"``, ``"shape"``, ``"count"``, ``"all"`` (means over all N),
    ``"relation"`` (mean over the two-object captions only; ``None`` if there are none),
    ``"n"``, ``"n_two_object"`` and ``"verdicts"``: one dict per caption with booleans
    ``colour, shape, relation (None for one object), count, all``. See the module docstring.
    """
    x = _as_batch(images)
    if isinstance(captions, str):
        captions = [captions]
    captions = list(captions)
    if len(captions) != x.shape[0]:
        raise ValueError(f"got {x.shape[0]} images but {len(captions)} captions")
    for c in captions:
        parse_caption(c)  # fail before any work on a caption outside the grammar
    dets = detect_objects_batch(x * 2 - 1, min_area)
    verdicts = [verdict(o, c, margin) for o, c in zip(dets, captions)]
    n = len(verdicts)

    two = [v for v in verdicts if v["relation"] is not None]
    return {"colour": _share(verdicts, "colour"), "shape": _share(verdicts, "shape"),
            "relation": _share(two, "relation"), "count": _share(verdicts, "count"), "all": _share(verdicts, "all"),
            "n": n, "n_two_object": len(two), "verdicts": verdicts}


def _share(verdicts: list[dict], key: str, digits: int | None = None) -> float | None:
    """Share of ``verdicts`` whose ``key`` is true, rounded to ``digits``; ``None`` for no verdict
    (a mean over nothing is not a score: never ``nan``, which is not JSON, nor 0)."""
    if not verdicts:
        return None
    m = sum(bool(v[key]) for v in verdicts) / len(verdicts)
    return m if digits is None else round(m, digits)


# ---------------------------------------------------------------------------------------------
# Judging the cascade (chapter 5)
# ---------------------------------------------------------------------------------------------
def eval_captions(split: str, n: int, seed: int = 0) -> list[str]:
    """``n`` captions of ``split`` (``"test"`` or ``"heldout"``): one- and two-object half and half."""
    if split not in ("test", "heldout"):
        raise ValueError(f"split must be 'test' or 'heldout', got {split!r}")
    check_count(n, "n")
    h = n // 2
    one = [scene_at(split, seed, i, two_object_fraction=0.0).caption for i in range(n - h)]
    two = [scene_at(split, seed, 100_000 + i, two_object_fraction=1.0).caption for i in range(h)]
    return one + two


def evaluate_cascade(cascade, n: int = 200, *, guidance=None, steps=None, seed: int = 0,
                     splits=("test", "heldout"), batch_size: int = 256, progress: bool = True, **sample_kw) -> dict:
    """The judge's accuracies of a cascade's samples, one image per caption, per split.

    ``cascade`` is an :class:`~imagen_edu.cascade.ImagenCascade` (anything with
    ``sample(captions, n=1, ...) -> (N, 3, R, R)`` and ``resolution``). ``n`` (an int >= 1) captions
    per split, half with one object and half with two (:func:`eval_captions`; ``n = 1`` gives one
    one-object caption). Returns ``{split: {"all", "colour", "shape", "relation", "count",
    "all_one_object", "all_two_object", "n", "n_one_object", "n_two_object"}, "seconds_per_image":
    ..., "resolution": ..., "threads": ...}``; an accuracy over no caption (``relation`` and
    ``all_two_object`` when ``n = 1``) is ``None``, so the dict is valid JSON with
    ``allow_nan=False``.
    """
    check_count(n, "n")
    splits = tuple(splits)
    if not splits:
        raise ValueError("splits must name at least one of 'test', 'heldout'")
    for split in splits:
        if split not in ("test", "heldout"):
            raise ValueError(f"splits must be 'test' or 'heldout', got {split!r}")
    out: dict = {}
    total_t, total_n = 0.0, 0
    for split in splits:
        caps = eval_captions(split, n, seed)
        t0 = time.perf_counter()
        imgs = cascade.sample(caps, n=1, guidance=guidance, steps=steps, seed=seed, batch_size=batch_size,
                              progress=progress, **sample_kw)
        total_t += time.perf_counter() - t0
        total_n += len(caps)
        vs = attribute_accuracy(imgs, caps)["verdicts"]
        one = [v for v in vs if v["relation"] is None]
        two = [v for v in vs if v["relation"] is not None]
        out[split] = {"all": _share(vs, "all", 4), "colour": _share(vs, "colour", 4), "shape": _share(vs, "shape", 4),
                      "relation": _share(two, "relation", 4), "count": _share(vs, "count", 4),
                      "all_one_object": _share(one, "all", 4), "all_two_object": _share(two, "all", 4),
                      "n": len(caps), "n_one_object": len(one), "n_two_object": len(two)}
    out["seconds_per_image"] = round(total_t / max(1, total_n), 4)
    out["resolution"] = cascade.resolution
    out["threads"] = torch.get_num_threads()
    return out


class _StageAlone:
    """One stage and its encoder with a cascade's ``sample(captions, ...)`` and ``resolution``."""

    def __init__(self, stage, encoder):
        self.stage, self.encoder, self.resolution = stage, encoder, stage.config.resolution

    @torch.no_grad()
    def sample(self, captions, n=1, guidance=None, steps=None, seed=0, batch_size=256, progress=False, **kw):
        out = []
        for i in range(0, len(captions), batch_size):
            emb, mask = self.encoder.encode(captions[i:i + batch_size])
            g = torch.Generator().manual_seed(seed + i)
            out.append(self.stage.sample(emb, mask, guidance=guidance, steps=steps, generator=g, **kw))
        return torch.cat(out)


def evaluate_stage(stage, encoder=None, n: int = 200, *, guidance=None, steps=None, seed: int = 0,
                   splits=("test", "heldout"), batch_size: int = 256, **sample_kw) -> dict:
    """:func:`evaluate_cascade` of a base stage alone: its own samples, judged at its resolution.

    ``stage`` is a base :class:`~imagen_edu.stage.ImagenStage`, ``encoder`` its frozen text
    encoder (default: the stage's own, by name). The images of a batch of captions come from one
    generator seeded ``seed + k`` for the batch starting at caption ``k``. The comparisons of
    chapter 5c judge the base stage this way, so that no super-resolution stage mends or spoils
    what the base stage drew. Returns the dict of :func:`evaluate_cascade`.
    """
    if stage.config.is_sr:
        raise ValueError("evaluate_stage takes a base stage (a super-resolution stage needs a low-resolution input)")
    encoder = text_encoders.get(stage.config.text_encoder, device=str(stage.device)) if encoder is None else encoder
    return evaluate_cascade(_StageAlone(stage, encoder), n, guidance=guidance, steps=steps, seed=seed,
                            splits=splits, batch_size=batch_size, progress=False, **sample_kw)


@torch.no_grad()
def relation_loss_test(stage, encoder=None, n: int = 256, *, seed: int = 0, bins: int = 4) -> dict:
    """Does a base stage read which side each object goes? Its loss with the true and the converse caption.

    ``stage`` is a base :class:`~imagen_edu.stage.ImagenStage`. Renders ``n`` two-object
    ``train`` scenes at the stage's resolution and computes the diffusion loss
    (:meth:`~imagen_edu.stage.ImagenStage.training_loss`, no text dropout) three times with the
    *same* time steps and noise: with the true captions, with the relation flipped
    (:func:`~imagen_edu.data.captions.converse_caption`, which describes the mirrored scene, so a
    model that places objects by the caption must do worse), and with the null text. ``bins``
    equal ranges of ``t`` are reported separately (sides are decided at large ``t``).
    ``encoder`` defaults to the stage's own.

    Returns ``{"t_ranges": [(lo, hi), ...], "true": [...], "flipped": [...], "null": [...]}``.
    """
    check_count(n, "n")
    check_count(bins, "bins")
    cfg = stage.config
    if cfg.is_sr:
        raise ValueError("relation_loss_test takes a base stage (no lowres input)")
    encoder = text_encoders.get(cfg.text_encoder, device=str(stage.device)) if encoder is None else encoder
    scenes = [scene_at("train", seed, i, two_object_fraction=1.0) for i in range(n)]
    x0 = render_batch(scenes, cfg.resolution).to(stage.device)
    caps = [s.caption for s in scenes]
    emb, mask = encoder.encode(caps)
    femb, fmask = encoder.encode([converse_caption(c) for c in caps])
    T = cfg.timesteps
    edges = [round(T * k / bins) for k in range(bins + 1)]
    out = {"t_ranges": [], "true": [], "flipped": [], "null": []}
    keep, drop = torch.zeros(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)
    for lo, hi in zip(edges[:-1], edges[1:]):
        g = torch.Generator().manual_seed(seed + lo)
        t = torch.randint(lo, hi, (n,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        common = dict(t=t, noise=noise)
        out["t_ranges"].append((lo, hi))
        out["true"].append(float(stage.training_loss(x0, emb, mask, drop=keep, **common)))
        out["flipped"].append(float(stage.training_loss(x0, femb, fmask, drop=keep, **common)))
        out["null"].append(float(stage.training_loss(x0, emb, mask, drop=drop, **common)))
    return out


# ---------------------------------------------------------------------------------------------
# Self test: python -m imagen_edu.evaluate selftest --n 500
# ---------------------------------------------------------------------------------------------
def selftest(n: int = 500, seed: int = 0) -> dict:
    """The judge on rendered benchmark images: clean, shuffled captions, blurred and noisy.

    Returns ``{condition: {"all", "colour", "shape", "relation", "count"}}`` rounded to 4 digits.
    """
    check_count(n, "n")
    check_seed(seed, "seed")
    # torchvision takes seconds to import and only this self test blurs: imported here, not with the judge
    from torchvision.transforms.functional import gaussian_blur

    def summary(images, caps):
        r = attribute_accuracy(images, caps)
        return {k: None if r[k] is None else round(r[k], 4) for k in ("all", "colour", "shape", "relation", "count")}

    g = torch.Generator().manual_seed(seed)
    out = {"n": n}
    for r in (32, 64):
        imgs, caps = make_batch(n, "test", r, seed=seed)
        out[f"test_{r}px"] = summary(imgs, caps)
        if r == 64:
            perm = torch.randperm(n, generator=g).tolist()
            out["test_64px_shuffled_captions"] = summary(imgs, [caps[i] for i in perm])
            out["test_64px_blur_sigma1"] = summary(gaussian_blur(imgs, [7, 7], [1.0, 1.0]), caps)
            noisy = (imgs + 0.1 * torch.randn(imgs.shape, generator=g)).clamp(-1, 1)
            out["test_64px_noise_0.1"] = summary(noisy, caps)
    imgs, caps = make_batch(n, "heldout", 32, seed=seed)
    out["heldout_32px"] = summary(imgs, caps)
    imgs, caps = make_batch(n, "test", 16, seed=seed)
    out["test_16px"] = summary(imgs, caps)
    return out


PROG = "python -m imagen_edu.evaluate"


def _main(argv=None) -> None:
    ap = ArgumentParser(prog=PROG, description="The shapes judge. 'selftest' prints its accuracy figures as JSON.")
    ap.add_argument("command", choices=["selftest"])
    ap.add_argument("--n", type=int, default=500, help="images per condition (an int >= 1)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    check_count(args.n, "--n")
    check_seed(args.seed, "--seed")
    print(json.dumps(selftest(args.n, args.seed), allow_nan=False))


def main(argv=None) -> int:
    """``python -m imagen_edu.evaluate selftest [--n N] [--seed S]``: the exit status (2 with one
    line on stderr for a bad argument; :func:`imagen_edu.errors.run_cli`)."""
    return run_cli(lambda: _main(argv), prog=PROG)


if __name__ == "__main__":
    raise SystemExit(main())
