"""Chapter 2b: the T5-style encoder-decoder (imagen_edu.t5), golden-tested against transformers' T5."""

import math

import pytest
import torch

from imagen_edu import t5
from imagen_edu.t5 import T5, T5Config, relative_position_bucket, span_corruption

transformers = pytest.importorskip("transformers")

SMALL = dict(vocab_size=40, d_model=32, n_heads=4, d_kv=8, d_ff=48, n_layers=2, n_decoder_layers=2,
             num_buckets=8, max_distance=16)


def _hf_pair(seed=0, **kw):
    """Our T5 and a transformers T5ForConditionalGeneration with the same sizes and weights."""
    c = T5Config(**{**SMALL, **kw})
    hf_config = transformers.T5Config(
        vocab_size=c.vocab_size, d_model=c.d_model, d_kv=c.d_kv, d_ff=c.d_ff, num_layers=c.n_layers,
        num_decoder_layers=c.n_decoder_layers, num_heads=c.n_heads, relative_attention_num_buckets=c.num_buckets,
        relative_attention_max_distance=c.max_distance, dropout_rate=0.0, layer_norm_epsilon=c.eps,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, pad_token_id=0, decoder_start_token_id=0,
        eos_token_id=1)
    torch.manual_seed(seed)
    hf = transformers.T5ForConditionalGeneration(hf_config).eval()
    ours = t5.load_transformers_weights(T5(c), hf.state_dict()).eval()
    return ours, hf


def _batch(vocab=40, b=3, t=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, 6:] = False          # one padded row
    ids[~mask] = 0
    return ids, mask


def test_relative_position_bucket_matches_transformers():
    """Eq. (ch2b-eq-bucket): exact buckets near, log-spaced far, one direction bit when bidirectional."""
    rel = torch.arange(-300, 301)
    ref = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket
    for bidirectional in (True, False):
        for nb, md in ((32, 128), (8, 16), (16, 40)):
            got = relative_position_bucket(rel, bidirectional=bidirectional, num_buckets=nb, max_distance=md)
            want = ref(rel, bidirectional=bidirectional, num_buckets=nb, max_distance=md)
            assert torch.equal(got, want), (bidirectional, nb, md)


def test_buckets_are_exact_near_and_shared_far():
    """The near half of a direction's buckets is one per distance; far distances share the last bucket."""
    b = relative_position_bucket(torch.arange(-20, 21), bidirectional=True, num_buckets=16, max_distance=12)
    # keys to the left (j < i) use buckets 0..7, to the right 8..15
    assert b[20] == 0 and b[21] == 9 and b[19] == 1
    assert len(set(b[16:21].tolist())) == 5         # distances 0..4 to the left are distinct (exact = 4 => 0..3, then log)
    assert b[0] == b[1] == 7 and b[-1] == b[-2] == 15
    causal = relative_position_bucket(torch.arange(-5, 6), bidirectional=False, num_buckets=8, max_distance=16)
    assert torch.equal(causal[5:], torch.zeros(6, dtype=torch.long)), "the causal decoder maps every future key to 0"


def test_rmsnorm_has_no_mean_and_no_bias():
    """Eq. (ch2b-eq-rms): a constant vector is not centred away; scaling the input does not change the output."""
    n = t5.RMSNorm(4)
    x = torch.full((2, 4), 3.0)
    torch.testing.assert_close(n(x), torch.ones(2, 4), atol=1e-5, rtol=0)
    y = torch.randn(5, 4, generator=torch.Generator().manual_seed(0)) + 0.5   # rms far above sqrt(eps)
    torch.testing.assert_close(n(7 * y), n(y), atol=1e-4, rtol=1e-4)
    assert [name for name, _ in n.named_parameters()] == ["weight"]


def test_encoder_states_match_transformers():
    """Golden: the bidirectional encoder (RMSNorm, gated GELU, shared relative bias) equals T5EncoderModel's states."""
    ours, hf = _hf_pair()
    ids, mask = _batch()
    with torch.no_grad():
        want = hf.encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        got = ours.encode(ids, mask)
    torch.testing.assert_close(got[mask], want[mask], atol=1e-5, rtol=1e-4)


def test_logits_and_loss_match_transformers():
    """Golden: decoder logits (causal self-attention + cross-attention) and the teacher-forced loss equal T5's."""
    ours, hf = _hf_pair(seed=3)
    ids, mask = _batch(seed=4)
    labels = torch.randint(2, 40, (3, 6), generator=torch.Generator().manual_seed(5))
    labels[0, 4:] = t5.IGNORE_INDEX
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=mask.long(), labels=labels)
        got_loss = ours.loss(ids, mask, labels)
        got_logits = ours(ids, mask, t5.shift_right(labels, 0))
    torch.testing.assert_close(got_logits, out.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got_loss, out.loss, atol=1e-5, rtol=1e-5)


def test_encoder_is_bidirectional_and_decoder_is_causal():
    """The encoder's first state depends on the last token; the decoder's first logit does not depend on later inputs."""
    torch.manual_seed(0)
    m = T5(T5Config(**SMALL)).eval()
    ids = torch.randint(2, 40, (1, 7))
    ids2 = ids.clone()
    ids2[0, -1] = (ids[0, -1] + 1 - 2) % 38 + 2
    with torch.no_grad():
        assert not torch.allclose(m.encode(ids)[0, 0], m.encode(ids2)[0, 0]), "the encoder must see the future"
        dec = torch.randint(2, 40, (1, 5))
        dec2 = dec.clone()
        dec2[0, -1] = (dec[0, -1] + 1 - 2) % 38 + 2
        a, b = m(ids, None, dec), m(ids, None, dec2)
    torch.testing.assert_close(a[0, :-1], b[0, :-1])
    assert not torch.allclose(a[0, -1], b[0, -1])


def test_padding_does_not_change_real_tokens():
    """Padding keys are masked: appending pads leaves the real tokens' encoder states unchanged."""
    torch.manual_seed(0)
    m = T5(T5Config(**SMALL)).eval()
    ids = torch.randint(2, 40, (1, 5))
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], 1)
    with torch.no_grad():
        torch.testing.assert_close(m.encode(padded)[0, :5], m.encode(ids)[0], atol=1e-6, rtol=1e-5)


def test_no_sqrt_d_scale_on_attention_logits():
    """T5 attention: softmax(QK^T + bias), no 1/sqrt(d) (Raffel et al.; the scale lives in the q initialisation)."""
    torch.manual_seed(0)
    c = T5Config(**SMALL)
    att = t5.T5Attention(c).eval()
    x = torch.randn(1, 4, c.d_model)
    q = att.q(x).reshape(1, 4, c.n_heads, c.d_kv).transpose(1, 2)
    k = att.k(x).reshape(1, 4, c.n_heads, c.d_kv).transpose(1, 2)
    v = att.v(x).reshape(1, 4, c.n_heads, c.d_kv).transpose(1, 2)
    w = torch.softmax(q @ k.transpose(-2, -1), -1)
    want = att.o((w @ v).transpose(1, 2).reshape(1, 4, -1))
    torch.testing.assert_close(att(x), want, atol=1e-6, rtol=1e-5)
    m = T5(c)
    assert m.encoder.blocks[0].self_attn.q.weight.std().item() == pytest.approx((c.d_model * c.d_kv) ** -0.5, rel=0.2)


def test_span_corruption_example_and_invariants():
    """Span corruption: the input keeps every non-dropped token in order, each span becomes one sentinel,
    and the target lists each span after its sentinel, then a closing sentinel."""
    toks = list(range(10, 30))
    sentinels = [100, 101, 102, 103, 104, 105, 106]
    for seed in range(30):
        inp, tgt = span_corruption(toks, sentinels, noise_density=0.3, mean_span_length=2.0,
                                   generator=torch.Generator().manual_seed(seed))
        n_spans = sum(t in sentinels for t in inp)
        assert n_spans == 3                      # round(round(20 * 0.3) / 2) = 3
        assert sum(t not in sentinels for t in tgt) == 6
        assert tgt[-1] == sentinels[n_spans]
        # rebuild the original from input and target
        spans, cur = {}, None
        for t in tgt:
            if t in sentinels:
                cur = t
                spans[cur] = []
            else:
                spans[cur].append(t)
        rebuilt = [x for t in inp for x in (spans[t] if t in sentinels else [t])]
        assert rebuilt == toks
        assert all(not (a in sentinels and b in sentinels) for a, b in zip(inp, inp[1:])), "spans never touch"


def test_span_position_is_uniform():
    """Every token of a short caption is dropped about equally often (T5's original recipe always drops the last)."""
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(6)
    for _ in range(3000):
        inp, tgt = span_corruption(list(range(6)), [90, 91, 92], noise_density=0.17, generator=g)
        counts[[t for t in tgt if t < 90]] += 1
    assert counts.sum() == 3000
    assert (counts / 3000 - 1 / 6).abs().max() < 0.03


def test_span_corruption_is_random_and_reproducible():
    toks = list(range(20))
    a = span_corruption(toks, range(100, 110), generator=torch.Generator().manual_seed(0))
    b = span_corruption(toks, range(100, 110), generator=torch.Generator().manual_seed(0))
    outs = {tuple(span_corruption(toks, range(100, 110), generator=torch.Generator().manual_seed(s))[0])
            for s in range(10)}
    assert a == b and len(outs) > 3


def test_span_corruption_short_caption_and_eos():
    inp, tgt = span_corruption([5, 6, 7, 8, 9], [90, 91, 92], eos_id=1,
                               generator=torch.Generator().manual_seed(0))
    assert inp[-1] == 1 and tgt[-1] == 1 and sum(t in (90, 91) for t in inp) == 1


@pytest.mark.parametrize("bad", [dict(n_heads=0), dict(num_buckets=7), dict(dropout=1.0), dict(pad_id=40)])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="T5Config"):
        T5Config(**{**SMALL, **bad})


def test_bad_inputs_are_named():
    m = T5(T5Config(**SMALL))
    with pytest.raises(ValueError, match="long tensor"):
        m.encode(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"\[0, 40\)"):
        m.encode(torch.full((1, 3), 40))
    with pytest.raises(ValueError, match="sentinel"):
        span_corruption(list(range(10)), [99], noise_density=0.5, mean_span_length=1)
    with pytest.raises(ValueError, match="2 tokens"):
        span_corruption([3], [99, 98])
    with pytest.raises(ValueError, match="no 'shared.weight'"):
        t5.load_transformers_weights(m, {})


def test_t5_learns_to_fill_spans():
    """A few hundred steps of span corruption on a repeating corpus cut the loss well below chance (log V)."""
    torch.manual_seed(0)
    c = T5Config(**{**SMALL, "vocab_size": 24})
    m = T5(c)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    corpus = [[2, 3, 4, 5, 6, 7], [8, 9, 10, 11, 12, 13], [2, 9, 4, 11, 6, 13]]
    sentinels = [23, 22, 21]
    first = last = None
    for step in range(150):
        pairs = [span_corruption(corpus[i % 3], sentinels, noise_density=0.34, mean_span_length=2, generator=g)
                 for i in range(12)]
        ti, tt = max(len(p[0]) for p in pairs), max(len(p[1]) for p in pairs)
        ids = torch.tensor([p[0] + [0] * (ti - len(p[0])) for p in pairs])
        labels = torch.tensor([p[1] + [t5.IGNORE_INDEX] * (tt - len(p[1])) for p in pairs])
        loss = m.loss(ids, None, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
        last = loss.item()
    assert first > 0.7 * math.log(24) and last < 0.5 * first
