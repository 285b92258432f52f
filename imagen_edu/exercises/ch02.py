"""Checked exercises of chapter 2 (``book/02_language_model.ipynb``).

Each check takes the reader's function, compares it with an independent computation on a few
inputs and prints PASS or FAIL with a hint; it returns a truthy/falsy :class:`Result`.
"""

from __future__ import annotations

import torch

from . import Result, run_check
from ..data.captions import caption_corpus
from ..lm import filter_logits
from ..tokenizer import default_tokenizer

__all__ = ["check_bigram_counts", "check_next_token_loss", "check_top_p", "check_rnn_step"]


def check_bigram_counts(fn, verbose: bool = True) -> Result:
    """``fn(tok, texts) -> counts (V, V)``: ``counts[a, b]`` = how often token b follows token a
    in the encoded texts (with ``<bos>`` and ``<eos>``), Eq. (ch2-eq-bigram)."""

    def check():
        tok = default_tokenizer()
        for texts in (["a red circle"], ["a red circle", "a red square left of a blue circle"],
                      caption_corpus("train")[::7]):
            got = fn(tok, texts)
            assert isinstance(got, torch.Tensor), f"return a torch.Tensor, got {type(got).__name__}"
            assert tuple(got.shape) == (tok.vocab_size,) * 2, \
                f"expected shape (V, V) = {(tok.vocab_size,) * 2}, got {tuple(got.shape)}"
            want = torch.zeros(tok.vocab_size, tok.vocab_size)
            for t in texts:
                ids = tok.encode(t)
                for a, b in zip(ids[:-1], ids[1:]):
                    want[a, b] += 1
            assert torch.equal(got.float(), want), \
                f"counts differ for {len(texts)} text(s): total {float(got.sum())} vs expected {float(want.sum())}"

    return run_check("bigram counts", check, "encode each text with tok.encode (it adds <bos> and <eos>) "
                     "and add 1 to counts[ids[i], ids[i+1]] for every neighbouring pair", verbose=verbose)


def check_next_token_loss(fn, verbose: bool = True) -> Result:
    """``fn(logits (B, T, V), targets (B, T), mask (B, T) bool) -> scalar``: the mean of
    ``-log softmax(logits)[target]`` over positions where ``mask`` is True, Eq. (ch2-eq-nll)."""

    def check():
        g = torch.Generator().manual_seed(0)
        for b, t, v in ((1, 3, 5), (4, 7, 19), (2, 1, 3)):
            logits = torch.randn(b, t, v, generator=g) * 3
            targets = torch.randint(0, v, (b, t), generator=g)
            mask = torch.rand(b, t, generator=g) > 0.3
            mask[0, 0] = True
            got = fn(logits, targets, mask)
            assert isinstance(got, torch.Tensor) and got.dim() == 0, "return a scalar tensor"
            logp = logits - logits.exp().sum(-1, keepdim=True).log()
            nll = -logp.gather(-1, targets[..., None])[..., 0]
            want = nll[mask].mean()
            assert torch.allclose(got, want, atol=1e-5), \
                f"for shape {(b, t, v)} got {float(got):.5f}, expected {float(want):.5f}"

    return run_check("next-token loss", check, "log_softmax over the last axis, pick the target's entry "
                     "(gather), negate, and average only where mask is True", verbose=verbose)


def check_top_p(fn, verbose: bool = True) -> Result:
    """``fn(logits (B, V), p) -> logits`` with every token outside the nucleus set to ``-inf``:
    keep the most likely tokens until their probability reaches ``p`` (always at least one)."""

    def check():
        g = torch.Generator().manual_seed(1)
        cases = [(torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]])), 0.8)]
        cases += [(torch.randn(3, 11, generator=g) * 2, p) for p in (0.3, 0.9, 1.0)]
        for logits, p in cases:
            got = fn(logits.clone(), p)
            assert tuple(got.shape) == tuple(logits.shape), f"expected shape {tuple(logits.shape)}"
            want = filter_logits(logits, top_p=p)
            kept_got, kept_want = torch.isfinite(got), torch.isfinite(want)
            assert torch.equal(kept_got, kept_want), \
                f"with p={p} you keep {kept_got.sum(-1).tolist()} tokens per row, expected {kept_want.sum(-1).tolist()}"
            assert torch.allclose(got[kept_got], logits[kept_got]), "kept logits must be unchanged"

    return run_check("top-p filter", check, "sort the probabilities in descending order, take the cumulative "
                     "sum, keep a token while the mass *before* it is < p, then undo the sort", verbose=verbose)


def check_rnn_step(fn, verbose: bool = True) -> Result:
    """``fn(h_prev (B, H), e (B, E), W_hh (H, H), W_he (H, E), b (H,)) -> h (B, H)``: one step of
    the Elman recurrence, ``h = tanh(W_hh h_prev + W_he e + b)`` for every row, Eq. (ch2-eq-rnn)."""

    def check():
        g = torch.Generator().manual_seed(2)
        for b, e, h in ((1, 3, 3), (4, 5, 7), (2, 8, 2)):
            cell = torch.nn.RNNCell(e, h, nonlinearity="tanh")          # torch's own Elman step
            h_prev = torch.randn(b, h, generator=g)
            x = torch.randn(b, e, generator=g) * 2
            W_hh, W_he, bias = (torch.randn(h, h, generator=g), torch.randn(h, e, generator=g),
                                torch.randn(h, generator=g))
            with torch.no_grad():
                cell.weight_hh.copy_(W_hh)
                cell.weight_ih.copy_(W_he)
                cell.bias_ih.copy_(bias)
                cell.bias_hh.zero_()
                want = cell(x, h_prev)
            got = fn(h_prev, x, W_hh, W_he, bias)
            assert isinstance(got, torch.Tensor), f"return a torch.Tensor, got {type(got).__name__}"
            assert tuple(got.shape) == (b, h), f"expected shape (B, H) = {(b, h)}, got {tuple(got.shape)}"
            err = float((got.detach() - want).abs().max())
            assert err < 1e-5, f"for B={b}, E={e}, H={h} the largest error is {err:.3g}"
        zero = torch.zeros(1, 2)
        assert torch.equal(fn(zero, torch.zeros(1, 3), torch.eye(2), torch.ones(2, 3), torch.zeros(2)), zero), \
            "with zero state, input and bias the new state must be 0"

    return run_check("RNN step", check, "the rows are examples, so the matrix-vector product W h of every row is "
                     "h @ W.T; then add the bias and apply tanh", verbose=verbose)


# ---------------------------------------------------------------------------------------------
# Reference solutions: the chapter's hidden solution cells and the appendix render these with
# imagen_edu.viz.show_source, and each one passes the check of the same name.
# ---------------------------------------------------------------------------------------------
def solution_bigram_counts(tok, texts) -> torch.Tensor:
    """Eq. (ch2-eq-bigram): ``(V, V)`` counts; every neighbouring pair (a, b) of token ids of an
    encoded text (``<bos>`` and ``<eos>`` included) adds one to ``counts[a, b]``."""
    counts = torch.zeros(tok.vocab_size, tok.vocab_size)
    for text in texts:
        seq = tok.encode(text)
        for a, b in zip(seq[:-1], seq[1:]):
            counts[a, b] += 1
    return counts


def solution_next_token_loss(logits, targets, mask) -> torch.Tensor:
    """Eq. (ch2-eq-nll): ``logits (B, T, V)``, ``targets (B, T)``, ``mask (B, T)`` -> scalar,
    the mean negative log-probability of the targets over the positions where mask is True."""
    logp = torch.log_softmax(logits, dim=-1)
    nll = -logp.gather(-1, targets[..., None])[..., 0]  # (B, T)
    return nll[mask].mean()


def solution_top_p(logits, p: float) -> torch.Tensor:
    """Nucleus filtering of ``logits (B, V)``: sorted by probability, a token is dropped when the
    mass of the tokens before it already reaches ``p``, so the most likely token always stays."""
    probs = torch.softmax(logits, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    drop_sorted = (sorted_probs.cumsum(-1) - sorted_probs) >= p  # mass *before* each token
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # undo the sort
    return logits.masked_fill(drop, float("-inf"))


def solution_rnn_step(h_prev, e, W_hh, W_he, b) -> torch.Tensor:
    """Eq. (ch2-eq-rnn) for a batch: with one example per row, ``W h`` for every row is
    ``h @ W.T``; add the bias and squash with tanh, which keeps every state in (-1, 1)."""
    return torch.tanh(h_prev @ W_hh.T + e @ W_he.T + b)
