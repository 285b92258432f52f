"""Pictures shared by the chapters: package source display, image grids, heatmaps."""

from __future__ import annotations

import inspect


def show_source(obj) -> None:
    """Display the source of a package function or class, syntax-highlighted in a notebook.

    The book never pastes package code twice: it renders it from the package with this.
    """
    src = inspect.getsource(obj)
    try:
        from IPython.display import Code, display

        display(Code(src, language="python"))
    except ImportError:  # plain Python
        print(src)


# ---------------------------------------------------------------------------------------------
# Attention maps (chapter 1; reused by the language model and the U-Net's cross-attention)
# ---------------------------------------------------------------------------------------------
def _as_numpy_2d(w):
    import numpy as np

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
    import matplotlib.pyplot as plt

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
    import matplotlib.pyplot as plt

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


def _html_weights_row(tokens, row, query):
    """Key tokens as coloured chips, opacity = weight, with the weight under each chip."""
    import html as _html

    top = max(float(max(row)), 1e-9)
    cells = []
    for tok, w in zip(tokens, row):
        a = float(w) / top
        fg = "white" if a > 0.55 else "black"
        cells.append(
            f'<td style="padding:2px;text-align:center">'
            f'<div style="background:rgba(31,119,180,{a:.3f});color:{fg};padding:4px 6px;'
            f'border-radius:4px;font-family:monospace">{_html.escape(str(tok))}</div>'
            f'<div style="font-size:11px;color:#555">{float(w):.2f}</div></td>')
    return (f'<div style="margin:4px 0">query <b style="font-family:monospace">{_html.escape(str(query))}'
            f'</b> attends to:</div><table style="border-collapse:collapse"><tr>{"".join(cells)}</tr></table>')


def _html_matrix(qtokens, ktokens, w):
    """A whole ``(Tq, Tk)`` map as a small HTML table (rows = queries)."""
    import html as _html

    head = "".join(f'<th style="writing-mode:vertical-rl;transform:rotate(180deg);font-weight:normal;'
                   f'font-family:monospace;font-size:11px;padding:1px">{_html.escape(str(t))}</th>'
                   for t in ktokens)
    rows = []
    for qi, qt in enumerate(qtokens):
        cells = "".join(f'<td title="{float(x):.2f}" style="width:16px;height:16px;padding:0;'
                        f'background:rgba(31,119,180,{float(x):.3f})"></td>' for x in w[qi])
        rows.append(f'<tr><th style="text-align:right;font-weight:normal;font-family:monospace;'
                    f'font-size:11px;padding:0 4px">{_html.escape(str(qt))}</th>{cells}</tr>')
    return f'<table style="border-collapse:collapse"><tr><th></th>{head}</tr>{"".join(rows)}</table>'


def attention_explorer(weights, query_tokens, key_tokens=None, layer_names=None, query=-1):
    """An ipywidgets explorer of attention maps: pick a layer, a head and a query token.

    Everything is precomputed as small HTML widgets and the controls are linked on the
    JavaScript side (``jslink`` to ``Stack.selected_index``), so the explorer works live in
    JupyterLab *and* in a static HTML page built from the saved widget state, with no kernel.

    Args:
        weights: a list over layers of ``(H, Tq, Tk)`` attention weights (one example).
        query_tokens: the ``Tq`` query token strings.
        key_tokens: the ``Tk`` key token strings (default: the query tokens, self-attention).
        layer_names: optional names for the layers (default ``"layer 0"``, ...).
        query: the index of the query token selected at first (default: the last one).

    Returns:
        an ``ipywidgets.VBox`` (display it, or leave it as the last expression of a cell).
    """
    import ipywidgets as W

    key_tokens = list(query_tokens if key_tokens is None else key_tokens)
    query_tokens = list(query_tokens)
    n_heads = weights[0].shape[0]
    layer_names = layer_names or [f"layer {i}" for i in range(len(weights))]
    for li, w in enumerate(weights):
        if tuple(w.shape) != (n_heads, len(query_tokens), len(key_tokens)):
            raise ValueError(f"layer {li}: expected weights of shape (H={n_heads}, Tq={len(query_tokens)}, "
                             f"Tk={len(key_tokens)}), got {tuple(w.shape)}")
    layer_dd = W.Dropdown(options=layer_names, index=0, description="layer")
    head_dd = W.Dropdown(options=[f"head {h}" for h in range(n_heads)], index=0, description="head")
    q0 = range(len(query_tokens))[query]  # raises IndexError for a bad index
    # widgets match options by label, so repeated tokens ("a ... a") get their position appended
    labels = [f"{t}" if query_tokens.count(t) == 1 else f"{t} ({i})" for i, t in enumerate(query_tokens)]
    query_tb = W.ToggleButtons(options=list(zip(labels, range(len(labels)))), index=q0,
                               description="query", style={"button_width": "auto"})
    links, layer_pages = [], []
    for w in weights:
        w = w.detach().cpu().tolist() if hasattr(w, "detach") else [[list(r) for r in h] for h in w]
        head_pages = []
        for h in range(n_heads):
            rows = W.Stack([W.HTML(_html_weights_row(key_tokens, w[h][qi], qt))
                            for qi, qt in enumerate(query_tokens)], selected_index=q0)
            links.append(W.jslink((query_tb, "index"), (rows, "selected_index")))
            head_pages.append(W.VBox([rows, W.HTML(_html_matrix(query_tokens, key_tokens, w[h]))]))
        heads = W.Stack(head_pages, selected_index=0)
        links.append(W.jslink((head_dd, "index"), (heads, "selected_index")))
        layer_pages.append(heads)
    layers = W.Stack(layer_pages, selected_index=0)
    links.append(W.jslink((layer_dd, "index"), (layers, "selected_index")))
    box = W.VBox([W.HBox([layer_dd, head_dd]), query_tb, layers])
    box._links = links  # keep the links alive as long as the explorer
    return box


# ---------------------------------------------------------------------------------------------
# Image grids (the data layer; used by every image chapter)
# ---------------------------------------------------------------------------------------------
def to_display(images):
    """Images in [-1, 1], ``(N, 3, H, W)``, ``(3, H, W)`` or ``(N, 1, H, W)`` -> numpy ``(N, H, W, 3)`` in [0, 1]."""
    import torch
    from einops import rearrange

    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor in [-1, 1], got {type(images).__name__}")
    x = images.detach().float().cpu()
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (N, 3, H, W), (N, 1, H, W) or (3, H, W), got {tuple(images.shape)}")
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return rearrange(((x + 1) / 2).clamp(0, 1), "n c h w -> n h w c").numpy()


def show_grid(images, captions=None, ncol: int = 8, title: str | None = None, cell: float = 1.6,
              fontsize: int = 7, axes=None):
    """Show images in [-1, 1] (``(N, 3, H, W)`` tensor, or a list/tuple of such tensors) in a grid.

    ``captions``: optional list of N strings written under the images (wrapped). Pixels are drawn
    as blocks (no smoothing), so 16 px images look like 16 px images. Returns the figure.
    A list of tensors of different sizes (e.g. one per cascade stage) is shown one per row.
    """
    import textwrap

    import matplotlib.pyplot as plt

    if isinstance(images, (list, tuple)):
        rows = [to_display(t) for t in images]
        if captions is None or isinstance(captions[0], str):
            captions = [captions] * len(rows) if captions is not None else [None] * len(rows)
        ncol = max(len(r) for r in rows)
        fig, axs = plt.subplots(len(rows), ncol, figsize=(cell * ncol, cell * len(rows) * 1.25), squeeze=False)
        for i, (r, caps) in enumerate(zip(rows, captions)):
            _fill_axes(axs[i], r, caps, fontsize, textwrap)
    else:
        imgs = to_display(images)
        n = len(imgs)
        ncol = max(1, min(ncol, n))
        nrow = (n + ncol - 1) // ncol
        if captions is not None and len(captions) != n:
            raise ValueError(f"got {n} images but {len(captions)} captions")
        fig, axs = plt.subplots(nrow, ncol, figsize=(cell * ncol, cell * nrow * (1.35 if captions else 1.0)),
                                squeeze=False)
        _fill_axes(axs.flatten(), imgs, captions, fontsize, textwrap)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _fill_axes(axs, imgs, captions, fontsize, textwrap):
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
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from . import evaluate

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
# Image search (chapter 4: CLIP retrieval)
# ---------------------------------------------------------------------------------------------
def _png_data_uri(img) -> str:
    """A numpy ``(H, W, 3)`` image in [0, 1] as an inline PNG ``data:`` URI."""
    import base64
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    plt.imsave(buf, img, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image_search_widget(images, search, options, k: int = 5, value: str | None = None, scale: int = 3):
    """A caption box (type one, or pick one of ``options``) that shows the top ``k`` images.

    Args:
        images: ``(N, 3, H, W)`` in [-1, 1], the gallery (converted to PNGs once).
        search: ``search(caption) -> list of (index, score)`` best first; it is called when the
            caption changes (precompute the gallery's embeddings so this is cheap).
        options: captions offered in the box's drop-down list.
        k: images shown per query.
        value: the initial caption (default: the first option).
        scale: pixel magnification of the shown images.

    Returns:
        An ipywidgets ``VBox``; the built HTML shows the initial query's result.
    """
    import html as _html

    import ipywidgets as W

    imgs = to_display(images)
    uris = [None] * len(imgs)
    size = imgs.shape[1] * scale

    def uri(i):
        if uris[i] is None:
            uris[i] = _png_data_uri(imgs[i])
        return uris[i]

    def render(caption: str) -> str:
        try:
            hits = list(search(caption))[:k]
        except ValueError as err:  # e.g. a word outside the vocabulary
            return f"<p style='color:#b00'>{_html.escape(str(err))}</p>"
        cells = "".join(
            f"<div style='display:inline-block;margin:4px;text-align:center;font:11px sans-serif'>"
            f"<img src='{uri(i)}' width='{size}' height='{size}' style='image-rendering:pixelated' "
            f"alt='result {r + 1} for {_html.escape(caption)}'><br>#{r + 1}: {s:.1f}</div>"
            for r, (i, s) in enumerate(hits))
        return f"<div><b>{_html.escape(caption)}</b><br>{cells}</div>"

    options = list(options)
    start = value if value is not None else options[0]
    box = W.Combobox(value=start, options=options, ensure_option=False, placeholder="type a caption",
                     description="caption:", layout=W.Layout(width="480px"))
    out = W.HTML(value=render(start))

    def on_change(change):
        if change["name"] == "value" and change["new"]:
            out.value = render(change["new"])

    box.observe(on_change, names="value")
    return W.VBox([box, out])


# ---------------------------------------------------------------------------------------------
# Exercise solutions (the appendix "Exercise solutions" and each chapter's hidden solution cells)
# ---------------------------------------------------------------------------------------------
def solution_functions(module) -> list:
    """The reference solutions of an exercise module (``imagen_edu.exercises.chNN``).

    Returns ``[(name, function), ...]`` for every ``solution_*`` function the module defines, in
    the order of its source (the order of the chapter's exercises).
    """
    found = [(n, f) for n, f in vars(module).items()
             if n.startswith("solution_") and inspect.isfunction(f) and f.__module__ == module.__name__]
    return sorted(found, key=lambda nf: inspect.getsourcelines(nf[1])[1])


def check_solutions(module) -> dict:
    """Run each ``solution_X`` of an exercise module through the module's ``check_X``.

    Returns ``{name: Result}`` for the solutions that have a check; raises ``AssertionError``
    naming the first solution that fails its own check.
    """
    results = {}
    for name, fn in solution_functions(module):
        check = getattr(module, "check_" + name[len("solution_"):], None)
        if check is None:
            continue
        res = check(fn, verbose=False)
        if not res:
            raise AssertionError(f"{module.__name__}.{name} fails its check: {res!r}")
        results[name] = res
    return results


def show_solutions(module, heading: str) -> None:
    """Display every reference solution of an exercise module under a heading.

    For each ``solution_X``: the task (the docstring of ``check_X``), the idea (the solution's own
    docstring), its source and the check's verdict. Nothing is shown for a module without solutions.
    """
    sols = solution_functions(module)
    if not sols:
        return
    from IPython.display import Markdown, display

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
# Chapter 5: guidance sweeps, sample diversity and the prompt widget
# ---------------------------------------------------------------------------------------------
def sample_diversity(images, n_per_prompt: int) -> float:
    """Mean pairwise L2 distance between samples of the same prompt (chapter 5's diversity).

    ``images (P * k, 3, H, W)`` in [-1, 1], prompt-major as :meth:`imagen_edu.imagen.ImagenCascade.sample`
    returns them (the ``k = n_per_prompt`` samples of prompt 0 first). For each prompt, the mean of
    ``||x_i - x_j||_2`` (over all pixels) over its ``k (k - 1) / 2`` pairs; then the mean over prompts.
    0 when every prompt gives identical images. Derived in chapter 5, Eq. (ch5-eq-diversity).
    """
    import torch
    from einops import rearrange

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
    import matplotlib.pyplot as plt
    import numpy as np

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


def _images_html(images, captions=None, scale: int = 4, alt: str = "generated image") -> str:
    """A row of images (N, 3, H, W) in [-1, 1] as inline PNGs, pixelated, with optional captions."""
    import html as _html

    imgs = to_display(images)
    size = imgs.shape[1] * scale
    cells = []
    for i, img in enumerate(imgs):
        cap = "" if captions is None else f"<br>{_html.escape(str(captions[i]))}"
        cells.append(f"<div style='display:inline-block;margin:4px;text-align:center;font:11px sans-serif'>"
                     f"<img src='{_png_data_uri(img)}' width='{size}' height='{size}' "
                     f"style='image-rendering:pixelated' alt='{_html.escape(alt)} {i + 1}'>{cap}</div>")
    return "<div>" + "".join(cells) + "</div>"


def prompt_widget(cascade, options, guidances=(1.0, 3.0, 5.0), steps=(5, 10, 25), n: int = 4,
                  value: str | None = None, seed: int = 0, scale: int = 4):
    """Type a caption, choose the guidance weight ``w`` and the DDIM steps, see the cascade's samples.

    Args:
        cascade: an :class:`imagen_edu.imagen.ImagenCascade` (e.g. ``ImagenCascade.from_dir()``).
        options: captions offered in the caption box's drop-down list (any text may be typed).
        guidances: the weights ``w`` offered (buttons); the base stage's default is selected
            first when it is among them.
        steps: the DDIM step counts offered (buttons), used by the base stage; the
            super-resolution stages keep their own default.
        n: samples per prompt; ``seed``: seeds the noise (same settings, same images).
        value: the first caption (default: ``options[0]``); its samples are generated at once so
            the built HTML page shows them from the saved widget state.

    Returns:
        An ipywidgets ``VBox``. Clicking "generate" samples with the current settings (a few
        seconds on a CPU); bad input (an empty caption) shows the error instead of images, and
        words outside the vocabulary are named above the images.
    """
    import html as _html
    import time
    import warnings

    import ipywidgets as W

    options = list(options)
    if not options:
        raise ValueError("options must hold at least one caption")
    start = value if value is not None else options[0]
    box = W.Combobox(value=start, options=options, ensure_option=False, placeholder="type a caption",
                     description="caption:", layout=W.Layout(width="480px"))
    w0 = float(cascade.stages[0].config.guidance)
    w0 = w0 if w0 in [float(w) for w in guidances] else float(guidances[0])  # the base stage's default if offered
    w_btn = W.ToggleButtons(options=[(f"{w:g}", float(w)) for w in guidances], value=w0,
                            description="w:", style={"button_width": "auto"})
    s_btn = W.ToggleButtons(options=[(str(k), int(k)) for k in steps], value=int(steps[-1]),
                            description="steps:", style={"button_width": "auto"})
    go = W.Button(description="generate", button_style="primary", icon="play")
    out = W.HTML()

    def render(caption, w, k):
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                per_stage = [k] + [s.config.sample_steps for s in cascade.stages[1:]]
                imgs = cascade.sample([caption], n=n, guidance=w, steps=per_stage, seed=seed, progress=False)
        except (ValueError, TypeError) as err:
            return f"<p style='color:#b00'>{_html.escape(str(err))}</p>"
        note = "".join(f"<p style='color:#a60;font-size:12px'>{_html.escape(str(c.message))}</p>" for c in caught)
        head = (f"<b>{_html.escape(caption)}</b> &nbsp; w = {w:g}, {k} steps, {n} samples, "
                f"{time.perf_counter() - t0:.1f} s")
        return f"<div>{head}{note}{_images_html(imgs, scale=scale, alt='sample for ' + caption)}</div>"

    def on_click(_):
        out.value = "<p>sampling...</p>"
        out.value = render(box.value, w_btn.value, s_btn.value)

    go.on_click(on_click)
    out.value = render(start, w_btn.value, s_btn.value)
    return W.VBox([box, w_btn, s_btn, go, out])
