"""The recurrent (Elman) language model of chapter 2 (``book/02_language_model.ipynb``).

Eq. (ch2-eq-rnn), the simple recurrent network of Elman (1990) used as a language model:

    h_0 = 0,    h_t = tanh(W_hh h_{t-1} + W_he e_t + b),    logits_t = W_out h_t,

where ``e_t`` is the embedding of token ``x_t`` and ``softmax(logits_t)`` is the model's
``p(x_{t+1} | x_<=t)`` (Eq. ch2-eq-chain). Everything the model knows about the prefix passes
through the fixed-size state ``h_t``, and the states are computed one after another.

:class:`RNNLM` has the forward signature of the chapter's other models
(``model(ids (B, T), mask (B, T) | None) -> logits (B, T, V)``), so the chapter's loss,
perplexity, sampling and training (:func:`imagen_edu.lm.loss`, :func:`imagen_edu.lm.perplexity`,
:func:`imagen_edu.lm.sample`, :func:`imagen_edu.lm.train`) work for it unchanged;
:func:`train_rnn` is :func:`imagen_edu.lm.train_lm` with this model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .lm import TrainResult, check_ids, train_model

__all__ = ["RNNConfig", "RNNLM", "train_rnn"]


@dataclass
class RNNConfig:
    """Size of an :class:`RNNLM`.

    Attributes:
        vocab_size: number of tokens (specials included).
        d_embed: width of the token embeddings ``e_t``.
        d_hidden: width of the state ``h_t``.
        max_len: longest sequence :func:`imagen_edu.lm.sample` generates (the recurrence itself
            has no limit); captions are at most 10 tokens.
    """

    vocab_size: int
    d_embed: int = 64
    d_hidden: int = 64
    max_len: int = 16

    def __post_init__(self):
        for k in ("vocab_size", "d_embed", "d_hidden", "max_len"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"RNNConfig.{k} must be a positive int, got {v!r}")


class RNNLM(nn.Module):
    """An Elman RNN language model, Eq. (ch2-eq-rnn).

    Parameters (the names of the equation): ``tok_emb`` (the embeddings ``e``), ``W_he`` (with
    the bias ``b``), ``W_hh`` and ``W_out``. The first state ``h_0`` is zero, so ``h_1`` does not
    depend on ``W_hh``. ``torch.nn.RNN`` with ``nonlinearity="tanh"`` computes the same states
    (its ``bias_ih + bias_hh`` is our ``b``).
    """

    def __init__(self, config: RNNConfig):
        super().__init__()
        if not isinstance(config, RNNConfig):
            raise TypeError(f"RNNLM needs an RNNConfig, got {type(config).__name__}")
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_embed)
        self.W_he = nn.Linear(config.d_embed, config.d_hidden, bias=True)        # W_he e_t + b
        self.W_hh = nn.Linear(config.d_hidden, config.d_hidden, bias=False)
        self.W_out = nn.Linear(config.d_hidden, config.vocab_size, bias=False)

    def hidden(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The states ``h_1..h_T`` ``(B, T, d_hidden)`` of Eq. (ch2-eq-rnn), one step per token.

        ``mask (B, T)`` bool is accepted for the common signature and not needed: ``h_t`` reads
        tokens ``x_<=t`` only, so right padding never changes a real position's state.
        """
        check_ids(ids, mask, self.config.vocab_size)
        e = self.tok_emb(ids)                                  # (B, T, d_embed)
        inputs = self.W_he(e)                                  # W_he e_t + b for every t at once
        h = inputs.new_zeros(ids.shape[0], self.config.d_hidden)   # h_0 = 0
        states = []
        for t in range(ids.shape[1]):                          # the recurrence: one step after another
            h = torch.tanh(self.W_hh(h) + inputs[:, t])
            states.append(h)
        if not states:
            return inputs.new_zeros(ids.shape[0], 0, self.config.d_hidden)
        return torch.stack(states, dim=1)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token logits ``(B, T, vocab_size)``: row t is ``W_out h_t``, scoring ``x_{t+1}``."""
        return self.W_out(self.hidden(ids, mask))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def train_rnn(settings=None, seed: int = 0, device: str | None = None, progress: bool = True,
              texts=None) -> TrainResult:
    """Build an :class:`RNNLM` with ``d_embed = d_hidden = settings.d_model`` and train it with
    the chapter's recipe and budget (``settings.max_steps``, ``batch_size``, ``lr``; default: the
    active profile's ``LMSettings``), exactly as :func:`imagen_edu.lm.train_lm` trains the GPT.
    ``texts``: the training captions (default: the ``train`` split)."""
    return train_model(lambda tok, s: RNNLM(RNNConfig(tok.vocab_size, d_embed=s.d_model, d_hidden=s.d_model)),
                       settings, seed=seed, device=device, progress=progress, texts=texts)
