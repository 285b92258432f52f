"""Tests of imagen_edu.rnn: the Elman recurrence of chapter 2, Eq. (ch2-eq-rnn), and that the RNN
trains, scores and samples through imagen_edu.lm's model-generic functions."""

import pytest
import torch

from imagen_edu import lm, profiles, rnn
from imagen_edu.data.captions import caption_corpus, parse_caption
from imagen_edu.tokenizer import default_tokenizer


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


@pytest.fixture
def model(tok):
    torch.manual_seed(0)
    return rnn.RNNLM(rnn.RNNConfig(tok.vocab_size, d_embed=12, d_hidden=16)).eval()


def test_states_match_torch_nn_rnn(model, tok):
    """Eq. (ch2-eq-rnn), h_t = tanh(W_hh h_{t-1} + W_he e_t + b) with h_0 = 0, is the Elman RNN that
    torch.nn.RNN (tanh) computes: with the same weights (b split as bias_ih + bias_hh) the states
    agree at every position, and the logits are W_out h_t."""
    ref = torch.nn.RNN(12, 16, nonlinearity="tanh", batch_first=True)
    with torch.no_grad():
        ref.weight_ih_l0.copy_(model.W_he.weight)
        ref.weight_hh_l0.copy_(model.W_hh.weight)
        ref.bias_ih_l0.copy_(0.25 * model.W_he.bias)
        ref.bias_hh_l0.copy_(0.75 * model.W_he.bias)
    ids, mask = tok.batch_encode(["a red circle", "a blue square left of a green circle"])
    with torch.no_grad():
        want, h_last = ref(model.tok_emb(ids))
        got = model.hidden(ids, mask)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(got[:, -1], h_last[0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(model(ids, mask), got @ model.W_out.weight.T)


def test_recurrent_weights_change_only_later_states(model, tok):
    """Eq. (ch2-eq-rnn) with h_0 = 0: W_hh first acts on h_1, so changing W_hh leaves h_1 exactly as it
    was and changes every later state h_2..h_T (the recurrence carries the change forward)."""
    ids, _ = tok.batch_encode(["a blue square left of a green circle"])
    with torch.no_grad():
        before = model.hidden(ids)
        model.W_hh.weight.add_(0.5 * torch.randn_like(model.W_hh.weight))
        after = model.hidden(ids)
    torch.testing.assert_close(after[:, 0], before[:, 0], atol=0, rtol=0)
    for t in range(1, ids.shape[1]):
        assert not torch.allclose(after[:, t], before[:, t]), f"state {t + 1} did not change"


def test_causal_and_padding_free(model, tok):
    """Eq. (ch2-eq-chain) needs logits at position t to read x_<=t only: changing token t never changes
    an earlier logit, and right padding never changes a real position."""
    ids, _ = tok.batch_encode(["a red circle left of a blue square"])
    with torch.no_grad():
        out = model(ids)
        for t in range(1, ids.shape[1]):
            changed = ids.clone()
            changed[0, t] = (ids[0, t] - 4 + 1) % (tok.vocab_size - 4) + 4
            out2 = model(changed)
            torch.testing.assert_close(out2[:, :t], out[:, :t])
            assert not torch.allclose(out2[:, t], out[:, t])
        short, mask = tok.batch_encode(["a red circle"])
        padded, mask_p = tok.batch_encode(["a red circle"], max_len=12)
        torch.testing.assert_close(model(padded, mask_p)[:, :short.shape[1]], model(short, mask))


def test_input_checks(model):
    with pytest.raises(TypeError):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="token ids"):
        model(torch.full((1, 3), 999, dtype=torch.long))
    with pytest.raises(ValueError):
        rnn.RNNConfig(vocab_size=0)
    with pytest.raises(TypeError):
        rnn.RNNLM(lm.LMConfig(vocab_size=10))


def test_training_lowers_the_loss_and_the_shared_functions_work(tok):
    """The RNN trains with the chapter's one recipe (lm.train via lm.train_model) at the ci budget:
    the loss falls well below its start, and lm.perplexity / lm.sample accept it."""
    s = profiles.get("ci").lm
    res = rnn.train_rnn(s, seed=0, device="cpu", progress=False)
    assert len(res.losses) == s.max_steps
    assert sum(res.losses[-5:]) / 5 < 0.6 * sum(res.losses[:5]) / 5
    assert isinstance(res.model, rnn.RNNLM) and res.model.config.d_hidden == s.d_model
    ppl = lm.perplexity(res.model, tok, caption_corpus("train")[:100])
    assert 1 < ppl < tok.vocab_size
    caps = lm.sample(res.model, tok, n=4, seed=0)
    assert len(caps) == 4 and all(isinstance(c, str) for c in caps)


def test_trained_rnn_learns_the_grammar(tok):
    """A slightly longer run learns more than one token of context: its perplexity beats the bigram
    table's on the training captions, and most samples parse."""
    torch.manual_seed(0)
    model = rnn.RNNLM(rnn.RNNConfig(tok.vocab_size, d_embed=32, d_hidden=32))
    texts = caption_corpus("train")
    lm.train(model, tok, texts, steps=300, batch_size=64, lr=3e-3, progress=False)
    bigram = lm.BigramLM.fit(tok, texts)
    assert lm.perplexity(model, tok, texts) < lm.perplexity(bigram, tok, texts)
    ok = 0
    for c in lm.sample(model, tok, n=50, seed=0):
        try:
            parse_caption(c)
            ok += 1
        except ValueError:
            pass
    assert ok >= 25
