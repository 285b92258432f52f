"""Frozen text encoders: what Imagen's diffusion models read (chapter 2, used in chapter 5).

Every encoder has one interface::

    embeddings, mask = encoder.encode(["a red circle", "a blue square left of a green circle"])
    # embeddings (B, T, D) float, mask (B, T) bool (True on real tokens), D == encoder.dim

Imagen conditions its U-Nets on the output sequence of a *frozen* text-only encoder, T5-XXL
(Saharia et al. 2022, Section 2.1): the encoder is never trained or fine-tuned with the images.
Two implementations:

* :class:`LMTextEncoder`: the final hidden states of chapter 2's caption language model;
* :class:`T5TextEncoder`: a Hugging Face ``T5EncoderModel`` (``t5-small`` ... ``google/t5-v1_1-xxl``,
  or any local folder), loaded lazily on first use.

:func:`get` picks one by name: ``get("lm")`` or ``get("t5:NAME_OR_PATH")``.

Both return zeros at padding positions, and the embeddings of real tokens do not depend on how
much padding a batch has: a U-Net's cross-attention must give the same image for the same
prompt whatever else is in the batch.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

__all__ = ["TextEncoder", "LMTextEncoder", "T5TextEncoder", "get", "build_tiny_t5"]


class TextEncoder:
    """The interface: ``name``, ``dim`` and ``encode(texts) -> (embeddings (B, T, dim), mask (B, T))``."""

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

    Args:
        model: a :class:`~imagen_edu.lm.GPTLM` (frozen here: eval mode, no gradients).
        tokenizer: its :class:`~imagen_edu.tokenizer.WordTokenizer`.
        name: a label for plots and logs.
    """

    def __init__(self, model, tokenizer, name: str = "lm"):
        self.model = _freeze(model)
        self.tokenizer = tokenizer
        self.name = name

    @classmethod
    def from_shipped(cls, name: str = "lm", device: str = "cpu") -> "LMTextEncoder":
        """The shipped chapter-2 model (hash-checked by :func:`imagen_edu.checkpoints.load_shipped`)."""
        from .lm import load_shipped

        model, tok = load_shipped(name, device=device)
        return cls(model, tok, name=name)

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``texts`` (B strings) -> ``(embeddings (B, T, dim), mask (B, T) bool)``; zeros on padding."""
        texts = self._check_texts(texts)
        ids, mask = self.tokenizer.batch_encode(texts)
        ids, mask = ids.to(self.device), mask.to(self.device)
        h = self.model.hidden(ids, mask)                       # (B, T, D)
        return h * mask[..., None], mask


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


def get(name: str, device: str = "cpu") -> TextEncoder:
    """A text encoder by name: ``"lm"`` (the shipped chapter-2 model) or ``"t5:NAME_OR_PATH"``.

    Examples: ``get("lm")``, ``get("t5:t5-small")``, ``get("t5:google/t5-v1_1-xxl")``,
    ``get("t5:/path/to/saved/t5")``.
    """
    valid = "'lm' (the chapter-2 language model) or 't5:NAME_OR_PATH' (e.g. 't5:t5-small', 't5:google/t5-v1_1-xxl', 't5:/a/local/folder')"
    if not isinstance(name, str):
        raise TypeError(f"encoder name must be a str: {valid}")
    if name == "lm":
        return LMTextEncoder.from_shipped("lm", device=device)
    if name.startswith("t5:") and len(name) > 3:
        return T5TextEncoder(name[3:], device=device)
    raise ValueError(f"unknown text encoder {name!r}: expected {valid}")


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
        from .tokenizer import default_tokenizer

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
