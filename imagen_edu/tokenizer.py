"""A word-level tokenizer for the caption corpus (chapter 2).

Derived in chapter 2 (``book/02_language_model.ipynb``, section "Tokens"). The shapes captions
use 15 distinct words, so the simplest tokenizer that can be explained in one paragraph is the
right one here: one id per word, plus four special tokens:

* ``<pad>`` (id 0) fills the end of short sequences in a batch; the attention mask marks it False;
* ``<bos>`` starts every sequence, so the first real word also has something to be predicted from;
* ``<eos>`` ends it, so a sampled caption knows when to stop;
* ``<unk>`` stands in for any word outside the vocabulary (with a warning naming the words).

Real text encoders such as T5 use a *subword* vocabulary (SentencePiece, 32k pieces) so that no
word is ever unknown: a rare word splits into known pieces. Our corpus is closed, so words are
enough; :mod:`imagen_edu.text_encoders` wraps T5's own tokenizer for the real thing.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from .data.captions import caption_corpus

__all__ = ["PAD", "BOS", "EOS", "UNK", "SPECIALS", "WordTokenizer", "default_tokenizer"]

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS: tuple[str, ...] = (PAD, BOS, EOS, UNK)


class WordTokenizer:
    """Whitespace word tokenizer with ``<pad>``, ``<bos>``, ``<eos>`` and ``<unk>`` (ids 0-3).

    Text is lower-cased and split on whitespace. Build one from texts with
    :meth:`from_texts`, or get the caption vocabulary with :func:`default_tokenizer`.

    Args:
        words: the vocabulary words (no specials); their ids are ``4, 5, ...`` in this order.
    """

    def __init__(self, words):
        words = list(words)
        for w in words:
            if not isinstance(w, str) or not w or w.split() != [w]:
                raise ValueError(f"vocabulary words must be non-empty strings without spaces, got {w!r}")
            if w in SPECIALS:
                raise ValueError(f"{w!r} is a special token; pass only ordinary words")
        if len(set(words)) != len(words):
            raise ValueError("vocabulary words must be unique")
        self.vocab: list[str] = list(SPECIALS) + words
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.vocab)}
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = (self.stoi[s] for s in SPECIALS)

    # ----------------------------------------------------------------------------------------
    @classmethod
    def from_texts(cls, texts) -> "WordTokenizer":
        """The tokenizer whose vocabulary is every word of ``texts``, sorted alphabetically."""
        if isinstance(texts, str):
            raise TypeError("from_texts expects a list of strings, got a single str")
        return cls(sorted({w for t in texts for w in cls.split(t)}))

    @staticmethod
    def split(text: str) -> list[str]:
        """Lower-case ``text`` and split it on whitespace: the tokenizer's notion of a word."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return text.lower().split()

    def __len__(self) -> int:
        return len(self.vocab)

    @property
    def vocab_size(self) -> int:
        """Number of tokens, specials included (the size of the model's output layer)."""
        return len(self.vocab)

    def __repr__(self) -> str:
        return f"WordTokenizer({len(self.vocab)} tokens: {self.vocab})"

    # ----------------------------------------------------------------------------------------
    def encode(self, text: str, add_bos: bool = True, add_eos: bool = True) -> list[int]:
        """Token ids of ``text``; unknown words become ``<unk>`` with a ``UserWarning`` naming them."""
        words = self.split(text)
        unknown = [w for w in words if w not in self.stoi]
        if unknown:
            warnings.warn(f"unknown word(s) {sorted(set(unknown))} mapped to {UNK}: the vocabulary "
                          f"has {len(self.vocab) - len(SPECIALS)} words, e.g. {self.vocab[4:10]}",
                          UserWarning, stacklevel=2)
        ids = [self.stoi.get(w, self.unk_id) for w in words]
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def decode(self, ids, skip_special: bool = True) -> str:
        """Text of ``ids`` (a list or 1-D tensor). Stops at ``<eos>`` when ``skip_special``."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(f"decode takes one sequence (T,), got shape {tuple(ids.shape)}; "
                                 "use batch_decode for (B, T)")
            ids = ids.tolist()
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.vocab):
                raise ValueError(f"token id {i} is outside the vocabulary [0, {len(self.vocab)})")
            if skip_special:
                if i == self.eos_id:
                    break
                if i in (self.pad_id, self.bos_id):
                    continue
            out.append(self.vocab[i])
        return " ".join(out)

    def batch_decode(self, ids: torch.Tensor, skip_special: bool = True) -> list[str]:
        """Texts of a ``(B, T)`` batch of ids."""
        return [self.decode(row, skip_special) for row in ids]

    def batch_encode(self, texts, add_bos: bool = True, add_eos: bool = True,
                     max_len: int | None = None):
        """Encode and right-pad a batch.

        Args:
            texts: list of B strings.
            max_len: pad (never truncate) to at least this length; a longer text raises ValueError.

        Returns:
            ``(ids, mask)``: ``ids (B, T)`` long, padded with ``<pad>``; ``mask (B, T)`` bool,
            True on real tokens (``<bos>``/``<eos>`` included) and False on padding.
        """
        if isinstance(texts, str) or not hasattr(texts, "__iter__"):
            raise TypeError(f"batch_encode expects a list of strings, got {type(texts).__name__}")
        texts = list(texts)
        if not texts:
            raise ValueError("batch_encode needs at least one text")
        unknown = sorted({w for t in texts for w in self.split(t) if w not in self.stoi})
        if unknown:  # one warning for the whole batch
            warnings.warn(f"unknown word(s) {unknown} mapped to {UNK}", UserWarning, stacklevel=2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seqs = [self.encode(t, add_bos, add_eos) for t in texts]
        t = max(len(s) for s in seqs)
        if max_len is not None:
            if t > max_len:
                raise ValueError(f"a text has {t} tokens, more than max_len={max_len}")
            t = max_len
        ids = torch.full((len(seqs), t), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(seqs), t, dtype=torch.bool)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, :len(s)] = True
        return ids, mask

    # ----------------------------------------------------------------------------------------
    def to_json(self) -> str:
        """The vocabulary as a JSON string (stored in checkpoint metadata)."""
        return json.dumps({"type": "word", "vocab": self.vocab})

    @classmethod
    def from_json(cls, text: str) -> "WordTokenizer":
        """Inverse of :meth:`to_json`; checks the special tokens are where they belong."""
        try:
            data = json.loads(text)
            vocab = data["vocab"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"not a WordTokenizer JSON (expected {{'type': 'word', 'vocab': [...]}}): {err}") from None
        if list(vocab[:len(SPECIALS)]) != list(SPECIALS):
            raise ValueError(f"vocabulary must start with the special tokens {list(SPECIALS)}, got {vocab[:4]}")
        return cls(vocab[len(SPECIALS):])

    def save(self, path) -> None:
        """Write the vocabulary JSON to ``path``."""
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path) -> "WordTokenizer":
        """Read a tokenizer written by :meth:`save`."""
        return cls.from_json(Path(path).read_text())

    def __eq__(self, other) -> bool:
        return isinstance(other, WordTokenizer) and self.vocab == other.vocab


def default_tokenizer() -> WordTokenizer:
    """The tokenizer over every word of the shapes caption grammar (19 tokens)."""
    return WordTokenizer.from_texts(caption_corpus("all"))
