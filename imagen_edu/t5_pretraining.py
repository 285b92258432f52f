"""Pretraining the toy T5 on text alone, by span corruption (chapter 2b).

The recipe of Raffel et al. 2020 (Section 3.1.4) at toy scale: documents of a text-only corpus
(:func:`imagen_edu.data.text_corpus.text_corpus`) are tokenised by words, corrupted by
:func:`imagen_edu.t5.span_corruption`, and the encoder-decoder learns to write the dropped
spans (:meth:`imagen_edu.t5.T5.loss`) through :class:`imagen_edu.train.Trainer`, the same
trainer as every other model of the book. Afterwards only the encoder is kept, frozen: it is the
cascade's text encoder, as T5-XXL is Imagen's.

Nothing but text enters here: no image, scene layout or judge output.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from .data.text_corpus import CORPORA, SEPARATOR, text_corpus
from .t5 import IGNORE_INDEX, T5, T5Config, load_t5, save_t5, span_corruption
from .profiles import torch_threads
from .tokenizer import WordTokenizer
from .train import TrainConfig, Trainer

__all__ = ["PretrainConfig", "sentinel_words", "t5_tokenizer", "span_batch", "pretrain", "save_t5", "load_t5"]

# the checkpoint format lives with the model (imagen_edu.t5); re-exported here for the recipe's callers


@dataclass
class PretrainConfig:
    """What :func:`pretrain` trains: the corpus, the model's sizes, the objective and the budget.

    Attributes:
        corpus: one of :data:`~imagen_edu.data.text_corpus.CORPORA`.
        model: the :class:`~imagen_edu.t5.T5Config` fields except ``vocab_size`` (set from the
            tokenizer).
        noise_density, mean_span_length: span corruption's (T5: 0.15 and 3; short captions want
            a higher density so that most documents lose a word or two).
        n_sentinels: sentinel tokens in the vocabulary (at least the most spans plus one).
        prefix_fraction: share of the documents (with more than one sentence) given as a prefix
            language-modelling example instead (Raffel et al. 2020, Section 3.3.1, split at the
            first sentence): the encoder reads the first sentence alone, as it will read a
            caption, and the decoder writes the rest of the document.
        steps, batch_size, lr, warmup_steps: the trainer's budget (AdamW, warm-up + cosine).
        seed: the model's initialisation and the corruption's random spans.
        max_seconds: stop early after this much wall time (``None``: no limit).
    """

    corpus: str = "restated"
    model: dict = field(default_factory=lambda: dict(d_model=64, n_heads=4, d_kv=16, d_ff=128, n_layers=2,
                                                     n_decoder_layers=2, num_buckets=16, max_distance=32))
    noise_density: float = 0.25
    mean_span_length: float = 1.5
    n_sentinels: int = 8
    prefix_fraction: float = 0.0
    steps: int = 1500
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 100
    seed: int = 0
    max_seconds: float | None = None

    def __post_init__(self):
        if self.corpus not in CORPORA:
            raise ValueError(f"PretrainConfig.corpus must be one of {CORPORA}, got {self.corpus!r}")
        if not isinstance(self.model, dict) or "vocab_size" in self.model:
            raise ValueError("PretrainConfig.model must be a dict of T5Config fields without vocab_size")
        T5Config(vocab_size=8, **self.model)                    # checks every size now, before any work
        if not 0.0 < float(self.noise_density) < 1.0:
            raise ValueError(f"PretrainConfig.noise_density must be in (0, 1), got {self.noise_density!r}")
        if not float(self.mean_span_length) >= 1.0:
            raise ValueError(f"PretrainConfig.mean_span_length must be >= 1, got {self.mean_span_length!r}")
        if not 0.0 <= float(self.prefix_fraction) <= 1.0:
            raise ValueError(f"PretrainConfig.prefix_fraction must be in [0, 1], got {self.prefix_fraction!r}")
        if not isinstance(self.n_sentinels, int) or self.n_sentinels < 2:
            raise ValueError(f"PretrainConfig.n_sentinels must be an int >= 2, got {self.n_sentinels!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def train_config(self) -> TrainConfig:
        """The trainer's settings (no EMA: the encoder is read as trained; gradient clipping at 1)."""
        return TrainConfig(steps=self.steps, batch_size=self.batch_size, lr=self.lr, warmup_steps=self.warmup_steps,
                           ema_decay=None, seed=self.seed, max_seconds=self.max_seconds, weight_decay=0.0)


def sentinel_words(n: int) -> list[str]:
    """T5's sentinel tokens ``<extra_id_0> .. <extra_id_{n-1}>``: one per dropped span, in order."""
    return [f"<extra_id_{i}>" for i in range(n)]


def t5_tokenizer(docs, n_sentinels: int = 8) -> WordTokenizer:
    """A word tokenizer for ``docs`` plus the sentinel words (the specials are ids 0-3, pad first)."""
    words = sorted({w for d in docs for w in WordTokenizer.split(d)})
    return WordTokenizer(words + sentinel_words(n_sentinels))


def span_batch(docs, tok: WordTokenizer, cfg: PretrainConfig, generator: torch.Generator):
    """One batch of ``cfg.batch_size`` random documents, span-corrupted: ``(ids, mask, labels)``.

    ``ids (B, T)`` long (the corrupted input ending in ``<eos>``, padded with ``<pad>``),
    ``mask (B, T)`` bool, ``labels (B, N)`` long (sentinels and dropped words, ``<eos>``,
    padded with ``IGNORE_INDEX``).
    """
    sentinels = [tok.stoi[w] for w in sentinel_words(cfg.n_sentinels)]
    picks = torch.randint(len(docs), (cfg.batch_size,), generator=generator).tolist()
    prefix = (torch.rand(cfg.batch_size, generator=generator) < cfg.prefix_fraction).tolist() \
        if cfg.prefix_fraction > 0 else [False] * cfg.batch_size
    sep = f" {SEPARATOR} "
    pairs = []
    for i, as_prefix in zip(picks, prefix):
        if as_prefix and sep in docs[i]:   # prefix LM: the first sentence in, the rest of the document out
            head, rest = docs[i].split(sep, 1)
            pairs.append((tok.encode(head, add_bos=False, add_eos=True), tok.encode(rest, add_bos=False, add_eos=True)))
            continue
        pairs.append(span_corruption(tok.encode(docs[i], add_bos=False, add_eos=False), sentinels,
                                     noise_density=cfg.noise_density, mean_span_length=cfg.mean_span_length,
                                     eos_id=tok.eos_id, generator=generator))
    t_in, t_out = max(len(p[0]) for p in pairs), max(len(p[1]) for p in pairs)
    ids = torch.full((len(pairs), t_in), tok.pad_id, dtype=torch.long)
    labels = torch.full((len(pairs), t_out), IGNORE_INDEX, dtype=torch.long)
    for row, (inp, tgt) in enumerate(pairs):
        ids[row, :len(inp)] = torch.tensor(inp)
        labels[row, :len(tgt)] = torch.tensor(tgt)
    return ids, ids != tok.pad_id, labels


def _loss(model: T5, batch) -> torch.Tensor:
    ids, mask, labels = batch
    return model.loss(ids, mask, labels)


def pretrain(cfg: PretrainConfig | None = None, *, device: str = "cpu", progress: bool = True,
             threads: int | None = 1):
    """Pretrain a toy T5 by span corruption on ``cfg.corpus``: returns ``(model, tokenizer, trainer)``.

    The model is in eval mode, on ``device``; ``trainer.history`` holds the logged losses.
    ``threads`` limits torch's CPU threads meanwhile (:func:`imagen_edu.profiles.torch_threads`;
    the toy is fastest on one); ``None`` keeps torch's setting.
    """
    cfg = cfg or PretrainConfig()
    docs = text_corpus(cfg.corpus)
    tok = t5_tokenizer(docs, cfg.n_sentinels)
    torch.manual_seed(cfg.seed)
    model = T5(T5Config(vocab_size=tok.vocab_size, pad_id=tok.pad_id, **cfg.model))

    def batches(step, rank, world_size, generator):
        return span_batch(docs, tok, cfg, generator)

    trainer = Trainer(model, _loss, batches, cfg.train_config(), device=device, progress=progress,
                      desc=f"T5 span corruption ({cfg.corpus})")
    with torch_threads(threads, device):
        trainer.train()
    return model.eval(), tok, trainer
