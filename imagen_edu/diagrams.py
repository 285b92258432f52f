"""Pictures of the architectures, drawn from the package's own modules and configs.

Each function returns a :class:`Diagram`, a ``(fig, alt)`` pair: a matplotlib Figure and a short
alt text describing it, so ``fig, alt = diagrams.unet(cfg)`` works. The sizes, layer counts and
placements written in a picture are read from the config (or from a module built from it), so
the picture stays true when a config changes:

* :func:`transformer_block`: the pre-norm block of chapter 1, ``x + Attn(LN(x))`` then
  ``x + MLP(LN(x))`` (Eq. ch1-eq-prenorm), read from an :class:`imagen_edu.attention.TransformerBlock`;
* :func:`attention_masks`: causal against bidirectional attention (chapters 1 and 2b), from
  :func:`imagen_edu.attention.causal_mask`;
* :func:`encoder_decoder`: T5's encoder-decoder with cross-attention (chapter 2b), from a
  :class:`imagen_edu.t5.T5Config`;
* :func:`unet`: the U-Net's levels, skips, attention and conditioning inputs (chapters 3b and 5),
  from a :class:`imagen_edu.unet.UNetConfig` (the network is built on PyTorch's ``meta`` device
  and walked, so nothing is allocated); the skips' scale is measured on a tiny U-Net
  (:func:`skip_scale`);
* :func:`cascade`: the base stage, the super-resolution stages and noise-conditioning
  augmentation (chapter 5c), from :func:`imagen_edu.configs.stage_configs`;
* :func:`clip_towers`: CLIP's image and text towers and the batch similarity matrix with its
  diagonal of positives (chapter 4), from a :class:`imagen_edu.clip.CLIPConfig`.

:func:`labels` lists the text written in a figure (what the tests read).
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

from . import attention, configs, profiles
from .attention import TransformerBlock
from .clip import CLIPConfig, CLIPModel, tower_config
from .stage import StageConfig
from .t5 import T5Config
from .t5_pretraining import PretrainConfig
from .tokenizer import default_tokenizer
from .unet import ResBlock, UNet, UNetConfig
from .vit import VisionTransformer

__all__ = ["Diagram", "labels", "transformer_block", "attention_masks", "encoder_decoder", "UNetLevel",
           "UNetLayout", "unet_layout", "skip_scale", "unet", "cascade", "clip_towers"]

# one colour per kind of part, the same in every picture
COLORS = {
    "norm": "#fde2b8",      # LayerNorm / RMSNorm / GroupNorm
    "attn": "#c6dbef",      # self-attention
    "cross": "#c7e9c0",     # cross-attention, text
    "mlp": "#dadaeb",       # feed-forward, ResBlocks
    "io": "#f0f0f0",        # inputs and outputs
    "time": "#fdd0a2",      # time embedding, augmentation level
    "frozen": "#d9d9d9",    # frozen parts
    "image": "#fcbba1",     # image tower, images
}


class Diagram(NamedTuple):
    """A picture and its alt text: ``fig, alt = diagrams.unet(cfg)``."""

    fig: Figure
    alt: str


def labels(fig: Figure) -> list[str]:
    """Every non-empty text written in ``fig``: boxes, arrows' labels, titles, tick labels."""
    out = [t.get_text() for t in fig.texts] + [fig.get_suptitle()]
    for ax in fig.axes:
        out += [t.get_text() for t in ax.texts]
        out += [ax.get_title(loc) for loc in ("left", "center", "right")]
        out += [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()]
        out += [ax.get_xlabel(), ax.get_ylabel()]
    return [s for s in out if s]


def _n(count: int, word: str) -> str:
    """``3 blocks``, ``1 block``."""
    return f"{count} {word}{'s' * (count != 1)}"


# ---------------------------------------------------------------------------------------------
# Drawing primitives
# ---------------------------------------------------------------------------------------------
def _canvas(width: float, height: float, figsize) -> tuple[Figure, plt.Axes]:
    """A figure with one axis-free panel whose data coordinates run over ``[0, width] x [0, height]``."""
    fig, ax = plt.subplots(figsize=figsize)
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.axis("off")
    return fig, ax


def _box(ax, x, y, w, h, text, kind="io", fontsize=8.5, **kw):
    """A rounded box with its lower-left corner at ``(x, y)`` and ``text`` centred in it."""
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                facecolor=COLORS[kind], edgecolor="#444444", lw=1.0, **kw))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize)


def _arrow(ax, start, end, text=None, color="#333333", ls="-", conn=None, fontsize=7.5, text_at=0.5,
           offset=(0.0, 0.0), ha="center", va="center", **text_kw):
    """An arrow from ``start`` to ``end``, with an optional label near ``text_at`` of the way."""
    props = dict(arrowstyle="-|>", color=color, lw=1.1, ls=ls, shrinkA=0, shrinkB=0)
    if conn:
        props["connectionstyle"] = conn
    ax.annotate("", xy=end, xytext=start, arrowprops=props)
    if text:
        tx = start[0] + text_at * (end[0] - start[0]) + offset[0]
        ty = start[1] + text_at * (end[1] - start[1]) + offset[1]
        ax.text(tx, ty, text, ha=ha, va=va, fontsize=fontsize, color=color, **text_kw)


def _path(ax, points, text=None, color="#333333", ls="-", fontsize=7.5, at=None, **text_kw):
    """A polyline through ``points`` ending in an arrowhead; ``text`` is written at ``at``
    (default: the middle of the last segment)."""
    xs, ys = zip(*points)
    ax.plot(xs[:-1], ys[:-1], color=color, lw=1.1, ls=ls, solid_capstyle="butt")
    _arrow(ax, points[-2], points[-1], color=color, ls=ls)
    if text:
        tx, ty = at if at is not None else ((xs[-2] + xs[-1]) / 2, (ys[-2] + ys[-1]) / 2)
        ax.text(tx, ty, text, fontsize=fontsize, color=color, **{"ha": "center", "va": "center", **text_kw})


def _plus(ax, x, y, r=0.16):
    """The circled plus of a residual sum, centred at ``(x, y)``."""
    ax.add_patch(plt.Circle((x, y), r, facecolor="white", edgecolor="#333333", lw=1.1))
    ax.text(x, y, "+", ha="center", va="center", fontsize=11)


# ---------------------------------------------------------------------------------------------
# 1. The pre-norm Transformer block (chapter 1, Eq. ch1-eq-prenorm)
# ---------------------------------------------------------------------------------------------
def transformer_block(block: TransformerBlock | None = None) -> Diagram:
    """The pre-norm block: ``x + Attn(LN(x))`` [``+ CrossAttn(LN(x), c)``] then ``x + MLP(LN(x))``.

    Read from ``block`` (default: ``TransformerBlock(32, 4)``): its width, heads, the MLP's
    hidden width and whether it has cross-attention. Each sub-layer sits on a branch off the
    residual stream, which runs straight from input to output (chapter 1, Eq. ch1-eq-prenorm).
    """
    if block is None:
        with torch.random.fork_rng(devices=[]):   # the global seed untouched
            block = TransformerBlock(32, 4)
    if not isinstance(block, TransformerBlock):
        raise TypeError(f"block must be an imagen_edu.attention.TransformerBlock, got {type(block).__name__}")
    d, heads = block.attn.d_model, block.attn.n_heads
    hidden = block.mlp.net[0].out_features
    subs = [("LayerNorm", f"multi-head self-attention\n{heads} heads x {d // heads} dims", "attn",
             "x + Attn(LN(x))")]
    if block.cross is not None:
        subs.append(("LayerNorm", f"cross-attention to the context\n(keys, values: width {block.cross.d_context})",
                     "cross", "x + CrossAttn(LN(x), c)"))
    subs.append(("LayerNorm", f"MLP  {d} -> {hidden} -> {d}\n(Linear, GELU, Linear)", "mlp", "x + MLP(LN(x))"))

    step = 2.3
    height = 1.2 + step * len(subs) + 0.9
    fig, ax = _canvas(8.0, height, (6.4, 0.75 * height))
    xs, xb = 1.6, 4.3                       # the residual stream and the branch
    _box(ax, xs - 0.9, 0.15, 1.8, 0.5, f"x   (B, T, {d})", "io")
    y = 0.65
    for norm, layer, kind, formula in subs:
        y0, ysum = y + 0.35, y + step
        # the residual path: straight up to the sum
        _arrow(ax, (xs, y), (xs, ysum - 0.16))
        ax.text(xs - 0.15, (y0 + ysum) / 2, "residual path\n(identity)", ha="right", va="center",
                fontsize=7.5, color="#555555")
        # the branch: norm, then the layer, then back into the sum
        _path(ax, [(xs, y0), (xb, y0), (xb, y0 + 0.1)])
        _box(ax, xb - 0.9, y0 + 0.1, 1.8, 0.45, norm, "norm")
        _arrow(ax, (xb, y0 + 0.55), (xb, y0 + 0.8))
        _box(ax, xb - 1.35, y0 + 0.8, 2.7, 0.75, layer, kind)
        _path(ax, [(xb, y0 + 1.55), (xb, ysum), (xs + 0.16, ysum)])
        _plus(ax, xs, ysum)
        ax.text(xb + 1.5, ysum, formula, ha="left", va="center", fontsize=9, family="monospace")
        y = ysum + 0.16
    _arrow(ax, (xs, y), (xs, y + 0.45))
    ax.text(xs, y + 0.55, f"out   (B, T, {d})", ha="center", va="bottom", fontsize=8.5)
    ax.set_title("A pre-norm Transformer block", fontsize=10)
    parts = ", then ".join(f"{f}" for *_, f in subs)
    alt = (f"Diagram of a pre-norm Transformer block of width {d} with {heads} heads: the residual stream "
           f"runs straight from the input x to the output; {len(subs)} branches leave it, each a LayerNorm "
           f"followed by a layer (self-attention{', cross-attention' if block.cross is not None else ''} and "
           f"an MLP {d} -> {hidden} -> {d}), and are added back: {parts}.")
    return Diagram(fig, alt)


# ---------------------------------------------------------------------------------------------
# 2. Causal against bidirectional masks (chapters 1, 2 and 2b)
# ---------------------------------------------------------------------------------------------
def attention_masks(tokens=None, query: int | None = None) -> Diagram:
    """Who may attend to whom: the causal mask (:func:`imagen_edu.attention.causal_mask`, a GPT or
    T5's decoder) beside the bidirectional one (every real token, T5's encoder).

    ``tokens`` is a list of words (default ``a red circle left of a blue square``); ``query`` the
    row to highlight (default: the third token). Under each grid, arcs show which tokens that
    query reads. Rows are queries, columns are keys, dark = may attend.
    """
    tokens = "a red circle left of a blue square".split() if tokens is None else list(tokens)
    t = len(tokens)
    if t < 2:
        raise ValueError(f"attention_masks needs at least 2 tokens, got {tokens!r}")
    query = min(2, t - 1) if query is None else query
    if not 0 <= query < t:
        raise ValueError(f"query must index a token (0..{t - 1}), got {query}")
    masks = {"causal": attention.causal_mask(t), "bidirectional": torch.ones(t, t, dtype=torch.bool)}
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.2), gridspec_kw=dict(height_ratios=[3, 1]))
    for col, (name, m) in enumerate(masks.items()):
        ax = axes[0][col]
        ax.imshow(m.numpy(), cmap="Greens", vmin=-0.25, vmax=1.5)
        ax.set_xticks(range(t), tokens, rotation=90)
        ax.set_yticks(range(t), tokens)
        ax.add_patch(plt.Rectangle((-0.5, query - 0.5), t, 1, fill=False, edgecolor="tab:red", lw=1.6))
        ax.set_xlabel("key (attended to)")
        ax.set_ylabel("query (attending)")
        who = "a causal LM, T5's decoder" if name == "causal" else "T5's encoder"
        ax.set_title(f"{name} mask ({who})", fontsize=10)
        # the arcs: which keys the highlighted query reads
        ax2 = axes[1][col]
        ax2.set_xlim(-0.7, t - 0.3)
        ax2.set_ylim(-0.6, 1.6)
        ax2.axis("off")
        for j, w in enumerate(tokens):
            ax2.text(j, 0, w, ha="center", va="center", fontsize=9,
                     color="tab:red" if j == query else ("black" if m[query, j] else "#bbbbbb"),
                     fontweight="bold" if j == query else "normal")
        for j in range(t):
            if m[query, j] and j != query:
                ax2.annotate("", xy=(query, 0.25), xytext=(j, 0.25),
                             arrowprops=dict(arrowstyle="-|>", color="tab:green", lw=1.0,
                                             connectionstyle=f"arc3,rad={-0.4 if j < query else 0.4}"))
        n = int(m[query].sum())
        ax2.text((t - 1) / 2, -0.55, f"'{tokens[query]}' reads {n} of {t} tokens", ha="center",
                 fontsize=8.5, color="#444444")
    fig.tight_layout()
    n_causal = int(masks["causal"][query].sum())
    alt = (f"Two boolean mask grids over the tokens '{' '.join(tokens)}' (queries down, keys across, dark = "
           f"may attend). Left, the causal mask: a lower triangle, so the query '{tokens[query]}' reads only "
           f"itself and the {n_causal - 1} tokens before it. Right, the bidirectional mask: all dark, so the "
           f"same query reads all {t} tokens, including the words after it. Under each grid, arrows show "
           f"which tokens that query reads.")
    return Diagram(fig, alt)


# ---------------------------------------------------------------------------------------------
# 3. The encoder-decoder with cross-attention (chapter 2b)
# ---------------------------------------------------------------------------------------------
_MAX_DRAWN_LAYERS = 4


def _stack_boxes(n: int) -> list[str]:
    """Labels of the blocks drawn for a stack of ``n``: all of them, or the first, '...' and the last."""
    if n <= _MAX_DRAWN_LAYERS:
        return [f"block {i + 1}" for i in range(n)]
    return ["block 1", f"blocks 2-{n - 1}", f"block {n}"]


def encoder_decoder(config: T5Config | PretrainConfig | dict | None = None) -> Diagram:
    """T5's encoder-decoder (chapter 2b): the encoder's ``n_layers`` blocks (bidirectional
    self-attention, gated-GELU feed-forward), the decoder's ``n_decoder_layers`` blocks (causal
    self-attention, cross-attention to the encoder's final states, feed-forward), each stack
    ending in an RMSNorm. Imagen keeps only the encoder, frozen.

    ``config`` is a :class:`~imagen_edu.t5.T5Config`, a chapter-2b
    :class:`~imagen_edu.t5_pretraining.PretrainConfig` (its ``model`` sizes) or a dict of
    ``T5Config`` fields without ``vocab_size`` (which the picture does not show); default
    ``T5Config``'s own sizes.
    """
    if isinstance(config, PretrainConfig):
        config = config.model
    if config is None or isinstance(config, dict):
        config = T5Config(**{"vocab_size": 32, **(config or {})})
    c = config
    if not isinstance(c, T5Config):
        raise TypeError(f"config must be an imagen_edu.t5.T5Config, got {type(c).__name__}")
    enc, dec = _stack_boxes(c.n_layers), _stack_boxes(c.n_decoder_layers)
    rows = max(len(enc), len(dec))
    bh, gap = 0.95, 0.35
    height = 2.2 + rows * (bh + gap) + 1.3
    fig, ax = _canvas(10.0, height, (9.0, 0.68 * height))
    ex, dx, bw = 0.6, 5.6, 3.6
    # inputs
    _box(ax, ex, 0.2, bw, 0.55, "caption tokens x_1..T  ->  embedding", "io")
    _box(ax, dx, 0.2, bw, 0.55, "targets shifted right  ->  embedding", "io")
    y0 = 1.2
    enc_tops = []
    for i, name in enumerate(enc):
        y = y0 + i * (bh + gap)
        _arrow(ax, (ex + bw / 2, y - gap if i else 0.75), (ex + bw / 2, y))
        _box(ax, ex, y, bw, bh, f"encoder {name}\nRMSNorm -> bidirectional self-attn\n"
                                f"RMSNorm -> gated-GELU FF ({c.d_model} -> {c.d_ff})", "attn", fontsize=7.5)
        enc_tops.append(y + bh)
    ye = y0 + len(enc) * (bh + gap) - gap + 0.25
    _arrow(ax, (ex + bw / 2, enc_tops[-1]), (ex + bw / 2, ye))
    _box(ax, ex, ye, bw, 0.6, f"final RMSNorm: states h_1..T  (T, {c.d_model})", "cross")
    ax.add_patch(FancyBboxPatch((ex - 0.25, 0.05), bw + 0.5, ye + 0.75, boxstyle="round,pad=0.02",
                                fill=False, edgecolor="tab:green", lw=1.5, ls="--"))
    ax.text(ex + bw / 2, ye + 0.95, f"encoder x {c.n_layers}: what Imagen keeps (frozen)", ha="center",
            fontsize=9, color="tab:green", fontweight="bold")
    for i, name in enumerate(dec):
        y = y0 + i * (bh + gap)
        _arrow(ax, (dx + bw / 2, y - gap if i else 0.75), (dx + bw / 2, y))
        _box(ax, dx, y, bw, bh, f"decoder {name}\nRMSNorm -> causal self-attn\nRMSNorm -> cross-attn\n"
                                f"RMSNorm -> gated-GELU FF", "mlp", fontsize=7.5)
        # the encoder's final states feed every decoder block's cross-attention
        _arrow(ax, (ex + bw, ye + 0.3), (dx, y + bh / 2), color="tab:green", ls="--",
               text="keys, values" if i == 0 else None, text_at=0.5, offset=(0.0, 0.15), conn="arc3,rad=0.0")
    yd = y0 + len(dec) * (bh + gap) - gap + 0.25
    _arrow(ax, (dx + bw / 2, yd - 0.25), (dx + bw / 2, yd))
    _box(ax, dx, yd, bw, 0.6, "final RMSNorm -> head: next-token logits", "io")
    ax.text(dx + bw / 2, yd + 0.95, f"decoder x {c.n_decoder_layers} (pretraining only)", ha="center",
            fontsize=9, color="#444444")
    ax.set_title(f"T5's encoder-decoder (width {c.d_model}, {c.n_heads} heads of {c.d_kv})", fontsize=10)
    alt = (f"Diagram of T5's encoder-decoder: on the left the encoder, {_n(c.n_layers, 'block')} of bidirectional "
           f"self-attention and gated-GELU feed-forward layers with RMSNorm, ending in the final states "
           f"h_1..T (boxed as what Imagen keeps, frozen); on the right the decoder, "
           f"{_n(c.n_decoder_layers, 'block')} of causal self-attention, cross-attention and feed-forward, reading the shifted "
           f"targets; dashed arrows carry the encoder's final states into every decoder block's "
           f"cross-attention as keys and values, and the decoder ends in next-token logits.")
    return Diagram(fig, alt)


# ---------------------------------------------------------------------------------------------
# 4. The U-Net (chapters 3b and 5)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UNetLevel:
    """One resolution level of a built :class:`imagen_edu.unet.UNet`, as the picture shows it."""

    resolution: int          # side of the feature maps
    width: int               # channels of the level's ResBlocks
    down_blocks: int         # ResBlocks on the way down
    up_blocks: int           # ResBlocks on the way up (each takes one skip)
    self_attention: bool     # a self-attention layer after the level's ResBlocks
    cross_attention: bool    # a cross-attention layer (to the text tokens)


@dataclass(frozen=True)
class UNetLayout:
    """What :func:`unet_layout` reads off a built U-Net."""

    levels: tuple[UNetLevel, ...]
    middle_width: int
    middle_self_attention: bool
    middle_cross_attention: bool
    in_channels: int         # x_t's channels
    input_conv_channels: int  # x_t's plus the upsampled low-res image's (super-resolution)
    out_channels: int
    pooled_text: bool        # cond_proj: the pooled text vector is added to the time embedding
    text_tokens: bool        # context_dim: cross-attention reads text tokens
    lowres: bool             # a super-resolution U-Net
    image_size: int


def unet_layout(config: UNetConfig) -> UNetLayout:
    """Build ``UNet(config)`` on the ``meta`` device (no memory) and read its levels.

    Walks ``net.down``, ``net.mid`` and ``net.up``: every module with a ``res``
    (:class:`~imagen_edu.unet.ResBlock`) is a block of the current resolution, whose ``attn`` and
    ``cross`` say whether self- and cross-attention follow it; any other module changes the
    resolution (a down- or upsampling).
    """
    if not isinstance(config, UNetConfig):
        raise TypeError(f"config must be an imagen_edu.unet.UNetConfig, got {type(config).__name__}")
    with torch.device("meta"):
        net = UNet(config)

    def walk(modules, res, factor):
        found: dict[int, list] = {}
        for mod in modules:
            if isinstance(getattr(mod, "res", None), ResBlock):
                found.setdefault(res, []).append(mod)
            else:
                res = res // 2 if factor == "down" else res * 2
        return found, res

    down, low = walk(net.down, config.image_size, "down")
    up, _ = walk(net.up, low, "up")
    levels = []
    for res in sorted(down, reverse=True):
        blocks = down[res] + up[res]
        levels.append(UNetLevel(resolution=res, width=down[res][-1].res.conv1.out_channels,
                                down_blocks=len(down[res]), up_blocks=len(up[res]),
                                self_attention=any(b.attn is not None for b in blocks),
                                cross_attention=any(b.cross is not None for b in blocks)))
    return UNetLayout(levels=tuple(levels), middle_width=net.mid[0].res.conv1.out_channels,
                      middle_self_attention=any(b.attn is not None for b in net.mid),
                      middle_cross_attention=any(b.cross is not None for b in net.mid),
                      in_channels=config.in_channels, input_conv_channels=net.input_conv.in_channels,
                      out_channels=net.out_conv.out_channels, pooled_text=net.cond_proj is not None,
                      text_tokens=config.context_dim is not None, lowres=net.noise_level_mlp is not None,
                      image_size=config.image_size)


@lru_cache(maxsize=1)
def skip_scale() -> float | None:
    """The factor :class:`imagen_edu.unet.UNet` multiplies a skip by before concatenating it,
    measured: a tiny U-Net runs once, and the skip part of the last up-block's input is compared
    with the input convolution's output (the skip it pops). ``2 ** -0.5`` for the Efficient
    U-Net's scaled skips (Saharia et al. 2022, Appendix B.1); ``None`` if the two are not
    proportional."""
    cfg = UNetConfig(image_size=4, channels=4, channel_mults=(1,), num_res_blocks=1, attention_resolutions=())
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = UNet(cfg).eval()
    seen = {}
    hooks = [net.input_conv.register_forward_hook(lambda m, a, out: seen.__setitem__("skip", out)),
             net.up[-1].register_forward_pre_hook(lambda m, a: seen.__setitem__("cat", a[0]))]
    try:
        with torch.no_grad():
            net(torch.randn(1, 3, 4, 4, generator=g), torch.tensor([3]))
    finally:
        for h in hooks:
            h.remove()
    skip, given = seen["skip"], seen["cat"][:, -seen["skip"].shape[1]:]
    scale = float((given * skip).sum() / (skip * skip).sum())
    if not torch.allclose(given, scale * skip, atol=1e-6, rtol=1e-5):
        return None
    return scale


def _skip_label(scale: float | None) -> str:
    if scale is None:
        return "skip (concatenated)"
    if math.isclose(scale, 2 ** -0.5, rel_tol=1e-5):
        return "skip x 1/sqrt(2)"
    if math.isclose(scale, 1.0, rel_tol=1e-5):
        return "skip"
    return f"skip x {scale:.3g}"


def _level_text(lv: UNetLevel, blocks: int, where: str) -> str:
    parts = [f"{lv.resolution}x{lv.resolution} px, {lv.width} ch", f"{blocks} ResBlock{'s' * (blocks != 1)}"]
    extra = [n for n, on in (("self-attn", lv.self_attention), ("cross-attn", lv.cross_attention)) if on]
    if extra:
        parts.append("+ " + " + ".join(extra))
    return "\n".join(parts)


def unet(config: UNetConfig | StageConfig, title: str | None = None) -> Diagram:
    """The U-Net of ``config`` (a :class:`~imagen_edu.unet.UNetConfig`, or a stage's config whose
    ``unet`` is drawn): each level's resolution, width and ResBlocks down and up, the skips between
    them (labelled with their measured scale, :func:`skip_scale`), where self- and cross-attention
    sit, and where the time embedding, the pooled text vector, the text tokens and (for
    super-resolution) the low-resolution image and its augmentation level enter.
    """
    if isinstance(config, StageConfig):
        config = config.unet
    lay = unet_layout(config)
    n = len(lay.levels)
    lh, lw, gap = 1.05, 2.6, 0.45
    height = 2.6 + n * (lh + gap) + 2.2
    width = 13.0
    fig, ax = _canvas(width, height, (11.0, 0.78 * height))
    xl, xr = 2.2, width - 2.2 - lw                      # down column, up column
    top = height - 2.4
    scale = skip_scale()
    label = _skip_label(scale)
    for i, lv in enumerate(lay.levels):
        y = top - i * (lh + gap) - lh
        kind = "cross" if lv.cross_attention else ("attn" if lv.self_attention else "mlp")
        _box(ax, xl, y, lw, lh, _level_text(lv, lv.down_blocks, "down"), kind)
        _box(ax, xr, y, lw, lh, _level_text(lv, lv.up_blocks, "up"), kind)
        _arrow(ax, (xl + lw, y + lh / 2), (xr, y + lh / 2), text=f"{lv.up_blocks} x {label}", color="#6a51a3",
               ls="--", offset=(0.0, 0.16))
        if i < n - 1:
            _arrow(ax, (xl + lw / 2, y), (xl + lw / 2, y - gap), text="downsample", ha="left",
                   offset=(0.08, 0.0))
            _arrow(ax, (xr + lw / 2, y - gap), (xr + lw / 2, y), text="upsample", ha="left", offset=(0.08, 0.0))
    low = lay.levels[-1].resolution
    ym = top - n * (lh + gap) - 0.75
    mid_extra = " + ".join(s for s, on in (("self-attn", lay.middle_self_attention),
                                           ("cross-attn", lay.middle_cross_attention)) if on)
    _box(ax, width / 2 - 2.0, ym, 4.0, 0.75, f"middle: {low}x{low} px, {lay.middle_width} ch\n2 ResBlocks"
                                              + (f" + {mid_extra}" if mid_extra else ""),
         "cross" if lay.middle_cross_attention else "attn")
    y_last = top - (n - 1) * (lh + gap) - lh
    _path(ax, [(xl + lw / 2, y_last), (xl + lw / 2, ym + 0.375), (width / 2 - 2.0, ym + 0.375)])
    _path(ax, [(width / 2 + 2.0, ym + 0.375), (xr + lw / 2, ym + 0.375), (xr + lw / 2, y_last)])

    # input and output
    yin = top + 0.35
    s = lay.image_size
    in_text = f"x_t ({lay.in_channels} ch, {s}x{s})"
    if lay.lowres:
        extra = lay.input_conv_channels - lay.in_channels
        in_text += f"\n+ low-res image ({extra} ch), upsampled\nto {s}x{s} and concatenated"
    _box(ax, xl - 0.45, yin, lw + 0.9, 0.95 if lay.lowres else 0.55, in_text, "image" if lay.lowres else "io",
         fontsize=8)
    ax.text(xl + lw / 2, yin - 0.18, "input conv", ha="center", fontsize=7.5)
    _arrow(ax, (xl + lw / 2, yin), (xl + lw / 2, top))
    ax.annotate("", xy=(xr + lw / 2, yin), xytext=(xr + lw / 2, top),
                arrowprops=dict(arrowstyle="-|>", color="#333333", lw=1.1, shrinkA=0, shrinkB=0))
    _box(ax, xr - 0.3, yin, lw + 0.6, 0.55, f"output ({lay.out_channels} ch, {s}x{s})\nzero-initialised conv",
         "io", fontsize=8)
    _arrow(ax, (xl + lw + 0.45, yin + 0.25), (xr - 0.3, yin + 0.25), text=f"1 x {label} (input conv)", color="#6a51a3",
           ls="--", offset=(0.0, 0.16))

    # the conditioning: time (and pooled text, and the augmentation level) into every ResBlock
    emb = ["timestep t -> sinusoids -> MLP"]
    if lay.pooled_text:
        emb.append("+ pooled text vector (masked mean) -> linear")
    if lay.lowres:
        emb.append("+ augmentation level -> sinusoids -> MLP")
    _box(ax, 0.1, 0.35, 4.4, 0.3 + 0.28 * len(emb), "embedding, into every ResBlock:\n" + "\n".join(emb),
         "time", fontsize=7.5)
    if lay.text_tokens:
        _box(ax, width - 4.5, 0.35, 4.4, 0.86, "text tokens (T, D), LayerNorm\n-> keys, values of every\n"
                                               "cross-attn layer (green levels)", "cross", fontsize=7.5)
    kinds = "green: + cross-attn, blue: + self-attn only, lilac: ResBlocks only"
    ax.text(width / 2, 0.05, kinds, ha="center", fontsize=7, color="#555555")
    what = "super-resolution" if lay.lowres else ("text-conditioned" if lay.text_tokens else "unconditional")
    ax.set_title(title or f"The {what} U-Net ({s} px)", fontsize=10)

    lv_text = "; ".join(f"{lv.resolution} px with {lv.width} channels and {lv.down_blocks} ResBlock"
                        f"{'s' * (lv.down_blocks != 1)} down and {lv.up_blocks} up"
                        + (" with self-attention" if lv.self_attention else "")
                        + (" and cross-attention" if lv.cross_attention and lv.self_attention else
                           (" with cross-attention" if lv.cross_attention else ""))
                        for lv in lay.levels)
    skip_words = {"skip x 1/sqrt(2)": "skip connections scaled by 1/sqrt(2)"}.get(label, f"skip connections ({label})")
    ins = ["the time embedding enters every ResBlock"]
    if lay.pooled_text:
        ins.append("the pooled text vector is added to the time embedding")
    if lay.text_tokens:
        ins.append("cross-attention reads the text tokens")
    if lay.lowres:
        ins.append("the low-resolution image is upsampled and concatenated to x_t, and its augmentation level "
                   "is embedded and added to the time embedding")
    alt = (f"Diagram of the {what} U-Net for {s} px images, shaped like a U: the left column goes down "
           f"{n} levels ({lv_text}), a middle block at {low} px with self-attention"
           f"{' and cross-attention' if lay.middle_cross_attention else ''}, and the right column goes back up; "
           f"dashed {skip_words} join each left level to the right one. Inputs: {'; '.join(ins)}.")
    return Diagram(fig, alt)


# ---------------------------------------------------------------------------------------------
# 5. The cascade with noise-conditioning augmentation (chapter 5c)
# ---------------------------------------------------------------------------------------------
def cascade(stages=None) -> Diagram:
    """The cascade: the frozen text encoder, the base stage and each super-resolution stage, with
    noise-conditioning augmentation of the low-resolution image (its level into the SR stage).

    ``stages`` is a dict ``{name: StageConfig}`` (:func:`imagen_edu.configs.stage_configs`), a
    :class:`~imagen_edu.profiles.Profile` or a profile name (default: the current profile).
    """
    if stages is None or isinstance(stages, (str, profiles.Profile)):
        prof = profiles.current() if stages is None else (stages if isinstance(stages, profiles.Profile)
                                                          else profiles.get(stages))
        stages = configs.stage_configs(prof.imagen)
    stages = list(stages.values()) if isinstance(stages, dict) else list(stages)
    if not stages or not all(isinstance(s, StageConfig) for s in stages):
        raise TypeError("stages must be a non-empty dict or list of imagen_edu.stage.StageConfig")
    n = len(stages)
    width = 3.0 + 3.6 * n
    fig, ax = _canvas(width, 5.4, (min(3.2 + 3.0 * n, 14), 4.6))
    first = stages[0]
    _box(ax, 0.15, 4.3, 2.6, 0.7, "caption\n'a red circle left of a blue square'", "io", fontsize=7)
    _arrow(ax, (1.45, 4.3), (1.45, 3.75))
    _box(ax, 0.15, 2.75, 2.6, 1.0, f"frozen text encoder\n{first.text_encoder}\ntokens (T, {first.text_dim})"
                                   f" + pooled", "frozen", fontsize=7.5)
    ax.text(1.55, 2.3, "text tokens + pooled,\nto every stage", ha="left", va="center", fontsize=7,
            color="tab:green")
    x = 3.3
    prev_out = None
    for i, st in enumerate(stages):
        r = st.resolution
        if st.lowres_resolution is not None:
            lo = st.lowres_resolution
            _box(ax, x, 0.2, 2.9, 1.15, f"noise-conditioning augmentation\ntrain: level a ~ U[0, {st.aug_max_level:g}]"
                                        f"\nsample: a = {st.aug_sample_level:g}\nz = sqrt(abar) x + sqrt(1 - abar) eps",
                 "time", fontsize=7)
            _path(ax, [prev_out, (x - 0.35, prev_out[1]), (x - 0.35, 0.78), (x, 0.78)], text=f"{lo} px\nimage",
                  at=(x - 0.35, 1.9), ha="center", backgroundcolor="white")
            _arrow(ax, (x + 1.0, 1.35), (x + 1.0, 2.4), text=f"noised {lo} px", ha="right", offset=(-0.06, 0.0))
            _arrow(ax, (x + 2.1, 1.35), (x + 2.1, 2.4), text="level a", ha="left", offset=(0.06, 0.0),
                   color="#d94801")
            desc = f"super-resolution stage '{st.name}'\n{lo} -> {r} px\nU-Net {st.unet.channels} ch x {st.unet.channel_mults}"
        else:
            desc = f"base stage '{st.name}'\ntext -> {r} px\nU-Net {st.unet.channels} ch x {st.unet.channel_mults}"
        _box(ax, x, 2.4, 2.9, 1.3, desc + f"\nT = {st.timesteps}, guidance w = {st.guidance:g}", "mlp", fontsize=7.5)
        # the text reaches every stage
        _path(ax, [(1.45, 2.75), (1.45, 2.05), (x + 0.4, 2.05), (x + 0.4, 2.4)], color="tab:green", ls="--")
        _arrow(ax, (x + 1.45, 3.7), (x + 1.45, 4.3))
        _box(ax, x + 0.45, 4.3, 2.0, 0.6, f"{r} x {r} px image", "image", fontsize=8)
        prev_out = (x + 2.45, 4.6)
        x += 3.6
    ax.set_title("The cascade: base stage, then super-resolution with noise-conditioning augmentation",
                 fontsize=10)
    chain = " -> ".join(f"{s.resolution} px" for s in stages)
    srs = [s for s in stages if s.lowres_resolution is not None]
    aug = "; ".join(f"before '{s.name}' the {s.lowres_resolution} px image is noised to a level drawn uniformly in "
                    f"[0, {s.aug_max_level:g}] in training and fixed at {s.aug_sample_level:g} at sampling, and the "
                    f"level goes into the stage with the noised image" for s in srs)
    alt = (f"Diagram of the cascade ({chain}): a caption goes through the frozen text encoder "
           f"({first.text_encoder}), whose tokens and pooled vector reach every stage; the base stage draws a "
           f"{first.resolution} px image from the text; {aug}.")
    return Diagram(fig, alt)


# ---------------------------------------------------------------------------------------------
# 6. CLIP's two towers and the similarity matrix (chapter 4)
# ---------------------------------------------------------------------------------------------
def _tower_text(model: CLIPModel) -> tuple[str, str]:
    """What the picture writes in the image and text towers, read off the built model."""
    img, c = model.image_encoder, model.config
    convs = [m for m in img.modules() if isinstance(m, torch.nn.Conv2d)]
    if isinstance(img, VisionTransformer):
        pe, blocks = img.patch_embed, img.transformer.blocks
        image = (f"image tower: ViT\n{pe.num_patches} patches of {pe.patch_size}x{pe.patch_size} + class token\n"
                 f"{_n(len(blocks), 'block')}, {blocks[0].attn.n_heads} heads, width {c.width}\nread at the class token")
    elif convs and hasattr(img, "fc"):
        widths = " -> ".join(str(m.out_channels) for m in convs)
        image = (f"image tower: CNN\n{len(convs)} stride-2 convs ({widths} ch)\nflatten -> linear -> {c.width}")
    else:  # any other tower: its class name and the first line of its docstring
        doc = (type(img).__doc__ or "").strip().splitlines()
        summary = textwrap.shorten(doc[0], 60, placeholder="...") if doc else ""
        image = f"image tower: {type(img).__name__}\n" + "\n".join(textwrap.wrap(summary, 32)) + f"\n-> {c.width}"
    blocks = getattr(getattr(model.text_encoder, "transformer", None), "blocks", ())
    text = (f"text tower: Transformer\n{len(blocks)} block{'s' * (len(blocks) != 1)}, {c.text_heads} heads, "
            f"width {c.width}\nread at <eos>")
    return image, text


def clip_towers(config: CLIPConfig | CLIPModel | None = None, batch_size: int = 4) -> Diagram:
    """CLIP's two towers and the ``(B, B)`` similarity matrix of a batch (chapter 4).

    Images go through the image tower and a linear projection, captions through the text tower
    and theirs, both are L2-normalised into the shared ``embed_dim`` space; the logits are
    ``s * u_i . v_j``. The diagonal holds the positives (image i with its own caption), every other
    cell a negative; the loss is the mean of the rows' and the columns' cross-entropies
    (Eq. ch4-eq-infonce). ``config`` is a :class:`~imagen_edu.clip.CLIPConfig` (a model is built
    from it and read) or a built :class:`~imagen_edu.clip.CLIPModel`; default: the
    current profile's CLIP sizes.
    """
    if config is None:
        config = tower_config(profiles.current().clip, default_tokenizer().vocab_size)
    if isinstance(config, CLIPModel):
        model = config
    elif isinstance(config, CLIPConfig):
        with torch.random.fork_rng(devices=[]):   # a small model: built on the CPU, the global seed untouched
            model = CLIPModel(config)
    else:
        raise TypeError(f"config must be a CLIPConfig or CLIPModel, got {type(config).__name__}")
    if not isinstance(batch_size, int) or not 2 <= batch_size <= 8:
        raise ValueError(f"batch_size must be an int in [2, 8] (the drawn batch), got {batch_size!r}")
    c, b = model.config, batch_size
    image_text, text_text = _tower_text(model)
    fig, ax = _canvas(12.0, 6.2, (11.0, 5.7))
    # towers
    _box(ax, 0.2, 5.2, 2.6, 0.6, f"B = {b} images ({c.image_size} x {c.image_size})", "image")
    _box(ax, 0.2, 3.6, 2.6, 1.1, image_text, "image", fontsize=7.5)
    _box(ax, 0.2, 2.5, 2.6, 0.65, f"projection {c.width} -> {c.embed_dim}\nL2-normalise: u_i", "norm", fontsize=7.5)
    _box(ax, 3.3, 5.2, 2.6, 0.6, f"B = {b} captions", "cross")
    _box(ax, 3.3, 3.6, 2.6, 1.1, text_text, "cross", fontsize=7.5)
    _box(ax, 3.3, 2.5, 2.6, 0.65, f"projection {c.width} -> {c.embed_dim}\nL2-normalise: v_j", "norm", fontsize=7.5)
    for xc in (1.5, 4.6):
        _arrow(ax, (xc, 5.2), (xc, 4.7))
        _arrow(ax, (xc, 3.6), (xc, 3.15))
    _path(ax, [(1.5, 2.5), (1.5, 2.25), (6.3, 2.25), (6.3, 2.8), (6.55, 2.8)], text="u_i: the rows",
          at=(4.0, 2.07))
    _path(ax, [(5.9, 2.82), (6.15, 2.82), (6.15, 5.95), (7.3, 5.95)], text="v_j: the columns", at=(6.75, 6.08))
    ax.text(3.05, 1.1, f"shared space of {c.embed_dim} dims\nlogits L_ij = s * u_i . v_j,  s = exp(t) <= 100",
            ha="center", fontsize=8)
    # the similarity matrix
    x0, y0, cell = 7.3, 0.6, 4.4 / b
    for i in range(b):
        for j in range(b):
            pos = i == j
            ax.add_patch(plt.Rectangle((x0 + j * cell, y0 + (b - 1 - i) * cell), cell, cell,
                                       facecolor="#31a354" if pos else "#e5f5e0", edgecolor="white", lw=2))
            ax.text(x0 + (j + 0.5) * cell, y0 + (b - 0.5 - i) * cell, f"u{i + 1}.v{j + 1}", ha="center",
                    va="center", fontsize=7.5, color="white" if pos else "#444444")
        ax.text(x0 - 0.1, y0 + (b - 0.5 - i) * cell, f"image {i + 1}", ha="right", va="center", fontsize=7.5)
        ax.text(x0 + (i + 0.5) * cell, y0 + b * cell + 0.1, f"caption {i + 1}", ha="center", va="bottom",
                fontsize=7.5, rotation=30)
    ax.text(x0 + b * cell / 2, 0.15, "diagonal (dark): positives; off-diagonal: negatives", ha="center", fontsize=8)
    ax.text(x0 + b * cell / 2, -0.3, "loss = (CE over each row + CE over each column) / 2", ha="center", fontsize=8)
    ax.set_title("CLIP: two towers, one shared space, a batch of contrasts", fontsize=10)
    first = image_text.splitlines()[0].replace("image tower: ", "")
    alt = (f"Diagram of CLIP: on the left a batch of {b} images goes through the image tower ({first}) and a "
           f"linear projection to {c.embed_dim} dimensions, and the {b} captions go through the text tower (a "
           f"Transformer of {_n(len(getattr(model.text_encoder.transformer, 'blocks', ())), 'block')} read at <eos>) "
           f"and their projection; both are L2-normalised. On the right the {b} x {b} similarity matrix, images "
           f"down and captions across, with the positives (each image with its own caption) on the dark "
           f"diagonal and the negatives elsewhere; the loss averages the cross-entropy of the rows and of the "
           f"columns.")
    return Diagram(fig, alt)
