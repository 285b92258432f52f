"""Attention and the Transformer (chapter 1).

Derived in chapter 1 (``book/01_attention.ipynb``), following Vaswani et al. (2017):

* Eq. (1) of the paper, scaled dot-product attention:
  ``Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V``;
* multi-head attention: ``h`` attention heads on learned projections, concatenated and
  projected back (Section 3.2.2);
* sinusoidal positional encodings (Section 3.5), one function for positions here and for the
  U-Net's timestep embedding (chapters 3 and 5);
* a *pre-norm* Transformer block (LayerNorm before each sub-layer, as in GPT-2 and T5),
  with optional cross-attention: queries from the sequence being processed, keys and values
  from another one. This is how Imagen's U-Net reads the text encoder's output.

Masks are boolean and **True means "may attend"** everywhere in this package.

Two paths compute attention, with the same maths: the explicit ``softmax(Q K^T / sqrt(d)) V``
that the chapter derives (it returns the weights, for the heatmaps), and, when nobody asks for the
weights, PyTorch's fused ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels
on a GPU, which never store the ``(Tq, Tk)`` matrix), as nanoGPT's ``flash`` flag does.
``tests/test_attention_fast.py`` checks the two against each other.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

__all__ = [
    "MaskError",
    "scaled_dot_product_attention",
    "causal_mask",
    "sinusoidal_embedding",
    "sinusoidal_positions",
    "LearnedPositions",
    "MultiHeadAttention",
    "FeedForward",
    "TransformerBlock",
    "Transformer",
]


class MaskError(ValueError, TypeError):
    """A mask of the wrong dtype or shape. Both a ``ValueError`` and a ``TypeError``."""


def _check_mask(mask: torch.Tensor, target: tuple[int, ...], what: str) -> None:
    if not isinstance(mask, torch.Tensor):
        raise MaskError(f"{what} must be a torch.Tensor of dtype torch.bool, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise MaskError(f"{what} must have dtype torch.bool (True = may attend), got {mask.dtype}")
    try:
        torch.broadcast_shapes(mask.shape, target)
    except RuntimeError:
        raise MaskError(f"{what} of shape {tuple(mask.shape)} does not broadcast to "
                        f"{tuple(target)} (..., Tq, Tk)") from None
    if torch.broadcast_shapes(mask.shape, target) != torch.Size(target):
        raise MaskError(f"{what} of shape {tuple(mask.shape)} would enlarge the scores "
                        f"{tuple(target)}; expected a shape broadcastable to (..., Tq, Tk)")


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() < 2:
            raise ValueError(f"{name} must have at least 2 dimensions (..., T, d), got shape {tuple(t.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share their last (head) dimension d: got q {tuple(q.shape)} "
                         f"and k {tuple(k.shape)}, expected q (..., Tq, d) and k (..., Tk, d)")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same number of keys Tk: got k {tuple(k.shape)} "
                         f"and v {tuple(v.shape)}, expected k (..., Tk, d) and v (..., Tk, dv)")


def _fused_attention(q, k, v, mask, dropout_p: float) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` with this module's rule for a query that may attend to
    no key: a zero output (the mask is opened for that row, so no backend makes NaNs, then the
    row is zeroed). Same maths as the explicit path of :func:`scaled_dot_product_attention`."""
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    any_key = mask.any(dim=-1, keepdim=True)  # (..., Tq, 1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask | ~any_key, dropout_p=dropout_p)
    return out.masked_fill(~any_key, 0.0)


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 mask: torch.Tensor | None = None, *, need_weights: bool = True,
                                 dropout_p: float = 0.0):
    """Scaled dot-product attention, Eq. (1) of Vaswani et al.

    Derived in chapter 1, Eq. (ch1-eq-sdpa); the mask is Eq. (ch1-eq-mask), the scale 1/sqrt(d)
    is motivated by Eq. (ch1-eq-variance).

    Args:
        q: queries ``(..., Tq, d)``.
        k: keys ``(..., Tk, d)``.
        v: values ``(..., Tk, dv)``.
        mask: optional boolean tensor broadcastable to ``(..., Tq, Tk)``; True means the query
            may attend to that key. A query whose keys are all masked gets zero weights and a
            zero output (instead of the NaNs a plain softmax over ``-inf`` would give).
        need_weights: True (default) computes the weights explicitly, as below, and returns them;
            False hands the same computation to torch's fused kernel and returns ``None`` for them.
        dropout_p: dropout on the weights (training only; pass 0 in eval).

    Returns:
        ``(output, weights)``: ``output`` is ``(..., Tq, dv)`` and ``weights`` ``(..., Tq, Tk)``,
        each row of ``weights`` summing to 1 (or 0 for a fully masked query); ``None`` when
        ``need_weights`` is False.
    """
    _check_qkv(q, k, v)
    if mask is not None:
        batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2])
        _check_mask(mask, (*batch, q.shape[-2], k.shape[-2]), "mask")
    if not need_weights:
        return _fused_attention(q, k, v, mask, dropout_p), None
    d = q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)  # (..., Tq, Tk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        # rows with no allowed key: softmax(-inf, ..., -inf) is NaN; define them as zero
        weights = torch.nan_to_num(weights, nan=0.0)
    else:
        weights = torch.softmax(scores, dim=-1)
    if dropout_p > 0:
        weights = F.dropout(weights, dropout_p)
    return weights @ v, weights


def causal_mask(t: int, device=None) -> torch.Tensor:
    """The ``(t, t)`` boolean causal mask: position i may attend to positions j <= i (chapter 1)."""
    if not isinstance(t, int) or t < 1:
        raise ValueError(f"causal_mask needs a positive int length, got {t!r}")
    return torch.ones(t, t, dtype=torch.bool, device=device).tril()


def sinusoidal_embedding(x: torch.Tensor, d: int, base: float = 10000.0, *,
                         interleave: bool = True) -> torch.Tensor:
    """Sinusoids of positions or timesteps ``x (N,)`` (ints or floats) -> ``(N, d)`` float32.

    Eq. (ch1-eq-sinusoid): the angles are ``x * w_i`` with ``w_i = base^(-2i/d)``,
    ``i = 0 .. d/2 - 1`` (computed as ``exp(-ln(base) * i / (d/2))``, as DDPM and diffusers do).

    * ``interleave=True``: ``[sin(x w_0), cos(x w_0), sin(x w_1), cos(x w_1), ...]``, the
      Transformer's layout (:func:`sinusoidal_positions`, chapter 1);
    * ``interleave=False``: ``[cos(x w_0), ..., cos(x w_{d/2-1}), sin(x w_0), ...]``, the
      DDPM / ADM timestep layout (:func:`imagen_edu.unet.timestep_embedding`, chapter 3; diffusers'
      ``get_timestep_embedding`` with ``flip_sin_to_cos=True, downscale_freq_shift=0``).

    The two layouts are one permutation of the same features; it matters only to trained weights
    that read them (the U-Net checkpoints read the second).
    """
    if not isinstance(d, int) or d < 2 or d % 2:
        raise ValueError(f"sinusoidal embeddings need an even int dimension d >= 2, got {d!r}")
    half = d // 2
    freqs = torch.exp(-math.log(base) * torch.arange(half, dtype=torch.float32, device=x.device) / half)
    angles = x.float()[:, None] * freqs[None]  # (N, d/2)
    if interleave:
        return torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(-2)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def sinusoidal_positions(t: int, d: int, base: float = 10000.0) -> torch.Tensor:
    """Sinusoidal positional encodings ``(t, d)`` (Vaswani et al., Section 3.5).

    Derived in chapter 1, Eq. (ch1-eq-sinusoid); dot products depend only on the offset,
    Eq. (ch1-eq-offset).

    ``PE[pos, 2i] = sin(pos / base^(2i/d))`` and ``PE[pos, 2i+1] = cos(pos / base^(2i/d))``:
    :func:`sinusoidal_embedding` of the positions ``0 .. t-1``.
    """
    if not isinstance(t, int) or t < 1:
        raise ValueError(f"sinusoidal_positions needs a positive int length t, got {t!r}")
    if not isinstance(d, int) or d < 2 or d % 2:
        raise ValueError(f"sinusoidal_positions needs an even int dimension d >= 2, got {d!r}")
    return sinusoidal_embedding(torch.arange(t), d, base)


class LearnedPositions(nn.Module):
    """Learned absolute positions: one trainable vector per position, added to the input."""

    def __init__(self, max_len: int, d: int):
        super().__init__()
        self.max_len = max_len
        self.weight = nn.Parameter(torch.randn(max_len, d) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, T, d)`` -> ``x + positions[:T]``."""
        t = x.shape[-2]
        if t > self.max_len:
            raise ValueError(f"sequence of length {t} is longer than max_len={self.max_len}")
        return x + self.weight[:t]


class MultiHeadAttention(nn.Module):
    """Multi-head attention (Vaswani et al., Section 3.2.2); self- or cross-attention.

    Derived in chapter 1, Eq. (ch1-eq-mha).

    ``forward(x)`` is self-attention. ``forward(x, context)`` is cross-attention: queries come
    from ``x (B, Tq, d_model)``, keys and values from ``context (B, Tk, d_context)``.

    Args:
        d_model: width of the queries' sequence (and of the output).
        n_heads: number of heads; must divide ``d_model``.
        d_context: width of the context for cross-attention (default ``d_model``).
        bias: whether the projections have biases.
        dropout: dropout on the attention weights during training.

    ``self.flash`` (nanoGPT's flag, default True) lets calls that do not ask for the weights use
    torch's fused kernel; set it False to force the explicit path (the golden tests compare both).
    """

    def __init__(self, d_model: int, n_heads: int, d_context: int | None = None,
                 bias: bool = True, dropout: float = 0.0):
        super().__init__()
        if not isinstance(d_model, int) or not isinstance(n_heads, int) or n_heads < 1 or d_model < 1:
            raise ValueError(f"d_model and n_heads must be positive ints, got {d_model!r} and {n_heads!r}")
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}: "
                             f"each head needs d_model / n_heads dimensions")
        d_context = d_model if d_context is None else d_context
        self.d_model, self.n_heads, self.d_context = d_model, n_heads, d_context
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_context, d_model, bias=bias)
        self.v_proj = nn.Linear(d_context, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        self.dropout = dropout
        self.flash = True

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, key_mask: torch.Tensor | None = None,
                causal: bool = False, need_weights: bool = True):
        """Attend from ``x`` to itself (or to ``context``).

        Args:
            x: ``(B, Tq, d_model)``.
            context: ``(B, Tk, d_context)`` for cross-attention, else ``None``.
            mask: boolean ``(Tq, Tk)``, ``(B, 1, Tq, Tk)`` or ``(B, n_heads, Tq, Tk)`` (anything
                4-D broadcastable to the last); True = may attend. 3-D masks are refused as ambiguous.
            key_mask: boolean ``(B, Tk)``: False marks padding keys nobody may attend to
                (a text mask, for instance).
            causal: also forbid attending to later positions (self-attention only).
            need_weights: return the weights (explicit path); False returns ``None`` for them
                and, with ``self.flash``, runs the fused kernel.

        Returns:
            ``(output (B, Tq, d_model), weights (B, n_heads, Tq, Tk) or None)``.
        """
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must be (B, Tq, d_model={self.d_model}), got {tuple(x.shape)}")
        ctx = x if context is None else context
        if ctx.dim() != 3 or ctx.shape[-1] != self.d_context or ctx.shape[0] != x.shape[0]:
            raise ValueError(f"context must be (B={x.shape[0]}, Tk, d_context={self.d_context}), "
                             f"got {tuple(ctx.shape)}")
        b, tq, tk = x.shape[0], x.shape[1], ctx.shape[1]
        q = rearrange(self.q_proj(x), "b t (h d) -> b h t d", h=self.n_heads)
        k = rearrange(self.k_proj(ctx), "b t (h d) -> b h t d", h=self.n_heads)
        v = rearrange(self.v_proj(ctx), "b t (h d) -> b h t d", h=self.n_heads)

        full = None
        if mask is not None:
            if isinstance(mask, torch.Tensor) and mask.dim() == 3:
                # (B, Tq, Tk) would silently line B up with the heads axis
                raise MaskError(f"a 3-D mask {tuple(mask.shape)} is ambiguous (batch or heads first?): expected "
                                f"(Tq, Tk), (B, 1, Tq, Tk) or (B, n_heads, Tq, Tk) = {(b, self.n_heads, tq, tk)}")
            _check_mask(mask, (b, self.n_heads, tq, tk), "mask")
            full = mask
        if key_mask is not None:
            if not isinstance(key_mask, torch.Tensor) or key_mask.dtype != torch.bool:
                raise MaskError(f"key_mask must be a torch.bool tensor of shape (B, Tk), got "
                                f"{getattr(key_mask, 'dtype', type(key_mask).__name__)}")
            if tuple(key_mask.shape) != (b, tk):
                raise MaskError(f"key_mask must have shape (B, Tk) = {(b, tk)}, got {tuple(key_mask.shape)}")
            km = rearrange(key_mask, "b k -> b 1 1 k")
            full = km if full is None else full & km
        if causal:
            if context is not None and tq != tk:
                raise ValueError("causal=True needs as many keys as queries (self-attention)")
            cm = causal_mask(tq, device=x.device)
            full = cm if full is None else full & cm

        out, weights = scaled_dot_product_attention(q, k, v, full, need_weights=need_weights or not self.flash,
                                                    dropout_p=self.dropout if self.training else 0.0)
        out = rearrange(out, "b h t d -> b t (h d)")
        return self.out_proj(out), (weights if need_weights else None)


class FeedForward(nn.Module):
    """The position-wise MLP of a Transformer block: Linear, GELU, Linear."""

    def __init__(self, d_model: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_model, mult * d_model),
            nn.GELU(),
            nn.Linear(mult * d_model, d_model),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """A pre-norm Transformer block, optionally with cross-attention (chapter 1, Eq. (ch1-eq-prenorm)).

    ``x = x + SelfAttn(LN(x)); [x = x + CrossAttn(LN(x), context)]; x = x + MLP(LN(x))``.

    With ``self.keep_weights = True`` the attention weights of the last call are kept in
    ``self.last_weights`` (a dict with ``"self"`` and, with cross-attention, ``"cross"``) for the
    book's heatmaps; by default (False) nothing is kept and attention runs on the fused kernel.
    """

    def __init__(self, d_model: int, n_heads: int, mlp_mult: int = 4, dropout: float = 0.0,
                 cross_attention: bool = False, d_context: int | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, n_heads, dropout=dropout)
        self.cross = None
        if cross_attention:
            self.norm_cross = nn.LayerNorm(d_model)
            self.cross = MultiHeadAttention(d_model, n_heads, d_context=d_context, dropout=dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = FeedForward(d_model, mlp_mult, dropout)
        self.keep_weights = False
        self.last_weights: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                key_mask: torch.Tensor | None = None, causal: bool = False,
                context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x (B, T, d_model)`` -> ``(B, T, d_model)``.

        ``mask``/``key_mask``/``causal`` restrict self-attention; ``context (B, Tc, d_context)``
        with ``context_mask (B, Tc)`` feed cross-attention (required iff the block has it).
        """
        keep = self.keep_weights
        h, w = self.attn(self.norm1(x), mask=mask, key_mask=key_mask, causal=causal, need_weights=keep)
        self.last_weights = {"self": w.detach()} if keep else {}
        x = x + h
        if self.cross is not None:
            if context is None:
                raise ValueError("this block has cross-attention: pass context (B, Tc, d_context)")
            h, w = self.cross(self.norm_cross(x), context, key_mask=context_mask, need_weights=keep)
            if keep:
                self.last_weights["cross"] = w.detach()
            x = x + h
        elif context is not None:
            raise ValueError("this block has no cross-attention; build it with cross_attention=True")
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """A stack of :class:`TransformerBlock` with a final LayerNorm (pre-norm style)."""

    def __init__(self, d_model: int, n_heads: int, n_layers: int, mlp_mult: int = 4,
                 dropout: float = 0.0, cross_attention: bool = False, d_context: int | None = None):
        super().__init__()
        self.blocks = nn.ModuleList(
            TransformerBlock(d_model, n_heads, mlp_mult, dropout, cross_attention, d_context)
            for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """``x (B, T, d_model)`` -> ``(B, T, d_model)``; keyword arguments go to every block."""
        for block in self.blocks:
            x = block(x, **kwargs)
        return self.norm(x)
