"""Pretraining the toy T5 on text alone, by span corruption (chapter 2b).

The recipe of Raffel et al. 2020 (Section 3.1.4) at toy scale: documents of a text-only corpus
(:func:`imagen_edu.data.text_corpus.text_corpus`) are tokenised by words, corrupted by
:func:`imagen_edu.t5.span_corruption`, and the encoder-decoder learns to write the dropped
spans (:meth:`imagen_edu.t5.T5.loss`) through :class:`imagen_edu.train.Trainer`, the same
trainer as every other model of the book. Afterwards only the encoder is kept, frozen: it is the
cascade's text encoder, as T5-XXL is Imagen's.

A second, optional text-only term (``PretrainConfig.paraphrase_weight``): documents that say one
fact twice ("A right of B . B left of A") give paraphrase pairs, and each object's states in one
phrasing must pick out the same object in the other phrasing against the other objects,
including the same words in the contradicting fact ("A left of B"); with
``paraphrase_states="word"`` (the cascade's recipe) each word's state must do so on its own, so
that the colour word carries the side as well as the shape word. It is the contrastive loss of
chapter 4 (:func:`imagen_edu.clip.clip_loss`) over objects instead of images and captions, with
paraphrases as positives and contradictions as hard negatives, as supervised SimCSE uses them for
sentence embeddings (Gao et al. 2021, Section 4). Chapter 2b ("Readable is not loud") shows why
it is needed: span corruption alone teaches the encoder each object's side, but so quietly that
the U-Net does not find it.

Nothing but text enters here: no image, scene layout or judge output.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from . import checkpoints, profiles
from .clip import clip_loss
from .data.captions import CONVERSE, make_caption, parse_caption
from .data.text_corpus import CORPORA, SEPARATOR, text_corpus
from .t5 import IGNORE_INDEX, T5, T5Config, load_t5, save_t5, span_corruption
from .probe import side_probe, variance_share
from .profiles import torch_threads
from .text_encoders import ToyT5Encoder
from .tokenizer import WordTokenizer
from .train import TrainConfig, Trainer

__all__ = ["PretrainConfig", "sentinel_words", "t5_tokenizer", "span_batch", "paraphrase_groups", "paraphrase_batch",
           "object_states", "paraphrase_loss", "pretrain", "save_t5", "load_t5"]

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
        paraphrase_weight: weight of the paraphrase-contrastive term added to span corruption's
            loss (0: T5's recipe alone). Needs a corpus whose documents say a fact twice.
        paraphrase_facts: facts per batch for that term; each comes with its contradicting fact,
            so ``2 * paraphrase_facts`` paraphrase pairs and twice as many objects.
        paraphrase_temperature: the contrastive loss's temperature ``tau`` (logits ``cos / tau``).
        paraphrase_negatives: ``"group"``: each object competes only with the four objects of its
            fact and its contradiction (the side is all it must add); ``"batch"``: with every
            object of the batch, as CLIP's images compete with every caption (which also pushes
            the objects' identities apart, entangling colour with shape).
        paraphrase_states: what stands for an object in that term: ``"object"``, the mean of its
            colour and shape words' states (one vector per object; the encoder may then put the
            side in one word alone, the shape word, and leave the colour word without it);
            ``"word"``, each word's state on its own (colour word against colour words, shape
            word against shape words, the two losses averaged), so that every word of an object
            carries the object's side, and the U-Net can place each word's meaning (chapter 2b).
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
    paraphrase_weight: float = 0.0
    paraphrase_facts: int = 16
    paraphrase_temperature: float = 0.1
    paraphrase_negatives: str = "group"
    paraphrase_states: str = "object"
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
        if not float(self.paraphrase_weight) >= 0.0:
            raise ValueError(f"PretrainConfig.paraphrase_weight must be >= 0, got {self.paraphrase_weight!r}")
        if not isinstance(self.paraphrase_facts, int) or self.paraphrase_facts < 1:
            raise ValueError(f"PretrainConfig.paraphrase_facts must be an int >= 1, got {self.paraphrase_facts!r}")
        if not float(self.paraphrase_temperature) > 0.0:
            raise ValueError(f"PretrainConfig.paraphrase_temperature must be > 0, got {self.paraphrase_temperature!r}")
        if self.paraphrase_negatives not in ("group", "batch"):
            raise ValueError(f"PretrainConfig.paraphrase_negatives must be 'group' or 'batch', got "
                             f"{self.paraphrase_negatives!r}")
        if self.paraphrase_states not in ("object", "word"):
            raise ValueError(f"PretrainConfig.paraphrase_states must be 'object' or 'word', got "
                             f"{self.paraphrase_states!r}")
        if self.paraphrase_weight and not paraphrase_groups(text_corpus(self.corpus)):
            raise ValueError(f"PretrainConfig.paraphrase_weight > 0 needs a corpus whose documents say a fact twice "
                             f"('restated' or 'described'), got corpus {self.corpus!r}")
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


def paraphrase_groups(docs) -> list[tuple[str, str, str, str]]:
    """The corpus's paraphrase pairs, each with the pair of its contradicting fact.

    A pair is a document's first two sentences when both are two-object captions of the same two
    objects (a caption and its converse: ``A right of B`` / ``B left of A``). Its contradicting
    fact has the same words in the same order with the converse relation (``A left of B``): the
    objects are the same, their sides are swapped. Returns ``(x, y, x_contra, y_contra)`` for
    every pair whose contradiction is also a pair of the corpus, in corpus order.
    """
    sep = f" {SEPARATOR} "
    pairs = {}
    for doc in docs:
        sentences = doc.split(sep)
        if len(sentences) < 2:
            continue
        try:
            x, y = parse_caption(sentences[0]), parse_caption(sentences[1])
        except ValueError:
            continue
        if x.relation is None or y.relation is None or tuple(y.objects) != tuple(x.objects)[::-1]:
            continue
        pairs.setdefault(x.text, y.text)
    groups = []
    for x, y in pairs.items():
        p = parse_caption(x)
        contra = make_caption(p.objects, CONVERSE[p.relation])
        if contra in pairs:
            groups.append((x, y, contra, pairs[contra]))
    return groups


def paraphrase_batch(groups, tok: WordTokenizer, cfg: PretrainConfig, generator: torch.Generator):
    """``cfg.paraphrase_facts`` random groups as ``(x_ids, x_mask, y_ids, y_mask)``, ``(2F, T)`` each.

    Row ``i`` of ``x`` and of ``y`` say the same fact; rows ``2k`` and ``2k + 1`` are a fact and
    its contradiction (same words, sides swapped), so every batch holds the hardest negatives.
    """
    picks = torch.randint(len(groups), (cfg.paraphrase_facts,), generator=generator).tolist()
    xs = [t for i in picks for t in (groups[i][0], groups[i][2])]
    ys = [t for i in picks for t in (groups[i][1], groups[i][3])]
    return (*tok.batch_encode(xs, add_bos=False, add_eos=True), *tok.batch_encode(ys, add_bos=False, add_eos=True))


def object_states(states: torch.Tensor, mask: torch.Tensor, words: bool = False) -> torch.Tensor:
    """Each caption's two objects from its encoder states: ``(B, T, D)``, ``(B, T)`` -> ``(B, 2, D)``
    (``words=True``: ``(B, 2, 2, D)``, object, then its colour and shape word).

    A caption of the grammar reads ``a COLOUR SHAPE RELATION a COLOUR SHAPE <eos>``: the first
    object is words 1-2, the second the last two words before ``<eos>``. An object's vector is the
    mean of its two LayerNormed states (LayerNorm as the U-Net reads them, chapter 5), unit length;
    with ``words`` each word's LayerNormed state, unit length.
    """
    h = F.layer_norm(states, states.shape[-1:])
    n = mask.sum(1) - 1                                    # words before <eos>
    rows = torch.arange(len(h), device=h.device)
    first = torch.stack([h[rows, 1], h[rows, 2]], 1)       # (B, 2 words, D)
    second = torch.stack([h[rows, n - 2], h[rows, n - 1]], 1)
    objects = torch.stack([first, second], 1)              # (B, 2 objects, 2 words, D)
    return F.normalize(objects if words else objects.mean(2), dim=-1)


def paraphrase_loss(model: T5, batch, temperature: float, negatives: str = "group",
                    states: str = "object") -> torch.Tensor:
    """The paraphrase-contrastive loss of one :func:`paraphrase_batch`, a scalar. Eq. (ch2b-eq-para).

    Object ``A`` of ``x_i`` (``A rel B``) and object ``A`` of ``y_i`` (``B conv A``) are a positive
    pair; every other object of the batch's ``y`` is a negative, among them ``A`` of the
    contradicting fact. Neither the word order nor the relation word is shared by ``x_i`` and
    ``y_i``; the side each object is on is, so the states must carry the side to win.
    The loss is chapter 4's symmetric InfoNCE, :func:`imagen_edu.clip.clip_loss`, with ``s = 1 / tau``,
    over the whole batch (``negatives="batch"``) or within each fact's group of four objects
    (``"group"``: A and B of the fact, A and B of its contradiction), averaged over the groups.
    ``states="word"``: the same loss for the colour words and for the shape words on their own
    (:func:`object_states` with ``words``), averaged, so that neither word can leave the side to
    the other.
    """
    if states not in ("object", "word"):
        raise ValueError(f"paraphrase_loss: states must be 'object' or 'word', got {states!r}")
    x_ids, x_mask, y_ids, y_mask = batch
    words = states == "word"
    vx = object_states(model.encode(x_ids, x_mask), x_mask, words)               # [A, B] of "A rel B"
    vy = object_states(model.encode(y_ids, y_mask), y_mask, words)[:, [1, 0]]    # [A, B] of "B conv A"
    if words:
        return torch.stack([_contrast(vx[:, :, w], vy[:, :, w], temperature, negatives) for w in (0, 1)]).mean()
    return _contrast(vx, vy, temperature, negatives)


def _contrast(vx: torch.Tensor, vy: torch.Tensor, temperature: float, negatives: str) -> torch.Tensor:
    """InfoNCE between the objects ``vx``, ``vy`` ``(2F, 2, D)`` of :func:`paraphrase_loss`."""
    if negatives == "batch":
        return clip_loss(vx.flatten(0, 1), vy.flatten(0, 1), 1.0 / temperature)
    gx, gy = vx.reshape(-1, 4, vx.shape[-1]), vy.reshape(-1, 4, vy.shape[-1])   # rows 2k, 2k+1: one group
    return torch.stack([clip_loss(a, b, 1.0 / temperature) for a, b in zip(gx, gy)]).mean()


def _loss(model: T5, batch, cfg: PretrainConfig | None = None) -> torch.Tensor:
    if isinstance(batch, dict):
        ids, mask, labels = batch["span"]
        return model.loss(ids, mask, labels) + cfg.paraphrase_weight * paraphrase_loss(
            model, batch["paraphrase"], cfg.paraphrase_temperature, cfg.paraphrase_negatives, cfg.paraphrase_states)
    ids, mask, labels = batch
    return model.loss(ids, mask, labels)


def pretrain(cfg: PretrainConfig | None = None, *, device: str = "cpu", progress: bool = True,
             threads: int | None = 1):
    """Pretrain a toy T5 by span corruption on ``cfg.corpus``: returns ``(model, tokenizer, trainer)``.

    The model is in eval mode, on ``device``; ``trainer.history`` holds the logged losses.
    ``threads`` limits torch's CPU threads meanwhile (:func:`imagen_edu.profiles.torch_threads`);
    ``None`` keeps torch's setting. One thread suits runs side by side (:func:`pretrain_many`); a
    run alone is faster on every core (the cascade's encoder on 2 cores: about 80 against 130 ms a
    step on one).
    """
    cfg = cfg or PretrainConfig()
    docs = text_corpus(cfg.corpus)
    tok = t5_tokenizer(docs, cfg.n_sentinels)
    torch.manual_seed(cfg.seed)
    model = T5(T5Config(vocab_size=tok.vocab_size, pad_id=tok.pad_id, **cfg.model))

    groups = paraphrase_groups(docs) if cfg.paraphrase_weight else None

    def batches(step, rank, world_size, generator):
        span = span_batch(docs, tok, cfg, generator)
        if groups is None:
            return span
        return {"span": span, "paraphrase": paraphrase_batch(groups, tok, cfg, generator)}

    trainer = Trainer(model, lambda m, b: _loss(m, b, cfg), batches, cfg.train_config(), device=device, progress=progress,
                      desc=f"T5 span corruption ({cfg.corpus})")
    with torch_threads(threads, device):
        trainer.train()
    return model.eval(), tok, trainer


def _pretrain_job(cfg: PretrainConfig, device: str = "cpu"):
    """One pretraining on one thread, for :func:`pretrain_many`: ``(model, tokenizer, history, seconds)``."""
    start = time.perf_counter()
    model, tok, trainer = pretrain(cfg, device=device, progress=False, threads=1)
    return model, tok, trainer.history, time.perf_counter() - start


def pretrain_many(cfgs: list[PretrainConfig], jobs: int = 1, device: str = "cpu") -> list[tuple]:
    """Pretrain several toy T5s, ``jobs`` at a time in fresh processes, each on one CPU thread.

    Returns ``[(model, tokenizer, history, seconds), ...]`` in the order of ``cfgs``; every run is
    seeded and single-threaded, so the models are the same as :func:`pretrain` gives one after
    another, whatever ``jobs`` is (chapter 2b pretrains its three corpora this way, all at once,
    so that two cores share the work). ``jobs=1`` trains here, in this process, on ``device``;
    more jobs train on the CPU. Processes are *spawned*, not forked, so
    a parent whose thread pools are already running (a notebook kernel) is safe to use.
    """
    jobs = int(jobs)
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    if jobs == 1 or len(cfgs) <= 1:
        return [_pretrain_job(c, device) for c in cfgs]
    if device != "cpu":
        raise ValueError(f"jobs={jobs} trains in CPU processes; pass jobs=1 for device {device!r}")
    with ProcessPoolExecutor(max_workers=min(jobs, len(cfgs)), mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_pretrain_job, cfgs))


#: manifest name of the shipped toy T5 (chapter 2b; the cascade's text encoder ``"toyt5"``)
SHIPPED_NAME = "t5"

#: the recipe of the cascade's text encoder: :class:`PretrainConfig` fields over its defaults (which
#: are T5's span corruption alone, chapter 2b's first models). The ``described`` corpus, denser
#: and longer spans, and the paraphrase-contrastive term (chapter 2b, "Making the side loud");
#: a profile's ``t5`` overrides go on top (the ``ci`` profile shrinks the model and the steps).
CASCADE_ENCODER: dict = dict(corpus="described", noise_density=0.4, mean_span_length=2.0,
                             paraphrase_weight=1.0, paraphrase_states="word", steps=1200)


def cascade_encoder_config(profile=None, seed: int = 0) -> PretrainConfig:
    """The :class:`PretrainConfig` of the cascade's text encoder under ``profile`` (default: the current one)."""
    prof = profile if profile is not None else profiles.current()
    return PretrainConfig(**{**CASCADE_ENCODER, **prof.t5, "seed": seed})


def measure(model: T5, tok: WordTokenizer) -> dict:
    """What text alone taught the frozen encoder (chapter 2b): the side probe and the variance shares."""
    enc = ToyT5Encoder(model.eval(), tok)
    return {"probe": side_probe(enc, 0), "share": variance_share(enc, 0)}


def main(argv=None) -> int:
    """``python -m imagen_edu.t5_pretraining {train,eval}``: pretrain the cascade's toy T5
    (:func:`cascade_encoder_config`: :data:`CASCADE_ENCODER` and the profile's ``t5`` overrides),
    save it and record it in the manifest; or re-measure a checkpoint. Exit status 2 with one line for a bad argument, checked
    before any work (:func:`imagen_edu.checkpoints.model_cli`)."""
    def train_and_measure(prof, seed, out):
        cfg = cascade_encoder_config(prof, seed)
        start = time.perf_counter()
        # nothing else runs while the encoder trains (it comes before the stages): every core
        model, tok, trainer = pretrain(cfg, progress=sys.stderr.isatty(), threads=None)
        seconds = time.perf_counter() - start
        metrics = measure(model, tok)
        metrics.update(train_seconds=round(seconds, 1), final_loss=round(sum(trainer.losses[-50:]) /
                       len(trainer.losses[-50:]), 4), n_params=model.num_params(), steps=cfg.steps,
                       train_threads=torch.get_num_threads())
        save_t5(out, model, tok, cfg.to_dict(), {"profile": prof.name, "seed": seed})
        return metrics

    def load_checkpoint(ckpt, name):
        return load_t5(ckpt if ckpt else checkpoints.verify(name))[:2]

    return checkpoints.model_cli(
        argv, prog="python -m imagen_edu.t5_pretraining", name=SHIPPED_NAME, filename="t5.safetensors",
        description="Pretrain (on text alone) or re-measure chapter 2b's toy T5, the cascade's text encoder.",
        train_and_measure=train_and_measure, load_checkpoint=load_checkpoint,
        evaluate_checkpoint=lambda m, args, recorded: measure(*m))


if __name__ == "__main__":
    raise SystemExit(main())
