"""A T5-style encoder-decoder Transformer and its span-corruption objective (chapter 2b).

Raffel et al. 2020, *Exploring the Limits of Transfer Learning with a Unified Text-to-Text
Transformer* (``raffel2020t5``), in the "v1.1" form that Imagen's T5-XXL has (Saharia et al.
2022, Section 2.1):

* an **encoder** whose self-attention is *bidirectional* (every token sees every other real
  token) and a **decoder** whose self-attention is *causal* (chapter 2's mask) and which reads
  the encoder's final states by **cross-attention** (chapter 1);
* pre-norm residual blocks with **RMS normalisation** (a scale, no mean subtraction and no
  bias): ``x / sqrt(mean(x^2) + eps) * g`` (Zhang and Sennrich 2019);
* **relative position biases** instead of position embeddings: a learned scalar per head and
  per *bucket* of the signed distance ``j - i`` is added to the attention logits
  (:func:`relative_position_bucket`); the first layer of each stack owns the table and every
  layer of that stack reuses it. There is no ``1/sqrt(d)`` on the logits: T5 folds that scale
  into the initialisation of the query projection;
* a **gated-GELU** feed-forward layer ``W_o (gelu(W_0 x) * (W_1 x))`` (Shazeer 2020);
* pretraining by **span corruption** (:func:`span_corruption`, Raffel et al. Section 3.1.4):
  random spans of the input are replaced by sentinel tokens and the decoder writes out only
  the dropped spans, each after its sentinel. The encoder always sees the whole (corrupted)
  input; only the dropped tokens are targets.

Imagen keeps only the encoder, frozen (:class:`T5.encode`). The parameter layout matches
Hugging Face's ``T5ForConditionalGeneration`` one to one, so :func:`load_transformers_weights`
copies its weights across (the golden test in ``tests/test_t5.py`` checks both give the same
encoder states, logits and loss).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from . import checkpoints
from .attention import causal_mask
from .tokenizer import WordTokenizer

__all__ = [
    "T5Config",
    "relative_position_bucket",
    "RMSNorm",
    "T5Attention",
    "GatedGeluFeedForward",
    "T5Block",
    "T5Stack",
    "T5",
    "span_corruption",
    "shift_right",
    "load_transformers_weights",
    "save_t5",
    "load_t5",
    "IGNORE_INDEX",
]

#: label value that the loss ignores (padding of the targets), as in ``F.cross_entropy``
IGNORE_INDEX = -100


@dataclass
class T5Config:
    """Sizes of a T5 v1.1 model (Raffel et al. 2020, Section 3.1; T5-XXL: d_model 4096, 24 + 24 layers).

    Attributes:
        vocab_size: number of token ids (sentinels included).
        d_model: width of the residual stream.
        n_heads: attention heads; each has width ``d_kv``.
        d_kv: width of one head (T5 does not tie it to ``d_model / n_heads``).
        d_ff: hidden width of the gated feed-forward layer.
        n_layers: encoder blocks.
        n_decoder_layers: decoder blocks.
        num_buckets: relative-position buckets per direction pair (T5: 32).
        max_distance: distances at or beyond this share the last bucket (T5: 128).
        dropout: dropout rate (T5 pretraining: 0.1; 0 for the toy).
        eps: RMS normalisation epsilon.
        pad_id: padding id, also the decoder's start token (as in T5).
    """

    vocab_size: int
    d_model: int = 64
    n_heads: int = 4
    d_kv: int = 16
    d_ff: int = 128
    n_layers: int = 2
    n_decoder_layers: int = 2
    num_buckets: int = 32
    max_distance: int = 128
    dropout: float = 0.0
    eps: float = 1e-6
    pad_id: int = 0

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_heads", "d_kv", "d_ff", "n_layers", "n_decoder_layers",
                     "num_buckets", "max_distance"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"T5Config.{name} must be a positive int, got {v!r}")
        if self.num_buckets < 4 or self.num_buckets % 2:
            raise ValueError(f"T5Config.num_buckets must be an even int >= 4, got {self.num_buckets}")
        if self.max_distance <= self.num_buckets // 4:
            raise ValueError(f"T5Config.max_distance must exceed num_buckets / 4 = {self.num_buckets // 4}, "
                             f"got {self.max_distance}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"T5Config.dropout must be in [0, 1), got {self.dropout!r}")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"T5Config.pad_id must be a token id in [0, {self.vocab_size}), got {self.pad_id}")

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Relative positions (Raffel et al. 2020, Section 2.1)
# ---------------------------------------------------------------------------------------------
def relative_position_bucket(relative_position: torch.Tensor, *, bidirectional: bool, num_buckets: int = 32,
                             max_distance: int = 128) -> torch.Tensor:
    """The bucket of each signed distance ``j - i`` (key position minus query position).

    Derived in chapter 2b, Eq. (ch2b-eq-bucket). With ``bidirectional=True`` (the encoder) half of
    the buckets are for keys after the query and half for keys before it; with ``False`` (the
    causal decoder) only ``j <= i`` occurs and all buckets describe the past. Within a direction,
    with ``n`` buckets there: distances ``0 .. n/2 - 1`` get a bucket each (exact), and larger
    distances share logarithmically wider buckets up to ``max_distance``; everything farther is
    in the last bucket. So nearby words are told apart exactly and far ones only roughly.

    ``relative_position``: integer tensor of any shape. Returns long buckets in ``[0, num_buckets)``.
    """
    if relative_position.dtype.is_floating_point:
        raise TypeError(f"relative_position must be an integer tensor, got {relative_position.dtype}")
    rel = relative_position.long()
    n = num_buckets
    bucket = torch.zeros_like(rel)
    if bidirectional:
        n //= 2
        bucket = bucket + (rel > 0).long() * n      # keys to the right use the upper half
        dist = rel.abs()
    else:
        dist = (-rel).clamp(min=0)                  # only the past: distance i - j >= 0
    exact = n // 2
    # log-spaced: exact + log(dist / exact) / log(max_distance / exact) * (n - exact), floored
    far = exact + (torch.log(dist.float().clamp(min=1) / exact) / math.log(max_distance / exact)
                   * (n - exact)).long()
    far = far.clamp(max=n - 1)
    return bucket + torch.where(dist < exact, dist, far)


class RelativePositionBias(nn.Module):
    """A learned bias ``(1, H, Tq, Tk)`` per head and relative-position bucket, added to attention logits."""

    def __init__(self, config: T5Config, bidirectional: bool):
        super().__init__()
        self.bidirectional = bidirectional
        self.num_buckets, self.max_distance = config.num_buckets, config.max_distance
        self.table = nn.Embedding(config.num_buckets, config.n_heads)

    def forward(self, tq: int, tk: int) -> torch.Tensor:
        device = self.table.weight.device
        rel = torch.arange(tk, device=device)[None, :] - torch.arange(tq, device=device)[:, None]   # (Tq, Tk): j - i
        buckets = relative_position_bucket(rel, bidirectional=self.bidirectional, num_buckets=self.num_buckets,
                                           max_distance=self.max_distance)
        return rearrange(self.table(buckets), "tq tk h -> 1 h tq tk")


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """T5's layer norm: ``x / sqrt(mean(x^2) + eps) * weight``, no mean subtraction, no bias.

    Computed in float32 whatever the input dtype. ``(..., D) -> (..., D)``. Eq. (ch2b-eq-rms).
    """

    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rms = x.float().pow(2).mean(-1, keepdim=True).add(self.eps).rsqrt()
        return self.weight * (x.float() * rms).to(self.weight.dtype)


class T5Attention(nn.Module):
    """Multi-head attention without the ``1/sqrt(d)`` scale, with an additive position bias.

    ``logits = Q K^T + bias`` then a masked softmax (Eq. ch2b-eq-attn). Self-attention when
    ``context`` is None, cross-attention (queries from ``x``, keys and values from ``context``)
    otherwise. ``x (B, Tq, D)``, ``context (B, Tk, D)``, ``mask`` bool broadcastable to
    ``(B, H, Tq, Tk)`` (True = may attend), ``bias (1 or B, H, Tq, Tk)``. Returns ``(B, Tq, D)``.
    """

    def __init__(self, config: T5Config):
        super().__init__()
        inner = config.n_heads * config.d_kv
        self.n_heads = config.n_heads
        self.q = nn.Linear(config.d_model, inner, bias=False)
        self.k = nn.Linear(config.d_model, inner, bias=False)
        self.v = nn.Linear(config.d_model, inner, bias=False)
        self.o = nn.Linear(inner, config.d_model, bias=False)
        self.dropout = config.dropout

    def forward(self, x, context=None, mask=None, bias=None):
        context = x if context is None else context
        q, k, v = (rearrange(p(s), "b t (h d) -> b h t d", h=self.n_heads)
                   for p, s in ((self.q, x), (self.k, context), (self.v, context)))
        logits = q @ k.transpose(-2, -1)                                     # (B, H, Tq, Tk), no 1/sqrt(d)
        if bias is not None:
            logits = logits + bias
        if mask is not None:
            logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
        weights = torch.softmax(logits.float(), dim=-1).to(q.dtype)
        weights = F.dropout(weights, self.dropout, self.training)
        return self.o(rearrange(weights @ v, "b h t d -> b t (h d)"))


class GatedGeluFeedForward(nn.Module):
    """``W_o (gelu(W_0 x) * (W_1 x))`` with the tanh form of GELU (T5 v1.1; Shazeer 2020). Eq. (ch2b-eq-ff)."""

    def __init__(self, config: T5Config):
        super().__init__()
        self.wi_0 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wi_1 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.wi_0(x), approximate="tanh") * self.wi_1(x)
        return self.wo(F.dropout(h, self.dropout, self.training))


class T5Block(nn.Module):
    """One pre-norm block: self-attention, (decoder only) cross-attention, feed-forward, each residual."""

    def __init__(self, config: T5Config, cross: bool):
        super().__init__()
        self.norm_self = RMSNorm(config.d_model, config.eps)
        self.self_attn = T5Attention(config)
        self.norm_cross = RMSNorm(config.d_model, config.eps) if cross else None
        self.cross_attn = T5Attention(config) if cross else None
        self.norm_ff = RMSNorm(config.d_model, config.eps)
        self.ff = GatedGeluFeedForward(config)
        self.dropout = config.dropout

    def forward(self, x, mask, bias, context=None, context_mask=None):
        drop = lambda h: F.dropout(h, self.dropout, self.training)  # noqa: E731
        x = x + drop(self.self_attn(self.norm_self(x), mask=mask, bias=bias))
        if self.cross_attn is not None:
            x = x + drop(self.cross_attn(self.norm_cross(x), context=context, mask=context_mask))
        return x + drop(self.ff(self.norm_ff(x)))


class T5Stack(nn.Module):
    """The encoder (bidirectional, ``decoder=False``) or the decoder (causal, with cross-attention)."""

    def __init__(self, config: T5Config, decoder: bool):
        super().__init__()
        self.decoder = decoder
        n = config.n_decoder_layers if decoder else config.n_layers
        self.position_bias = RelativePositionBias(config, bidirectional=not decoder)
        self.blocks = nn.ModuleList(T5Block(config, cross=decoder) for _ in range(n))
        self.final_norm = RMSNorm(config.d_model, config.eps)
        self.dropout = config.dropout

    def forward(self, x, mask, context=None, context_mask=None):
        """``x (B, T, D)`` embedded tokens, ``mask (B, T)`` bool -> final states ``(B, T, D)``."""
        t = x.shape[1]
        attend = mask[:, None, None, :]                                       # keys: real tokens only
        if self.decoder:
            attend = attend & causal_mask(t, device=x.device)                 # ... and not the future
        cross = None if context_mask is None else context_mask[:, None, None, :]
        bias = self.position_bias(t, t)
        x = F.dropout(x, self.dropout, self.training)
        for block in self.blocks:
            x = block(x, attend, bias, context, cross)
        return F.dropout(self.final_norm(x), self.dropout, self.training)


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------
def shift_right(labels: torch.Tensor, start_id: int) -> torch.Tensor:
    """Teacher forcing: the decoder reads ``[start, y_1, ..., y_{n-1}]`` to predict ``[y_1, ..., y_n]``.

    ``labels (B, N)`` long; ignored positions (``IGNORE_INDEX``) are read as ``start_id`` (padding).
    """
    shifted = torch.full_like(labels, start_id)
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == IGNORE_INDEX, start_id)


class T5(nn.Module):
    """A T5 v1.1 encoder-decoder: shared embeddings, two stacks, an untied output projection.

    ``encode(ids, mask)`` is what Imagen keeps (frozen): the encoder's final states per token.
    ``forward(ids, mask, decoder_ids)`` gives next-token logits of the decoder, and
    ``loss(ids, mask, labels)`` the mean cross-entropy over the non-ignored labels.
    """

    def __init__(self, config: T5Config):
        super().__init__()
        self.config = config
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = T5Stack(config, decoder=False)
        self.decoder = T5Stack(config, decoder=True)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self._init_weights()

    def _init_weights(self):
        """T5's initialisation: normal with std ``d^-1/2`` of each layer's fan-in.

        The query projection gets ``(d_model d_kv)^-1/2``, which plays the role of the missing
        ``1/sqrt(d)`` in the attention logits (Mesh TensorFlow's recipe, used by T5).
        """
        c = self.config
        nn.init.normal_(self.shared.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=c.d_model ** -0.5)
        for m in self.modules():
            if isinstance(m, T5Attention):
                nn.init.normal_(m.q.weight, std=(c.d_model * c.d_kv) ** -0.5)
                for p in (m.k, m.v):
                    nn.init.normal_(p.weight, std=c.d_model ** -0.5)
                nn.init.normal_(m.o.weight, std=(c.n_heads * c.d_kv) ** -0.5)
            elif isinstance(m, GatedGeluFeedForward):
                nn.init.normal_(m.wi_0.weight, std=c.d_model ** -0.5)
                nn.init.normal_(m.wi_1.weight, std=c.d_model ** -0.5)
                nn.init.normal_(m.wo.weight, std=c.d_ff ** -0.5)
            elif isinstance(m, RelativePositionBias):
                nn.init.normal_(m.table.weight, std=c.d_model ** -0.5)

    def _check(self, ids: torch.Tensor, mask: torch.Tensor | None, what: str) -> torch.Tensor:
        if not isinstance(ids, torch.Tensor) or ids.dtype != torch.long or ids.dim() != 2:
            raise ValueError(f"{what} must be a long tensor (B, T), got "
                             f"{getattr(ids, 'dtype', type(ids).__name__)} {tuple(getattr(ids, 'shape', ()))}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size):
            raise ValueError(f"{what} must lie in [0, {self.config.vocab_size}), got min {int(ids.min())}, "
                             f"max {int(ids.max())}")
        if mask is None:
            return ids != self.config.pad_id
        if mask.shape != ids.shape or mask.dtype != torch.bool:
            raise ValueError(f"the mask of {what} must be bool {tuple(ids.shape)}, got {mask.dtype} {tuple(mask.shape)}")
        return mask

    def encode(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``ids (B, T)`` long, ``mask (B, T)`` bool (default: ids != pad) -> encoder states ``(B, T, D)``."""
        mask = self._check(ids, mask, "ids")
        return self.encoder(self.shared(ids), mask)

    def hidden(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's final states, by the name every frozen text encoder reads (:mod:`imagen_edu.text_encoders`)."""
        return self.encode(ids, mask)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None, decoder_ids: torch.Tensor,
                decoder_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder logits ``(B, N, V)`` for ``decoder_ids (B, N)`` given the encoder input ``ids (B, T)``."""
        mask = self._check(ids, mask, "ids")
        if decoder_mask is None:
            decoder_mask = torch.ones_like(decoder_ids, dtype=torch.bool)
        decoder_mask = self._check(decoder_ids, decoder_mask, "decoder_ids")
        states = self.encoder(self.shared(ids), mask)
        h = self.decoder(self.shared(decoder_ids), decoder_mask, context=states, context_mask=mask)
        return self.lm_head(h)

    def loss(self, ids: torch.Tensor, mask: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of ``labels (B, N)`` (``IGNORE_INDEX`` skipped) under teacher forcing. Eq. (ch2b-eq-loss)."""
        decoder_ids = shift_right(labels, self.config.pad_id)
        logits = self(ids, mask, decoder_ids)
        return F.cross_entropy(rearrange(logits, "b n v -> (b n) v").float(), labels.reshape(-1),
                               ignore_index=IGNORE_INDEX)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


# ---------------------------------------------------------------------------------------------
# Span corruption (Raffel et al. 2020, Section 3.1.4)
# ---------------------------------------------------------------------------------------------
def _random_partition(total: int, parts: int, generator: torch.Generator | None) -> list[int]:
    """``total`` items cut into ``parts`` non-empty runs at random (a uniform composition)."""
    if parts <= 1:
        return [total]
    cuts = torch.randperm(total - 1, generator=generator)[: parts - 1].sort().values + 1
    edges = [0, *cuts.tolist(), total]
    return [b - a for a, b in zip(edges[:-1], edges[1:])]


def span_corruption(tokens, sentinels, *, noise_density: float = 0.15, mean_span_length: float = 3.0,
                    eos_id: int | None = None, generator: torch.Generator | None = None) -> tuple[list[int], list[int]]:
    """T5's pretraining example from one token sequence: ``(input ids, target ids)``.

    Derived in chapter 2b. ``round(L * noise_density)`` tokens (at least 1, at most ``L - 1``) are
    dropped in ``round(noise / mean_span_length)`` spans (at least 1), placed uniformly at random:
    the kept tokens fall into ``spans + 1`` runs, those between two spans non-empty (else two spans
    would merge) and the two at the ends possibly empty. (T5's original recipe always starts with
    a kept run and ends with a span, so the last word of a short caption would always be the one
    dropped.) Each dropped span is replaced in the input by the next sentinel; the target lists,
    for each span, its sentinel and then its tokens, and ends with one more sentinel (and ``eos_id``).

    Example: ``a red circle left of a blue square`` with spans ``red`` and ``of a`` gives the input
    ``a <s0> circle left <s1> blue square`` and the target ``<s0> red <s1> of a <s2>``.

    Args:
        tokens: a sequence of ints (no padding).
        sentinels: sentinel ids, one more than the largest number of spans that can occur.
        generator: for reproducible masks.
    """
    tokens = [int(t) for t in tokens]
    n = len(tokens)
    if n < 2:
        raise ValueError(f"span corruption needs at least 2 tokens, got {n}")
    if not 0.0 < noise_density < 1.0:
        raise ValueError(f"noise_density must be in (0, 1), got {noise_density!r}")
    if not mean_span_length >= 1.0:
        raise ValueError(f"mean_span_length must be >= 1, got {mean_span_length!r}")
    n_noise = min(max(int(round(n * noise_density)), 1), n - 1)
    n_spans = max(int(round(n_noise / mean_span_length)), 1)
    n_spans = min(n_spans, n_noise, n - n_noise + 1)      # spans non-empty, kept runs between them too
    sentinels = list(sentinels)
    if len(sentinels) < n_spans + 1:
        raise ValueError(f"need {n_spans + 1} sentinel ids for {n_spans} spans, got {len(sentinels)}")
    noise_runs = _random_partition(n_noise, n_spans, generator)
    kept_runs = _random_partition(n - n_noise + 2, n_spans + 1, generator)
    kept_runs[0] -= 1                                      # the end runs may be empty
    kept_runs[-1] -= 1
    inputs, targets, pos = [], [], 0
    for i, drop in enumerate(noise_runs):
        inputs += tokens[pos:pos + kept_runs[i]]
        pos += kept_runs[i]
        inputs.append(sentinels[i])
        targets += [sentinels[i], *tokens[pos:pos + drop]]
        pos += drop
    inputs += tokens[pos:]
    targets.append(sentinels[n_spans])
    if eos_id is not None:
        inputs.append(eos_id)
        targets.append(eos_id)
    return inputs, targets


# ---------------------------------------------------------------------------------------------
# Hugging Face weights
# ---------------------------------------------------------------------------------------------
def _transformers_names(config: T5Config) -> dict[str, str]:
    """Our parameter name -> ``T5ForConditionalGeneration``'s, for the same sizes."""
    names = {"shared.weight": "shared.weight", "lm_head.weight": "lm_head.weight"}
    for stack, n in (("encoder", config.n_layers), ("decoder", config.n_decoder_layers)):
        names[f"{stack}.position_bias.table.weight"] = \
            f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        names[f"{stack}.final_norm.weight"] = f"{stack}.final_layer_norm.weight"
        for i in range(n):
            ours, theirs = f"{stack}.blocks.{i}", f"{stack}.block.{i}.layer"
            parts = [("self_attn", "norm_self", "0.SelfAttention", "0.layer_norm")]
            if stack == "decoder":
                parts.append(("cross_attn", "norm_cross", "1.EncDecAttention", "1.layer_norm"))
            ff = "2" if stack == "decoder" else "1"
            for attn, norm, their_attn, their_norm in parts:
                for p in "qkvo":
                    names[f"{ours}.{attn}.{p}.weight"] = f"{theirs}.{their_attn}.{p}.weight"
                names[f"{ours}.{norm}.weight"] = f"{theirs}.{their_norm}.weight"
            for p in ("wi_0", "wi_1", "wo"):
                names[f"{ours}.ff.{p}.weight"] = f"{theirs}.{ff}.DenseReluDense.{p}.weight"
            names[f"{ours}.norm_ff.weight"] = f"{theirs}.{ff}.layer_norm.weight"
    return names


def load_transformers_weights(model: T5, state_dict: dict[str, torch.Tensor]) -> T5:
    """Copy a ``T5ForConditionalGeneration`` state dict (v1.1 layout: gated-GELU, untied head) into ``model``.

    Every parameter of ``model`` must be found, with the same shape; a clear ``ValueError``
    names the first one that is not.
    """
    ours = {}
    for name, theirs in _transformers_names(model.config).items():
        if theirs not in state_dict:
            raise ValueError(f"the state dict has no {theirs!r} (needed for our {name!r}); expected a T5 v1.1 "
                             f"T5ForConditionalGeneration with {model.config.n_layers} encoder and "
                             f"{model.config.n_decoder_layers} decoder layers")
        ours[name] = state_dict[theirs]
    model.load_state_dict(ours, strict=True)
    return model


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------
def save_t5(path, model: T5, tok: WordTokenizer, recipe: dict | None = None, extra: dict | None = None):
    """Write the whole T5 (encoder and decoder) with its config, tokenizer and training recipe as safetensors."""
    meta = {"model": "t5", "config": model.config.to_dict(), "tokenizer": tok.to_json(),
            "pretrain": recipe, **(extra or {})}
    return checkpoints.save(path, model.state_dict(), meta)


def load_t5(path, device: str = "cpu") -> tuple[T5, WordTokenizer, dict]:
    """Read a :func:`save_t5` file: ``(model in eval mode, tokenizer, metadata)``."""
    state, meta = checkpoints.load(path, device)
    if meta.get("model") != "t5":
        raise ValueError(f"{path} is not a T5 checkpoint (its metadata says model={meta.get('model')!r})")
    model = T5(T5Config(**meta["config"]))
    model.load_state_dict(state)
    return model.to(device).eval(), WordTokenizer.from_json(meta["tokenizer"]), meta
