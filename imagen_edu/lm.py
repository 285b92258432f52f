"""Autoregressive language models of the caption corpus (chapter 2).

Derived in chapter 2 (``book/02_language_model.ipynb``):

* Eq. (ch2-eq-chain), the chain rule ``p(x_1..x_T) = prod_t p(x_t | x_<t)``: both models here
  output, at every position t, a distribution over the next token;
* Eq. (ch2-eq-nll), maximum likelihood = next-token cross-entropy with teacher forcing
  (:func:`loss`, :func:`token_nll`);
* Eq. (ch2-eq-ppl), perplexity ``exp(mean NLL per token)`` (:func:`perplexity`);
* Eq. (ch2-eq-bigram), the count-based bigram model (:class:`BigramLM`), the baseline;
* the GPT-style Transformer LM (:class:`GPTLM`) built from chapter 1's blocks with a causal mask
  (Radford et al. 2019); the recurrent LM of Eq. (ch2-eq-rnn) lives in :mod:`imagen_edu.rnn`
  and shares this module's loss, perplexity, sampling and training (:func:`train_model`);
* sampling with temperature, top-k and top-p (Eq. ch2-eq-temperature, :func:`filter_logits`,
  :func:`sample`), and the share of samples that parse in the grammar (:func:`grammar_rate`).

Command line (the shipped checkpoint is made with the first command)::

    python -m imagen_edu.lm train --profile cpu --seed 0 --out data/checkpoints/lm.safetensors
    python -m imagen_edu.lm eval
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from . import checkpoints, profiles
from .arguments import check_count, check_seed
from .attention import LearnedPositions, Transformer
from .data.captions import caption_corpus, parse_caption
from .profiles import torch_threads
from .tokenizer import WordTokenizer, default_tokenizer
from .train import train_small

__all__ = [
    "check_ids",
    "LMConfig",
    "GPTLM",
    "BigramLM",
    "token_nll",
    "loss",
    "perplexity",
    "filter_logits",
    "sample_next",
    "sample",
    "grammar_rate",
    "train",
    "TrainResult",
    "train_model",
    "train_lm",
    "evaluate",
    "save_model",
    "load_model",
    "load_shipped",
    "SHIPPED_NAME",
]

#: manifest name of the shipped chapter-2 model
SHIPPED_NAME = "lm"


# ---------------------------------------------------------------------------------------------
# the input check shared by the chapter's models
# ---------------------------------------------------------------------------------------------
def check_ids(ids: torch.Tensor, mask: torch.Tensor | None, vocab_size: int, max_len: int | None = None):
    """Raise a clear error unless ``ids`` is a ``(B, T)`` long tensor of ids in ``[0, vocab_size)``
    (at most ``max_len`` long, if given) and ``mask`` is ``None`` or a bool tensor of its shape.

    The input check of every chapter-2 model (:class:`GPTLM`, :class:`imagen_edu.rnn.RNNLM`).
    """
    if not isinstance(ids, torch.Tensor) or ids.dtype != torch.long or ids.dim() != 2:
        raise TypeError(f"ids must be a (B, T) torch.long tensor, got "
                        f"{getattr(ids, 'dtype', type(ids).__name__)} {tuple(getattr(ids, 'shape', ()))}")
    if max_len is not None and ids.shape[1] > max_len:
        raise ValueError(f"sequence of {ids.shape[1]} tokens is longer than max_len={max_len}")
    if ids.numel() and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"token ids must lie in [0, {vocab_size}), got "
                         f"[{int(ids.min())}, {int(ids.max())}]")
    if mask is not None and (mask.dtype != torch.bool or mask.shape != ids.shape):
        raise ValueError(f"mask must be a bool tensor of shape {tuple(ids.shape)}, got "
                         f"{mask.dtype} {tuple(mask.shape)}")


# ---------------------------------------------------------------------------------------------
# the Transformer language model
# ---------------------------------------------------------------------------------------------
@dataclass
class LMConfig:
    """Size of a :class:`GPTLM`.

    Attributes:
        vocab_size: number of tokens (specials included).
        d_model: width of the token embeddings and of every block.
        n_heads: attention heads per block (must divide ``d_model``).
        n_layers: number of Transformer blocks.
        max_len: longest sequence (number of learned positions); captions are at most 10 tokens.
        mlp_mult: width of the MLP as a multiple of ``d_model``.
        dropout: dropout in the blocks (0 for these tiny models).
    """

    vocab_size: int
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    max_len: int = 16
    mlp_mult: int = 4
    dropout: float = 0.0

    def __post_init__(self):
        for k in ("vocab_size", "d_model", "n_heads", "n_layers", "max_len", "mlp_mult"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"LMConfig.{k} must be a positive int, got {v!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"LMConfig.d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LMConfig.dropout must be in [0, 1), got {self.dropout}")


class GPTLM(nn.Module):
    """A GPT-style decoder-only language model: embeddings, causal Transformer, linear head.

    ``h = Transformer(E[x] + P)`` with a causal mask (chapter 1's pre-norm blocks and final
    LayerNorm), ``logits = W h``. Position t sees tokens ``x_1..x_t`` only, so its logits
    define ``p(x_{t+1} | x_<=t)``, Eq. (ch2-eq-chain).
    """

    def __init__(self, config: LMConfig):
        super().__init__()
        if not isinstance(config, LMConfig):
            raise TypeError(f"GPTLM needs an LMConfig, got {type(config).__name__}")
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        self.pos = LearnedPositions(config.max_len, config.d_model)
        self.transformer = Transformer(config.d_model, config.n_heads, config.n_layers,
                                       mlp_mult=config.mlp_mult, dropout=config.dropout)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)

    def hidden(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states ``(B, T, d_model)`` (after the final LayerNorm).

        ``mask (B, T)`` bool marks real tokens; padding keys are never attended to (with right
        padding the causal mask already guarantees this for real tokens).
        """
        check_ids(ids, mask, self.config.vocab_size, self.config.max_len)
        x = self.pos(self.tok_emb(ids))                    # (B, T, D)
        return self.transformer(x, causal=True, key_mask=mask)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token logits ``(B, T, vocab_size)``: row t scores ``x_{t+1}`` given ``x_<=t``."""
        return self.head(self.hidden(ids, mask))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


# ---------------------------------------------------------------------------------------------
# the bigram baseline
# ---------------------------------------------------------------------------------------------
class BigramLM(nn.Module):
    """Count-based bigram model: ``p(x_t | x_<t) ~ p(x_t | x_{t-1}) = (N[a,b] + alpha) / (N[a] + alpha V)``.

    Eq. (ch2-eq-bigram). ``counts (V, V)`` holds how often token b followed token a in the
    training texts; add-``alpha`` smoothing gives unseen pairs a small probability so held-out
    captions get a finite perplexity. ``forward`` returns log-probabilities, which are valid
    logits, so :func:`loss`, :func:`perplexity` and :func:`sample` work for both models.
    """

    def __init__(self, counts: torch.Tensor, alpha: float = 0.01):
        super().__init__()
        if counts.dim() != 2 or counts.shape[0] != counts.shape[1]:
            raise ValueError(f"counts must be a square (V, V) table, got {tuple(counts.shape)}")
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha = float(alpha)
        counts = counts.to(torch.float64)
        self.register_buffer("counts", counts)
        probs = (counts + alpha) / (counts + alpha).sum(-1, keepdim=True).clamp_min(1e-300)
        # rows never seen (e.g. <pad>, <eos>) become uniform
        unseen = (counts + alpha).sum(-1) == 0
        probs[unseen] = 1.0 / counts.shape[1]
        self.register_buffer("log_probs", probs.log().to(torch.float32))   # (V, V)

    @classmethod
    def fit(cls, tok: WordTokenizer, texts, alpha: float = 0.01) -> "BigramLM":
        """Count every (previous, next) token pair of ``texts`` (with ``<bos>``/``<eos>``)."""
        v = tok.vocab_size
        counts = torch.zeros(v, v, dtype=torch.float64)
        for t in texts:
            ids = tok.encode(t)
            for a, b in zip(ids[:-1], ids[1:]):
                counts[a, b] += 1
        return cls(counts, alpha)

    @property
    def probs(self) -> torch.Tensor:
        """The ``(V, V)`` table ``p(next = b | previous = a)``; rows sum to 1."""
        return self.log_probs.exp()

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``ids (B, T)`` -> log-probabilities ``(B, T, V)`` of the token after each position."""
        return self.log_probs[ids]


# ---------------------------------------------------------------------------------------------
# likelihood: Eq. (ch2-eq-nll) and (ch2-eq-ppl)
# ---------------------------------------------------------------------------------------------
def _device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (the CPU for a model with neither)."""
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def token_nll(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood with teacher forcing, ``(B, T-1)``.

    Inputs are ``ids[:, :-1]`` (the true prefix, never the model's own guesses: teacher
    forcing), targets ``ids[:, 1:]``. Entry t is ``-log p(x_{t+1} | x_<=t)``; positions whose
    target is padding are 0.
    """
    if ids.shape != mask.shape:
        raise ValueError(f"ids {tuple(ids.shape)} and mask {tuple(mask.shape)} must have the same (B, T) shape")
    if ids.shape[1] < 2:
        raise ValueError("need sequences of at least 2 tokens (<bos> and one more) to predict something")
    inputs, targets = ids[:, :-1], ids[:, 1:]
    logits = model(inputs, mask[:, :-1])                                   # (B, T-1, V)
    nll = F.cross_entropy(rearrange(logits, "b t v -> (b t) v").float(),
                          rearrange(targets, "b t -> (b t)"), reduction="none")
    nll = rearrange(nll, "(b t) -> b t", b=ids.shape[0])
    return nll * mask[:, 1:]


def loss(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over real target tokens, Eq. (ch2-eq-nll) (a scalar)."""
    nll = token_nll(model, ids, mask)
    return nll.sum() / mask[:, 1:].sum().clamp_min(1)


@torch.no_grad()
def perplexity(model: nn.Module, tok: WordTokenizer, texts, batch_size: int = 512) -> float:
    """``exp`` of the mean NLL per predicted token (``<eos>`` included), Eq. (ch2-eq-ppl).

    1 is a perfect model; a uniform guess over V tokens scores V.
    """
    texts = list(texts)
    if not texts:
        raise ValueError("perplexity needs at least one text")
    was_training = model.training
    model.eval()
    device = _device_of(model)
    total, count = 0.0, 0
    with torch_threads(1, device):
        for i in range(0, len(texts), batch_size):
            ids, mask = tok.batch_encode(texts[i:i + batch_size])
            ids, mask = ids.to(device), mask.to(device)
            total += float(token_nll(model, ids, mask).sum())
            count += int(mask[:, 1:].sum())
    model.train(was_training)
    return math.exp(total / count)


# ---------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------
def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set excluded logits to ``-inf``: keep the ``top_k`` largest, then the smallest set whose
    probability reaches ``top_p`` (nucleus sampling, Holtzman et al. 2020).

    ``logits (..., V)`` -> ``(..., V)``. The most likely token is always kept.
    """
    out = logits.clone()
    v = out.shape[-1]
    if top_k is not None:
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
        if top_k < v:
            kth = torch.topk(out, top_k, dim=-1).values[..., -1:]           # (..., 1)
            out = out.masked_fill(out < kth, float("-inf"))
    if top_p is not None:
        if not 0.0 < float(top_p) <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
        sorted_logits, order = torch.sort(out, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # mass strictly before each token: keep a token while the mass before it is < top_p
        before = torch.cumsum(probs, dim=-1) - probs
        drop_sorted = before >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    return out


def sample_next(logits: torch.Tensor, generator: torch.Generator | None = None, temperature: float = 1.0,
                top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Draw one token per row from ``softmax(logits / temperature)`` after top-k/top-p filtering.

    ``logits (B, V)`` -> ids ``(B,)``. ``temperature=0`` picks the argmax (greedy decoding).
    Eq. (ch2-eq-temperature).
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be (B, V), got {tuple(logits.shape)}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(-1)
    filtered = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = torch.softmax(filtered, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def sample(model: nn.Module, tok: WordTokenizer, n: int = 8, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None, seed: int | None = 0,
           prompt: str | None = None, max_len: int | None = None, return_ids: bool = False):
    """Sample ``n`` captions token by token, each continuing the ones drawn so far.

    Starts from ``<bos>`` (plus the words of ``prompt``), draws the next token from the model's
    distribution (:func:`sample_next`) and appends it, until every row has emitted ``<eos>`` or
    ``max_len`` tokens exist. ``<pad>``, ``<bos>`` and ``<unk>`` are never sampled. A given
    ``seed`` makes the result deterministic (a private ``torch.Generator``; the global RNG is
    untouched).

    Returns:
        A list of ``n`` strings (or ``(strings, ids (n, T))`` with ``return_ids``).
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    device = _device_of(model)
    if max_len is None:
        max_len = getattr(getattr(model, "config", None), "max_len", 16)
    gen = torch.Generator(device=device)
    if seed is not None:
        gen.manual_seed(int(seed))
    else:
        gen.seed()
    was_training = model.training
    model.eval()
    start = tok.encode(prompt or "", add_bos=True, add_eos=False)
    ids = torch.tensor([start] * n, dtype=torch.long, device=device)          # (n, t0)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    banned = torch.tensor([tok.pad_id, tok.bos_id, tok.unk_id], device=device)
    with torch_threads(1, device):
        while ids.shape[1] < max_len and not bool(done.all()):
            logits = model(ids)[:, -1, :].float()                               # (n, V)
            logits[:, banned] = float("-inf")
            nxt = sample_next(logits, gen, temperature, top_k, top_p)
            nxt = torch.where(done, torch.full_like(nxt, tok.pad_id), nxt)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            done = done | (nxt == tok.eos_id)
    model.train(was_training)
    texts = tok.batch_decode(ids.cpu())
    return (texts, ids) if return_ids else texts


def grammar_rate(model: nn.Module, tok: WordTokenizer, n: int = 200, seed: int = 0,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 verbose: bool = True) -> float:
    """The share of ``n`` sampled captions that parse in the shapes grammar (0..1); prints it."""
    caps = sample(model, tok, n=n, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    ok = 0
    for c in caps:
        try:
            parse_caption(c)
            ok += 1
        except ValueError:
            pass
    rate = ok / n
    if verbose:
        print(f"grammar rate: {ok}/{n} = {100 * rate:.1f}% of sampled captions parse in the grammar")
    return rate


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
def train(model: nn.Module, tok: WordTokenizer, texts, *, steps: int, batch_size: int, lr: float,
          seed: int = 0, warmup: int = 20, progress: bool = True, threads: int | None = 1) -> list[float]:
    """Train ``model`` on ``texts`` by minimising :func:`loss` with AdamW; return the loss per step.

    The recipe of :func:`imagen_edu.train.train_small` (chapter 6's Trainer): each step draws
    ``batch_size`` captions with replacement (``torch.randint`` from a generator seeded with
    ``seed``), AdamW (``betas=(0.9, 0.98)``, weight decay 0.01 on every parameter) takes a step
    on the gradient clipped to norm 1, and the learning rate warms up linearly for ``warmup``
    steps, then decays with a cosine to 10% (:func:`imagen_edu.optim.lr_at`). No EMA. Stops with
    a ``FloatingPointError`` naming the step if the loss becomes NaN/inf. The model is left in
    eval mode.

    ``threads``: CPU threads torch may use while training (see
    :func:`imagen_edu.profiles.torch_threads`); ``None`` keeps torch's setting.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    device = _device_of(model)
    all_ids, all_mask = tok.batch_encode(list(texts))
    all_ids, all_mask = all_ids.to(device), all_mask.to(device)

    def batch_fn(step, rank, world_size, gen):
        idx = torch.randint(0, all_ids.shape[0], (batch_size,), generator=gen).to(device)
        return all_ids[idx], all_mask[idx]

    return train_small(model, lambda m, batch: loss(m, *batch), batch_fn, steps=steps, batch_size=batch_size,
                       lr=lr, seed=seed, warmup=warmup, progress=progress, desc="training LM", threads=threads)


@dataclass
class TrainResult:
    """What :func:`train_lm` (and :func:`imagen_edu.rnn.train_rnn`) return."""

    model: nn.Module
    tokenizer: WordTokenizer
    losses: list[float]
    seconds: float
    settings: dict = field(default_factory=dict)


def train_model(build, settings=None, seed: int = 0, device: str | None = None, progress: bool = True,
                texts=None) -> TrainResult:
    """Build a model with ``build(tokenizer, settings)`` and train it with :func:`train` at the budget
    of ``settings`` (an ``LMSettings``; default: the active profile's): ``max_steps`` steps of
    ``batch_size`` captions at learning rate ``lr``, on ``texts`` (default: the ``train`` caption
    split). Seeds torch with ``seed`` for the init. The one training entry of every chapter-2
    model, so that they are compared at the same budget."""
    prof = profiles.current()
    s = settings if settings is not None else prof.lm
    device = device or prof.device
    tok = default_tokenizer()
    torch.manual_seed(seed)
    model = build(tok, s).to(device)
    texts = caption_corpus("train") if texts is None else list(texts)
    t0 = time.perf_counter()
    losses = train(model, tok, texts, steps=s.max_steps, batch_size=s.batch_size, lr=s.lr, seed=seed,
                   progress=progress)
    seconds = time.perf_counter() - t0
    return TrainResult(model, tok, losses, seconds, asdict(s))


def train_lm(settings=None, seed: int = 0, device: str | None = None, progress: bool = True,
             texts=None) -> TrainResult:
    """Build a :class:`GPTLM` with the sizes of ``settings`` (an ``LMSettings``; default: the
    active profile's) and train it on ``texts`` (default: the ``train`` caption split) with
    :func:`train_model`."""
    def build(tok, s):
        return GPTLM(LMConfig(vocab_size=tok.vocab_size, d_model=s.d_model, n_heads=s.n_heads, n_layers=s.n_layers))

    return train_model(build, settings, seed=seed, device=device, progress=progress, texts=texts)


# ---------------------------------------------------------------------------------------------
# checkpoints and evaluation
# ---------------------------------------------------------------------------------------------
def save_model(path, model: GPTLM, tok: WordTokenizer, extra: dict | None = None):
    """Save ``model`` and its tokenizer's vocabulary to a safetensors file (atomic)."""
    meta = {"kind": "imagen_edu.lm.GPTLM", "config": asdict(model.config),
            "vocab": json.loads(tok.to_json()), **(extra or {})}
    return checkpoints.save(path, model.state_dict(), meta)


def _model_from(state: dict, meta: dict, device: str):
    if meta.get("kind") != "imagen_edu.lm.GPTLM":
        raise ValueError(f"not a chapter-2 language model checkpoint (kind={meta.get('kind')!r})")
    tok = WordTokenizer.from_json(json.dumps(meta["vocab"]))
    model = GPTLM(LMConfig(**meta["config"]))
    model.load_state_dict(state)
    return model.to(device).eval(), tok


def load_model(path, device: str = "cpu") -> tuple[GPTLM, WordTokenizer, dict]:
    """Load a model saved by :func:`save_model`: ``(model in eval mode, tokenizer, metadata)``."""
    state, meta = checkpoints.load(path)
    model, tok = _model_from(state, meta, device)
    return model, tok, meta


def load_shipped(name: str = SHIPPED_NAME, device: str = "cpu") -> tuple[GPTLM, WordTokenizer]:
    """The shipped chapter-2 model (sha256 checked against ``data/checkpoints/manifest.json``)."""
    state, meta = checkpoints.load_shipped(name, device="cpu")
    return _model_from(state, meta, device)


def evaluate(model: nn.Module, tok: WordTokenizer, n_samples: int = 200, seed: int = 0,
             verbose: bool = False) -> dict:
    """The chapter's figures: grammar rate of ``n_samples`` samples (seed ``seed``) and the
    perplexity of the train captions and of the captions with held-out pairs."""
    return {
        "grammar_rate": grammar_rate(model, tok, n=n_samples, seed=seed, verbose=verbose),
        "n_samples": n_samples,
        "sample_seed": seed,
        "ppl_train": perplexity(model, tok, caption_corpus("train")),
        "ppl_heldout": perplexity(model, tok, caption_corpus("heldout")),
    }


def main(argv=None) -> int:
    """``python -m imagen_edu.lm {train,eval}``; see the module docstring. Returns the exit status
    (2 with one line on stderr for a bad argument, checked before any work; see
    :func:`imagen_edu.checkpoints.model_cli`)."""
    def train_and_measure(prof, seed, out):
        res = train_lm(prof.lm, seed=seed, progress=sys.stderr.isatty())
        model = res.model.to("cpu").eval()
        metrics = evaluate(model, res.tokenizer, n_samples=prof.lm.n_samples_eval, seed=0)
        metrics.update(train_seconds=round(res.seconds, 1), final_loss=round(res.losses[-1], 4),
                       n_params=model.num_params(), steps=prof.lm.max_steps, train_threads=1)
        save_model(out, model, res.tokenizer, {"profile": prof.name, "seed": seed, "settings": res.settings})
        return metrics

    def load_checkpoint(ckpt, name):
        return load_model(ckpt)[:2] if ckpt else load_shipped(name)

    def extra_eval_args(ev):
        ev.add_argument("--n", type=int, default=200, help="samples for the grammar rate")
        ev.add_argument("--seed", type=int, default=0, help="sampling seed")

    def check_eval_args(args):
        check_count(args.n, "--n")
        check_seed(args.seed, "--seed")

    return checkpoints.model_cli(
        argv, prog="python -m imagen_edu.lm", name=SHIPPED_NAME, filename="lm.safetensors",
        description="Train or evaluate the chapter-2 caption language model.",
        train_and_measure=train_and_measure, load_checkpoint=load_checkpoint,
        evaluate_checkpoint=lambda m, args, recorded: evaluate(*m, n_samples=args.n, seed=args.seed),
        extra_eval_args=extra_eval_args, check_eval_args=check_eval_args)


if __name__ == "__main__":
    raise SystemExit(main())
