"""Chapter 5's text encoders, kept here until :mod:`imagen_edu.text_encoders` holds them (temporary).

Unchanged copies of the encoders and the name registry that ``imagen.py`` held.
"""

from __future__ import annotations

import torch

from . import text_encoders
from .data.captions import canonical_caption

__all__ = ["LMWordsAndStates", "CanonicalCaptions", "get_text_encoder"]


class LMWordsAndStates:
    """Chapter 2's frozen language model read at its input *and* its output: ``(B, T, 2 D)``.

    A causal LM's final state at token t is built to predict token t+1. In the caption grammar
    nothing after a shape word depends on which shape it was, so the final states of
    ``a red circle`` and ``a red square`` are nearly equal (cosine similarity 0.9995 for the
    shipped model): a U-Net conditioned on them alone cannot learn shapes. This encoder
    concatenates, per token, the LM's own (frozen) input layer ``pos(tok_emb(ids))`` (which word,
    where) with its final hidden states (the context), each layer-normalised. Still a frozen text
    encoder, as in Imagen: nothing here is trained with the images.

    Derived in chapter 5 (Section "Which text features?").
    """

    def __init__(self, lm_encoder):
        self.base = lm_encoder
        self.model, self.tokenizer = lm_encoder.model, lm_encoder.tokenizer
        self.name = "lm+words"

    @property
    def dim(self) -> int:
        return 2 * self.base.dim

    def __call__(self, texts):
        return self.encode(texts)

    def __repr__(self) -> str:
        return f"LMWordsAndStates(base={self.base!r})"

    @torch.no_grad()
    def encode(self, texts):
        """``texts`` (B strings) -> ``(embeddings (B, T, 2 D), mask (B, T) bool)``; zeros on padding."""
        texts = self.base._check_texts(texts)
        dev = next(self.model.parameters()).device
        ids, mask = self.tokenizer.batch_encode(texts)
        ids, mask = ids.to(dev), mask.to(dev)
        words = self.model.pos(self.model.tok_emb(ids))          # (B, T, D): the LM's input layer
        states = self.model.hidden(ids, mask)                    # (B, T, D): its final states
        D = words.shape[-1]
        out = torch.cat([torch.nn.functional.layer_norm(words, (D,)),
                         torch.nn.functional.layer_norm(states, (D,))], dim=-1)
        return out * mask[..., None], mask


class CanonicalCaptions:
    """A frozen text encoder that reads every caption in its canonical form (``canonical:NAME``).

    ``A right of B`` and ``B left of A`` mean the same scene; which object goes left depends on
    the relation word *and* the word order together, an interaction that a small U-Net trained
    for minutes does not find (chapter 5, "Left of, right of": the loss with the relation flipped
    equals the loss with the true caption). Rewriting each caption with
    :func:`imagen_edu.data.captions.canonical_caption` (relations ``left of`` / ``above`` only)
    makes word order alone say where each object goes. A large pretrained encoder such as T5
    has learned such equivalences from text; ours is handed this one. Text outside the caption
    grammar passes through unchanged, so any encoder can be wrapped.
    """

    def __init__(self, encoder):
        self.base = encoder
        self.tokenizer = getattr(encoder, "tokenizer", None)
        self.name = f"canonical:{encoder.name}"

    @property
    def dim(self) -> int:
        return self.base.dim

    def __call__(self, texts):
        return self.encode(texts)

    def __repr__(self) -> str:
        return f"CanonicalCaptions(base={self.base!r})"

    def encode(self, texts):
        """``texts`` (B strings) -> the base encoder's ``(embeddings, mask)`` of their canonical forms."""
        if isinstance(texts, str):
            raise TypeError("encode expects a list of strings, got a single str: wrap it as [text]")
        return self.base.encode([canonical_caption(t) for t in texts])


_ENCODERS: dict = {}


def get_text_encoder(name: str, device: str = "cpu"):
    """A frozen text encoder by name: ``"lm+words"`` (:class:`LMWordsAndStates`), any name of
    :func:`imagen_edu.text_encoders.get` (``"lm"``, ``"t5:..."``), or ``"canonical:NAME"`` (the
    encoder ``NAME`` reading canonical captions, :class:`CanonicalCaptions`). Cached per name and device."""

    if not isinstance(name, str):
        raise TypeError(f"encoder name must be a str, got {type(name).__name__}")
    key = (name, str(device))
    if key not in _ENCODERS:
        if name.startswith("canonical:"):
            _ENCODERS[key] = CanonicalCaptions(get_text_encoder(name[len("canonical:"):], device=device))
        elif name == "lm+words":
            _ENCODERS[key] = LMWordsAndStates(text_encoders.get("lm", device=device))
        else:
            _ENCODERS[key] = text_encoders.get(name, device=device)
    return _ENCODERS[key]

