"""Frozen text encoders: what Imagen's diffusion models read (chapter 2, used in chapters 5 and 6).

Every encoder has one interface, :class:`TextEncoder`::

    embeddings, mask = encoder.encode(["a red circle", "a blue square left of a green circle"])
    # embeddings (B, T, D) float, mask (B, T) bool (True on real tokens), D == encoder.dim

Imagen conditions its U-Nets on the output sequence of a *frozen* text-only encoder, T5-XXL
(Saharia et al. 2022, Section 2.1): the encoder is never trained or fine-tuned with the images.
The encoders here:

* :class:`ToyT5Encoder`: the encoder half of chapter 2b's toy T5, pretrained on text alone; the
  shipped one (``"toyt5"``) is the cascade's default, as T5-XXL is Imagen's;
* :class:`LMTextEncoder`: the final hidden states of chapter 2's caption language model;
* :class:`LMWordsAndStates`: that model read at its input layer *and* its final states,
  concatenated per token (chapter 5, "Which text features?");
* :class:`CanonicalCaptions`: the **oracle** of an ablation, any encoder reading captions
  rewritten by a hand-written rule to ``left of`` / ``above`` (chapter 5a, "Left of, right of");
  never a default;
* :class:`T5TextEncoder`: a Hugging Face ``T5EncoderModel`` (``t5-small`` ... ``google/t5-v1_1-xxl``,
  or any local folder), loaded lazily on first use;
* :class:`CachedTextEncoder`: the same interface over a cache of an encoder's outputs
  (:mod:`imagen_edu.embcache`, chapter 6), so training never runs the encoder.

:func:`get` picks one by name (``get("toyt5")``, ``get("toyt5:PATH")``, ``get("lm")``,
``get("lm+words")``, ``get("canonical:lm+words")``, ``get("t5:NAME_OR_PATH")``; :func:`names` lists the forms) and keeps one instance per name and
device. :func:`register` adds a name.

All return zeros at padding positions, and the embeddings of real tokens do not depend on how
much padding a batch has: a U-Net's cross-attention must give the same image for the same
prompt whatever else is in the batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoints, lm, t5
from .data.captions import canonical_caption
from .tokenizer import default_tokenizer

__all__ = ["TextEncoder", "LMTextEncoder", "LMWordsAndStates", "CanonicalCaptions", "T5TextEncoder",
           "ToyT5Encoder", "CachedTextEncoder", "get", "get_text_encoder", "names", "register", "build_tiny_t5"]


class TextEncoder:
    """The interface: ``name``, ``dim`` and ``encode(texts) -> (embeddings (B, T, dim), mask (B, T))``.

    ``texts`` is a non-empty list of B strings; ``embeddings`` is float, zero where ``mask`` (bool,
    True on real tokens) is False; a real token's embedding does not depend on the batch's
    padding. The network behind it is frozen (eval mode, no gradients): Imagen never trains its
    text encoder with the images (Section 2.1). ``name`` is what :func:`get` resolves back to
    this encoder and what a stage config's ``text_encoder`` stores.
    """

    name: str = "text-encoder"

    @property
    def dim(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def __call__(self, texts):
        return self.encode(texts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    @staticmethod
    def _check_texts(texts) -> list[str]:
        if isinstance(texts, str):
            raise TypeError("encode expects a list of strings, got a single str: wrap it as [text]")
        texts = list(texts)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise TypeError("encode expects a non-empty list of strings")
        return texts


class _quiet_progress:
    """Hide transformers' progress bars (for small local models, where they are only noise)."""

    def __init__(self, active: bool = True):
        self.active = active

    def __enter__(self):
        if self.active:
            from transformers.utils import logging as hf_logging

            self.was = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()

    def __exit__(self, *exc):
        if self.active and self.was:
            from transformers.utils import logging as hf_logging

            hf_logging.enable_progress_bar()


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class LMTextEncoder(TextEncoder):
    """Chapter 2's language model as a frozen text encoder.

    The embedding of token t is the model's final hidden state ``h_t`` (after the final
    LayerNorm): the vector the LM uses to predict token t+1, so it summarises ``x_<=t``. The
    sequence includes ``<bos>`` and ``<eos>``; the ``<eos>`` state has read the whole caption.

    Any model with ``hidden(ids (B, T), mask (B, T)) -> (B, T, D)`` and ``config.d_model`` plugs
    in the same way (a causal LM or a bidirectional encoder).

    Args:
        model: a :class:`~imagen_edu.lm.GPTLM` (frozen here: eval mode, no gradients).
        tokenizer: its :class:`~imagen_edu.tokenizer.WordTokenizer`.
        name: a label for plots and logs.
    """

    #: whether a caption is read after ``<bos>`` (chapter 2's LM was trained so; the toy T5 was not)
    add_bos = True

    def __init__(self, model, tokenizer, name: str = "lm"):
        self.model = _freeze(model)
        self.tokenizer = tokenizer
        self.name = name

    @classmethod
    def from_shipped(cls, name: str = "lm", device: str = "cpu") -> "LMTextEncoder":
        """The shipped chapter-2 model (hash-checked by :func:`imagen_edu.checkpoints.load_shipped`)."""
        model, tok = lm.load_shipped(name, device=device)
        return cls(model, tok, name=name)

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    def input_layer(self, ids: torch.Tensor) -> torch.Tensor:
        """The model's own input layer for ``ids (B, T)``: token embedding plus position, ``(B, T, D)``."""
        return self.model.pos(self.model.tok_emb(ids))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``texts`` (B strings) -> ``(embeddings (B, T, dim), mask (B, T) bool)``; zeros on padding."""
        texts = self._check_texts(texts)
        ids, mask = self.tokenizer.batch_encode(texts, add_bos=self.add_bos)
        ids, mask = ids.to(self.device), mask.to(self.device)
        h = self.model.hidden(ids, mask)                       # (B, T, D)
        return h * mask[..., None], mask


class LMWordsAndStates(TextEncoder):
    """A frozen encoder read at its input *and* its output layer: ``(B, T, 2 D)``.

    A causal LM's final state at token t is built to predict token t+1. In the caption grammar
    nothing after a shape word depends on which shape it was, so the final states of
    ``a red circle`` and ``a red square`` are nearly equal (cosine similarity 0.9995 for the
    shipped model): a U-Net conditioned on them alone cannot learn shapes. This encoder
    concatenates, per token, the model's own (frozen) input layer (``pos(tok_emb(ids))`` for
    chapter 2's LM: which word, where; ``shared(ids)`` for the toy T5, which has no absolute
    positions) with its final hidden states (the context), each layer-normalised (no learned
    scale): ``[LN(words_t), LN(h_t)]``, words first. Still a frozen text encoder, as in Imagen:
    nothing here is trained with the images.

    Args:
        lm_encoder: an :class:`LMTextEncoder` or :class:`ToyT5Encoder` (its model and tokenizer
            are read, not copied).
        name: what :func:`get` resolves back to this encoder (``"lm+words"``, ``"toyt5+words"``).

    Derived in chapter 5 (Section "Which text features?").
    """

    def __init__(self, lm_encoder: LMTextEncoder, name: str = "lm+words"):
        self.base = lm_encoder
        self.model, self.tokenizer = lm_encoder.model, lm_encoder.tokenizer
        self.name = name

    @property
    def dim(self) -> int:
        return 2 * self.base.dim

    def __repr__(self) -> str:
        return f"LMWordsAndStates(base={self.base!r})"

    @torch.no_grad()
    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``texts`` (B strings) -> ``(embeddings (B, T, 2 D), mask (B, T) bool)``; zeros on padding."""
        texts = self._check_texts(texts)
        ids, mask = self.tokenizer.batch_encode(texts, add_bos=self.base.add_bos, add_eos=True)
        ids, mask = ids.to(self.base.device), mask.to(self.base.device)
        words = self.base.input_layer(ids)                        # (B, T, D): the model's input layer
        states = self.model.hidden(ids, mask)                    # (B, T, D): its final states
        D = words.shape[-1]
        out = torch.cat([F.layer_norm(words, (D,)), F.layer_norm(states, (D,))], dim=-1)
        return out * mask[..., None], mask


class CanonicalCaptions(TextEncoder):
    """The oracle of an ablation: a frozen encoder reading every caption in its canonical form (``canonical:NAME``).

    ``A right of B`` and ``B left of A`` mean the same scene; which object goes left depends on
    the relation word *and* the word order together. Rewriting each caption with the hand-written
    rule :func:`imagen_edu.data.captions.canonical_caption` (relations ``left of`` / ``above``
    only) makes word order alone say where each object goes. It stands in for what a text
    encoder should learn, so it is only ever the labelled oracle beside the learned encoder
    (chapter 5a, "Left of, right of"), never a default. Text outside the caption grammar passes
    through unchanged, so any encoder can be wrapped.

    Args:
        encoder: the encoder that reads the rewritten captions (its ``dim`` and ``tokenizer`` are this one's).
    """

    def __init__(self, encoder: TextEncoder):
        self.base = encoder
        self.tokenizer = getattr(encoder, "tokenizer", None)
        self.name = f"canonical:{encoder.name}"

    @property
    def dim(self) -> int:
        return self.base.dim

    def __repr__(self) -> str:
        return f"CanonicalCaptions(base={self.base!r})"

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``texts`` (B strings) -> the base encoder's ``(embeddings, mask)`` of their canonical forms."""
        return self.base.encode([canonical_caption(t) for t in self._check_texts(texts)])


class T5TextEncoder(TextEncoder):
    """A frozen Hugging Face T5 encoder (what Imagen uses, at size XXL).

    Args:
        name_or_path: a hub name (``"t5-small"``, ``"google/t5-v1_1-xxl"``; needs the network the
            first time) or a local folder holding a saved ``T5EncoderModel``/``T5Model`` and its
            tokenizer.
        device: where to run it.
        max_length: longest token sequence (longer texts are truncated; Imagen used 128).
        dtype: e.g. ``torch.bfloat16`` to halve the memory of big encoders on a GPU.

    Nothing is loaded until the first :meth:`encode` (or ``dim``).
    """

    def __init__(self, name_or_path: str, device: str = "cpu", max_length: int = 128, dtype=None):
        if not isinstance(name_or_path, str) or not name_or_path:
            raise ValueError("T5TextEncoder needs a model name or a local folder, e.g. 't5-small'")
        self.name_or_path = name_or_path
        self.name = f"t5:{name_or_path}"
        self._device = device
        self.max_length = max_length
        self.dtype = dtype
        self._model = None
        self._tok = None

    def _load(self):
        if self._model is not None:
            return
        try:
            from transformers import AutoTokenizer, T5EncoderModel
        except ImportError as err:  # pragma: no cover - transformers is in requirements.txt
            raise ImportError("T5TextEncoder needs transformers: pip install 'imagen_edu[t5]'") from err
        local = Path(self.name_or_path).exists()
        try:
            with _quiet_progress(local):
                self._tok = AutoTokenizer.from_pretrained(self.name_or_path)
                kw = {"dtype": self.dtype} if self.dtype is not None else {}
                model = T5EncoderModel.from_pretrained(self.name_or_path, **kw)
        except OSError as err:
            raise ValueError(f"could not load a T5 encoder from {self.name_or_path!r}: "
                             + ("the folder does not hold a saved T5 model and tokenizer"
                                if local else "not a local folder, and the hub could not provide it "
                                "(offline? set HF_HUB_OFFLINE=0 and check the name)")
                             + f" ({err})") from None
        self._model = _freeze(model.to(self._device))

    @property
    def model(self):
        self._load()
        return self._model

    @property
    def tokenizer(self):
        self._load()
        return self._tok

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    @torch.no_grad()
    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``texts`` (B strings) -> ``(embeddings (B, T, dim) float32, mask (B, T) bool)``; zeros on padding."""
        texts = self._check_texts(texts)
        self._load()
        batch = self._tok(texts, padding=True, truncation=True, max_length=self.max_length,
                          return_tensors="pt")
        ids = batch["input_ids"].to(self._device)
        mask = batch["attention_mask"].to(self._device).bool()
        h = self._model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        return h.float() * mask[..., None], mask


class ToyT5Encoder(LMTextEncoder):
    """The encoder half of chapter 2b's toy T5, frozen: its final states per token, as Imagen reads T5-XXL.

    The caption is read as in pretraining (:mod:`imagen_edu.t5_pretraining`): its words, then
    ``<eos>``, no ``<bos>``; every token sees every other (bidirectional self-attention), so the
    state at the first object has read the relation that follows it. The rest is
    :class:`LMTextEncoder`'s (``T5.hidden`` is the encoder).

    Args:
        model: a :class:`~imagen_edu.t5.T5` (frozen here; only its encoder runs).
        tokenizer: its :class:`~imagen_edu.tokenizer.WordTokenizer`.
        name: what :func:`get` resolves back to this encoder (``"toyt5:PATH"``).
    """

    add_bos = False

    def __init__(self, model, tokenizer, name: str = "toyt5"):
        super().__init__(model, tokenizer, name=name)

    def input_layer(self, ids: torch.Tensor) -> torch.Tensor:
        """T5's input layer for ``ids (B, T)``: the shared token embedding (no absolute positions), ``(B, T, D)``."""
        return self.model.shared(ids)

    @classmethod
    def from_file(cls, path, device: str = "cpu") -> "ToyT5Encoder":
        """A checkpoint written by :func:`imagen_edu.t5.save_t5`."""
        model, tok, _ = t5.load_t5(path, device=device)
        return cls(model, tok, name=f"toyt5:{path}")

    @classmethod
    def from_shipped(cls, name: str = "t5", device: str = "cpu") -> "ToyT5Encoder":
        """The shipped toy T5 (manifest entry ``name``, sha256-checked), under the encoder name ``"toyt5"``."""
        model, tok, _ = t5.load_t5(checkpoints.verify(name), device=device)
        return cls(model, tok, name="toyt5")


class CachedTextEncoder(TextEncoder):
    """The text-encoder interface on top of a cache of an encoder's outputs: ``encode(texts)`` is a lookup.

    ``cache`` is any cache of :mod:`imagen_edu.embcache` (``lookup(captions) -> (emb, mask)``,
    ``dim``, ``encoder_name``): the memory-mapped :class:`~imagen_edu.embcache.EmbeddingCache` or
    the in-memory :class:`~imagen_edu.embcache.TextCache`. Its ``name`` is the cached encoder's,
    so a stage trained through it records the encoder it was really conditioned on. Pass it
    wherever an encoder is expected (e.g. a stage's training): training then never loads the
    real encoder. A caption missing from an on-disk cache raises ``KeyError``.
    """

    def __init__(self, cache):
        self.cache = cache
        self.name = cache.encoder_name

    @property
    def dim(self) -> int:
        return self.cache.dim

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``texts`` (B strings) -> the cache's ``(embeddings (B, T, dim), mask (B, T))`` for them."""
        return self.cache.lookup(self._check_texts(texts))

    def __repr__(self) -> str:
        return f"CachedTextEncoder({self.cache!r})"


# ---------------------------------------------------------------------------------------------
# The registry: one name per encoder, as a stage config's ``text_encoder`` field stores it
# ---------------------------------------------------------------------------------------------
#: name form -> (factory, description). A form without ":" is a whole name (``factory(device)``);
#: ``"PREFIX:WHAT"`` matches every name starting ``PREFIX:`` (``factory(rest, device)``).
_FORMS: dict[str, tuple[Callable[..., TextEncoder], str]] = {}
_INSTANCES: dict[tuple[str, str], TextEncoder] = {}


def register(form: str, factory: Callable[..., TextEncoder], description: str) -> None:
    """Add an encoder name to :func:`get`.

    ``form`` is either a whole name (``"lm"``: ``factory(device)`` builds the encoder) or
    ``"PREFIX:WHAT"`` (``"t5:NAME_OR_PATH"``: every name ``PREFIX:rest`` with a non-empty
    ``rest`` is built by ``factory(rest, device)``). ``description`` is what :func:`names` and
    the unknown-name error say about it.
    """
    if not isinstance(form, str) or not form or form.startswith(":") or form.endswith(":"):
        raise ValueError(f"an encoder name form is 'NAME' or 'PREFIX:WHAT', got {form!r}")
    _FORMS[form] = (factory, description)


def names() -> list[str]:
    """Every name form :func:`get` resolves, with what it is, e.g. ``"'lm' (chapter 2's language model ...)"``."""
    return [f"{form!r} ({description})" for form, (_, description) in _FORMS.items()]


def _build(name: str, device: str) -> TextEncoder:
    if ":" not in name and name in _FORMS:
        return _FORMS[name][0](device)
    prefix, _, rest = name.partition(":")
    for form, (factory, _) in _FORMS.items():
        if rest and ":" in form and form.partition(":")[0] == prefix:
            return factory(rest, device)
    raise ValueError(f"unknown text encoder {name!r}: expected one of {', '.join(names())}")


def get(name: str, device: str = "cpu") -> TextEncoder:
    """A frozen text encoder by name; one instance per ``(name, device)`` (later calls return it).

    Names: ``"lm"`` (:class:`LMTextEncoder` on the shipped chapter-2 model), ``"lm+words"``
    (:class:`LMWordsAndStates`), ``"canonical:NAME"`` (the encoder ``NAME`` reading canonical
    captions, :class:`CanonicalCaptions`), ``"t5:NAME_OR_PATH"`` (:class:`T5TextEncoder`, e.g.
    ``"t5:t5-small"``, ``"t5:google/t5-v1_1-xxl"``, ``"t5:/path/to/saved/t5"``). An unknown name
    raises ``ValueError`` listing the valid ones (:func:`names`).
    """
    if not isinstance(name, str):
        raise TypeError(f"encoder name must be a str, got {type(name).__name__}: expected one of {', '.join(names())}")
    key = (name, str(device))
    if key not in _INSTANCES:
        _INSTANCES[key] = _build(name, device)
    return _INSTANCES[key]


#: the name chapter 5's cascade code has always used for :func:`get`
get_text_encoder = get

register("lm", lambda device: LMTextEncoder.from_shipped("lm", device=device),
         "the chapter-2 language model's final states")
register("lm+words", lambda device: LMWordsAndStates(get("lm", device)),
         "the chapter-2 language model's input layer and final states, concatenated")
register("canonical:NAME", lambda rest, device: CanonicalCaptions(get(rest, device)),
         "the encoder NAME reading canonical captions, e.g. 'canonical:lm+words'")
register("toyt5", lambda device: ToyT5Encoder.from_shipped(device=device),
         "chapter 2b's shipped toy T5 encoder, pretrained on text alone (data/checkpoints/t5.safetensors)")
register("toyt5+words", lambda device: LMWordsAndStates(get("toyt5", device), "toyt5+words"),
         "the shipped toy T5 read at its input layer and final states, concatenated")
register("toyt5+words:PATH", lambda rest, device: LMWordsAndStates(get(f"toyt5:{rest}", device), f"toyt5+words:{rest}"),
         "a toy T5 checkpoint read at its input layer and final states, e.g. 'toyt5+words:runs/t5.safetensors'")
register("toyt5:PATH", lambda rest, device: ToyT5Encoder.from_file(rest, device=device),
         "chapter 2b's toy T5 encoder from a checkpoint file, e.g. 'toyt5:runs/t5.safetensors' (a file written by t5.save_t5)")
register("t5:NAME_OR_PATH", lambda rest, device: T5TextEncoder(rest, device=device),
         "a Hugging Face T5 encoder, e.g. 't5:t5-small', 't5:google/t5-v1_1-xxl', 't5:/a/local/folder'")

def build_tiny_t5(folder, words=None, d_model: int = 32, num_layers: int = 2, num_heads: int = 2,
                  seed: int = 0) -> Path:
    """Save a tiny, randomly initialised T5 encoder with a word-level tokenizer to ``folder``.

    For offline tests and demos only: it has T5's architecture and file layout (so
    ``T5TextEncoder(folder)`` loads it exactly as it would load ``t5-small``) but has learned
    nothing. ``words`` defaults to the caption vocabulary. Needs ``transformers`` and
    ``tokenizers``; downloads nothing.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    if words is None:
        words = default_tokenizer().vocab[4:]
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in words:
        vocab.setdefault(w, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>",
                                  unk_token="<unk>", model_max_length=128)
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=len(vocab), d_model=d_model, d_kv=d_model // num_heads, d_ff=2 * d_model,
                   num_layers=num_layers, num_heads=num_heads, pad_token_id=0, eos_token_id=1,
                   decoder_start_token_id=0)
    model = T5EncoderModel(cfg).eval()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with _quiet_progress():
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
    return folder
