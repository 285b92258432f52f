"""The book's interactive explorers (ipywidgets): attention maps, image search, the prompt box.

Each explorer is built from small HTML widgets whose first view is rendered at once, so a page
built from the saved widget state shows it without a kernel:

* :func:`attention_explorer` -- pick a layer, a head and a query token (chapter 1; the language
  model of chapter 2 and the U-Net's cross-attention reuse it);
* :func:`image_search_widget` -- type a caption, see the gallery's top ``k`` (chapter 4, CLIP retrieval);
* :func:`prompt_widget` -- caption, guidance weight ``w`` and DDIM steps in, the cascade's
  samples out (chapter 5).
"""

from __future__ import annotations

import html
import time
import warnings

import ipywidgets as W

from .pixels import png_data_uri, to_display


# ---------------------------------------------------------------------------------------------
# Attention maps (chapter 1; reused by the language model and the U-Net's cross-attention)
# ---------------------------------------------------------------------------------------------
def _html_weights_row(tokens, row, query):
    """Key tokens as coloured chips, opacity = weight, with the weight under each chip."""
    top = max(float(max(row)), 1e-9)
    cells = []
    for tok, w in zip(tokens, row):
        a = float(w) / top
        fg = "white" if a > 0.55 else "black"
        cells.append(
            f'<td style="padding:2px;text-align:center">'
            f'<div style="background:rgba(31,119,180,{a:.3f});color:{fg};padding:4px 6px;'
            f'border-radius:4px;font-family:monospace">{html.escape(str(tok))}</div>'
            f'<div style="font-size:11px;color:#555">{float(w):.2f}</div></td>')
    return (f'<div style="margin:4px 0">query <b style="font-family:monospace">{html.escape(str(query))}'
            f'</b> attends to:</div><table style="border-collapse:collapse"><tr>{"".join(cells)}</tr></table>')


def _html_matrix(qtokens, ktokens, w):
    """A whole ``(Tq, Tk)`` map as a small HTML table (rows = queries)."""
    head = "".join(f'<th style="writing-mode:vertical-rl;transform:rotate(180deg);font-weight:normal;'
                   f'font-family:monospace;font-size:11px;padding:1px">{html.escape(str(t))}</th>'
                   for t in ktokens)
    rows = []
    for qi, qt in enumerate(qtokens):
        cells = "".join(f'<td title="{float(x):.2f}" style="width:16px;height:16px;padding:0;'
                        f'background:rgba(31,119,180,{float(x):.3f})"></td>' for x in w[qi])
        rows.append(f'<tr><th style="text-align:right;font-weight:normal;font-family:monospace;'
                    f'font-size:11px;padding:0 4px">{html.escape(str(qt))}</th>{cells}</tr>')
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
# Image search (chapter 4: CLIP retrieval)
# ---------------------------------------------------------------------------------------------
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
    imgs = to_display(images)
    uris = [None] * len(imgs)
    size = imgs.shape[1] * scale

    def uri(i):
        if uris[i] is None:
            uris[i] = png_data_uri(imgs[i])
        return uris[i]

    def render(caption: str) -> str:
        try:
            hits = list(search(caption))[:k]
        except ValueError as err:  # e.g. a word outside the vocabulary
            return f"<p style='color:#b00'>{html.escape(str(err))}</p>"
        cells = "".join(
            f"<div style='display:inline-block;margin:4px;text-align:center;font:11px sans-serif'>"
            f"<img src='{uri(i)}' width='{size}' height='{size}' style='image-rendering:pixelated' "
            f"alt='result {r + 1} for {html.escape(caption)}'><br>#{r + 1}: {s:.1f}</div>"
            for r, (i, s) in enumerate(hits))
        return f"<div><b>{html.escape(caption)}</b><br>{cells}</div>"

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
# The prompt widget (chapter 5: classifier-free guidance on the trained cascade)
# ---------------------------------------------------------------------------------------------
def _images_html(images, captions=None, scale: int = 4, alt: str = "generated image") -> str:
    """A row of images (N, 3, H, W) in [-1, 1] as inline PNGs, pixelated, with optional captions."""
    imgs = to_display(images)
    size = imgs.shape[1] * scale
    cells = []
    for i, img in enumerate(imgs):
        cap = "" if captions is None else f"<br>{html.escape(str(captions[i]))}"
        cells.append(f"<div style='display:inline-block;margin:4px;text-align:center;font:11px sans-serif'>"
                     f"<img src='{png_data_uri(img)}' width='{size}' height='{size}' "
                     f"style='image-rendering:pixelated' alt='{html.escape(alt)} {i + 1}'>{cap}</div>")
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
            return f"<p style='color:#b00'>{html.escape(str(err))}</p>"
        note = "".join(f"<p style='color:#a60;font-size:12px'>{html.escape(str(c.message))}</p>" for c in caught)
        head = (f"<b>{html.escape(caption)}</b> &nbsp; w = {w:g}, {k} steps, {n} samples, "
                f"{time.perf_counter() - t0:.1f} s")
        return f"<div>{head}{note}{_images_html(imgs, scale=scale, alt='sample for ' + caption)}</div>"

    def on_click(_):
        out.value = "<p>sampling...</p>"
        out.value = render(box.value, w_btn.value, s_btn.value)

    go.on_click(on_click)
    out.value = render(start, w_btn.value, s_btn.value)
    return W.VBox([box, w_btn, s_btn, go, out])
