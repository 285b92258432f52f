"""The book's static pictures: package source listings, attention heatmaps, image grids, plots.

* source: :func:`show_source` (the book renders package code from the package, never a copy)
  and :func:`show_solutions` (the appendix "Exercise solutions");
* attention maps: :func:`attention_heatmap`, :func:`attention_grid` (chapter 1; reused by the
  language model of chapter 2 and the U-Net's cross-attention);
* images: :func:`show_grid`, :func:`show_detections` (the data layer and every image chapter);
* chapter 5: :func:`guidance_sweep_plot` and the diversity it plots, :func:`sample_diversity`.

The interactive explorers live in :mod:`imagen_edu.widgets`, the tensor-to-picture conversion in
:mod:`imagen_edu.pixels` and the solutions' listing and checking in :mod:`imagen_edu.exercises`;
their names are re-exported here, so ``viz.attention_explorer``, ``viz.to_display``,
``viz.check_solutions`` and the rest keep working.
"""

from __future__ import annotations

import inspect
import textwrap

import matplotlib.pyplot as plt
import numpy as np
import torch
from einops import rearrange
from IPython.display import Code, Markdown, display
from matplotlib.patches import Rectangle

from . import evaluate
from .exercises import check_solutions, solution_functions
from .pixels import to_display
from .widgets import attention_explorer, image_search_widget, prompt_widget

__all__ = [
    "show_source", "show_solutions", "solution_functions", "check_solutions",
    "attention_heatmap", "attention_grid", "attention_explorer",
    "to_display", "show_grid", "show_detections", "image_search_widget",
    "sample_diversity", "guidance_sweep_plot", "prompt_widget",
]


# ---------------------------------------------------------------------------------------------
# Package source (every chapter) and the reference solutions (the appendix "Exercise solutions")
# ---------------------------------------------------------------------------------------------
def show_source(obj) -> None:
    """Display the source of a package function or class, syntax-highlighted in a notebook.

    The book never pastes package code twice: it renders it from the package with this.
    """
    display(Code(inspect.getsource(obj), language="python"))


def show_solutions(module, heading: str) -> None:
    """Display every reference solution of an exercise module under a heading.

    For each ``solution_X``: the task (the docstring of ``check_X``), the idea (the solution's own
    docstring), its source and the check's verdict. Nothing is shown for a module without solutions.
    """
    sols = solution_functions(module)
    if not sols:
        return
    verdicts = check_solutions(module)
    display(Markdown(f"## {heading}"))
    for name, fn in sols:
        stem = name[len("solution_"):]
        check = getattr(module, "check_" + stem, None)
        task = inspect.getdoc(check) if check is not None else ""
        idea = inspect.getdoc(fn) or ""
        text = f"**{stem.replace('_', ' ').capitalize()}.** {task}\n\n*Idea:* {idea}"
        if name in verdicts:
            text += f"\n\n*Check:* `{verdicts[name]!r}`"
        display(Markdown(text))
        show_source(fn)


# ---------------------------------------------------------------------------------------------
# Attention maps (chapter 1; reused by the language model and the U-Net's cross-attention)
# ---------------------------------------------------------------------------------------------
def _as_numpy_2d(w):
    w = w.detach().cpu().numpy() if hasattr(w, "detach") else np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"attention weights must be 2-D (Tq, Tk) here, got shape {tuple(w.shape)}")
    return w


def attention_heatmap(weights, query_labels=None, key_labels=None, ax=None, title=None,
                      cmap="viridis", annotate=False, vmax=None):
    """Draw one attention map: rows are queries, columns are keys.

    Args:
        weights: ``(Tq, Tk)`` tensor or array (one head of one example).
        query_labels, key_labels: token strings for the rows and columns (optional).
        ax: a matplotlib axis to draw on (a new figure if ``None``).
        title: the axis title (also the figure's alt text in the book).
        annotate: write each weight in its cell.
        vmax: colour scale maximum (default: the largest weight).

    Returns:
        the matplotlib axis.
    """
    w = _as_numpy_2d(weights)
    if ax is None:
        _, ax = plt.subplots(figsize=(min(0.45 * w.shape[1] + 2.0, 10.0), min(0.3 * w.shape[0] + 1.5, 6.0)))
    im = ax.imshow(w, cmap=cmap, vmin=0.0, vmax=vmax if vmax is not None else max(float(w.max()), 1e-9),
                   aspect="auto")
    for labels, n, setter, rot in ((query_labels, w.shape[0], ax.set_yticks, 0),
                                   (key_labels, w.shape[1], ax.set_xticks, 90)):
        if labels is not None:
            if len(labels) != n:
                raise ValueError(f"got {len(labels)} labels for an axis of length {n}")
            setter(range(n), labels, rotation=rot)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    if annotate:
        for i in range(w.shape[0]):
            for j in range(w.shape[1]):
                ax.text(j, i, f"{w[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if w[i, j] < 0.6 * (vmax or w.max()) else "black")
    if title:
        ax.set_title(title)
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return ax


def attention_grid(weights, query_labels=None, key_labels=None, title=None, cell=2.6):
    """All heads of all layers in one figure: ``weights`` is a list over layers of ``(H, Tq, Tk)``.

    Returns the matplotlib figure (rows = layers, columns = heads).
    """
    n_layers, n_heads = len(weights), weights[0].shape[0]
    fig, axes = plt.subplots(n_layers, n_heads, figsize=(cell * n_heads + 1, cell * n_layers + 0.8),
                             squeeze=False, constrained_layout=True)
    for li, w_layer in enumerate(weights):
        if w_layer.shape[0] != n_heads:
            raise ValueError(f"every layer needs {n_heads} heads, layer {li} has {w_layer.shape[0]}")
        for hi in range(n_heads):
            ax = axes[li][hi]
            w = _as_numpy_2d(w_layer[hi])
            ax.imshow(w, cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_title(f"layer {li}, head {hi}", fontsize=9)
            ax.set_xticks(range(w.shape[1]), key_labels if key_labels is not None else range(w.shape[1]),
                          rotation=90, fontsize=7)
            ax.set_yticks(range(w.shape[0]), query_labels if query_labels is not None else range(w.shape[0]),
                          fontsize=7)
    if title:
        fig.suptitle(title)
    return fig


# ---------------------------------------------------------------------------------------------
# Image grids (the data layer; used by every image chapter)
# ---------------------------------------------------------------------------------------------
def show_grid(images, captions=None, ncol: int = 8, title: str | None = None, cell: float = 1.6,
              fontsize: int = 7, axes=None):
    """Show images in [-1, 1] (``(N, 3, H, W)`` tensor, or a list/tuple of such tensors) in a grid.

    ``captions``: optional list of N strings written under the images (wrapped). Pixels are drawn
    as blocks (no smoothing), so 16 px images look like 16 px images. Returns the figure.
    A list of tensors of different sizes (e.g. one per cascade stage) is shown one per row.
    """
    if isinstance(images, (list, tuple)):
        rows = [to_display(t) for t in images]
        if captions is None or isinstance(captions[0], str):
            captions = [captions] * len(rows) if captions is not None else [None] * len(rows)
        ncol = max(len(r) for r in rows)
        fig, axs = plt.subplots(len(rows), ncol, figsize=(cell * ncol, cell * len(rows) * 1.25), squeeze=False)
        for i, (r, caps) in enumerate(zip(rows, captions)):
            _fill_axes(axs[i], r, caps, fontsize)
    else:
        imgs = to_display(images)
        n = len(imgs)
        ncol = max(1, min(ncol, n))
        nrow = (n + ncol - 1) // ncol
        if captions is not None and len(captions) != n:
            raise ValueError(f"got {n} images but {len(captions)} captions")
        fig, axs = plt.subplots(nrow, ncol, figsize=(cell * ncol, cell * nrow * (1.35 if captions else 1.0)),
                                squeeze=False)
        _fill_axes(axs.flatten(), imgs, captions, fontsize)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _fill_axes(axs, imgs, captions, fontsize):
    for k, ax in enumerate(axs):
        ax.axis("off")
        if k < len(imgs):
            ax.imshow(imgs[k], interpolation="nearest")
            if captions is not None and captions[k]:
                ax.set_title("\n".join(textwrap.wrap(captions[k], 22)), fontsize=fontsize)


def show_detections(image, objects=None, caption: str | None = None, ax=None, title: str | None = None):
    """Draw an image with the judge's detections (boxes and labels) from ``imagen_edu.evaluate``.

    ``image``: (3, H, W) in [-1, 1]; ``objects``: a list of ``DetectedObject`` (detected here if
    None). With a ``caption`` the judge's verdict is shown in the title. Returns the axes.
    """
    img = to_display(image)[0]
    H, W = img.shape[:2]
    if objects is None:
        objects = evaluate.detect_objects(image)
    if ax is None:
        _, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(img, interpolation="nearest", extent=(0, 1, 1, 0))
    for o in objects:
        x0, y0, x1, y1 = o.box
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="white", lw=1,
                               ls="-" if o.clean else "--"))
        ax.plot(*o.centre, "w+", ms=6)
        ax.text(x0, max(y0 - 0.01, 0.04), f"{o.colour} {o.shape}", color="white", fontsize=7, va="bottom")
    ax.set_xlim(0, 1)
    ax.set_ylim(1, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    if caption is not None:
        v = evaluate.verdict(objects, caption)
        marks = " ".join(f"{k}:{'-' if v[k] is None else ('✓' if v[k] else '✗')}"
                         for k in ("colour", "shape", "relation", "count"))
        ax.set_title(f"{caption}\n{marks}", fontsize=7)
    elif title:
        ax.set_title(title, fontsize=8)
    return ax


# ---------------------------------------------------------------------------------------------
# Chapter 5: sample diversity and the guidance sweep
# ---------------------------------------------------------------------------------------------
def sample_diversity(images, n_per_prompt: int) -> float:
    """Mean pairwise L2 distance between samples of the same prompt (chapter 5's diversity).

    ``images (P * k, 3, H, W)`` in [-1, 1], prompt-major as :meth:`imagen_edu.imagen.ImagenCascade.sample`
    returns them (the ``k = n_per_prompt`` samples of prompt 0 first). For each prompt, the mean of
    ``||x_i - x_j||_2`` (over all pixels) over its ``k (k - 1) / 2`` pairs; then the mean over prompts.
    0 when every prompt gives identical images. Derived in chapter 5, Eq. (ch5-eq-diversity).
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"images must be a tensor (P * k, C, H, W), got {getattr(images, 'shape', type(images))}")
    if isinstance(n_per_prompt, bool) or not isinstance(n_per_prompt, int) or n_per_prompt < 2:
        raise ValueError(f"n_per_prompt must be an int >= 2 (pairs are needed), got {n_per_prompt!r}")
    if images.shape[0] % n_per_prompt:
        raise ValueError(f"{images.shape[0]} images are not a whole number of groups of {n_per_prompt}")
    x = rearrange(images.detach().double().cpu(), "(p k) c h w -> p k (c h w)", k=n_per_prompt)
    d = torch.cdist(x, x)                                             # (P, k, k)
    iu = torch.triu_indices(n_per_prompt, n_per_prompt, offset=1)
    return float(d[:, iu[0], iu[1]].mean())


def guidance_sweep_plot(ws, accuracy, diversity, ax=None, title: str | None = None,
                        xlabel: str = "sample diversity (mean pairwise L2 distance, same prompt)",
                        ylabel: str = "judge accuracy ('all')"):
    """Accuracy against diversity, one point per guidance weight ``w``, joined in order of ``w``.

    The toy analogue of the FID vs CLIP-score curves of Saharia et al. 2022 (their Fig. 4):
    each point is labelled with its ``w`` and coloured along ``cividis`` by ``w``. Returns the axis.
    """
    ws, acc, div = (np.asarray(v, dtype=float) for v in (ws, accuracy, diversity))
    if not len(ws) == len(acc) == len(div) or len(ws) == 0:
        raise ValueError(f"ws, accuracy and diversity need the same non-zero length, got "
                         f"{len(ws)}, {len(acc)}, {len(div)}")
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(div, acc, "-", c="0.6", lw=1, zorder=1)
    sc = ax.scatter(div, acc, c=ws, cmap="cividis", s=60, edgecolors="k", zorder=2)
    for w, x, y in zip(ws, div, acc):
        ax.annotate(f"w={w:g}", (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.figure.colorbar(sc, ax=ax, label="guidance weight w", fraction=0.05)
    if title:
        ax.set_title(title, fontsize=10)
    return ax

