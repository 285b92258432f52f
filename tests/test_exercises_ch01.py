"""The chapter-1 exercise checks pass correct solutions and fail wrong ones with a useful hint."""

import math

import torch
from einops import rearrange

from imagen_edu import attention as A
from imagen_edu.exercises import ch01


# --- correct solutions ------------------------------------------------------------------------
def good_softmax(x):
    e = torch.exp(x - x.max(dim=-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


def good_attention(q, k, v, mask=None):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    w = torch.softmax(s, -1)
    return w @ v, w


def good_positions(t, d):
    pos = torch.arange(t)[:, None].float()
    ang = pos / 10000 ** (torch.arange(0, d, 2).float() / d)
    pe = torch.zeros(t, d)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(ang), torch.cos(ang)
    return pe


def test_correct_solutions_pass(capsys):
    assert ch01.check_softmax(good_softmax)
    assert ch01.check_causal_mask(lambda t: torch.ones(t, t, dtype=torch.bool).tril())
    assert ch01.check_attention(good_attention)
    assert ch01.check_attention(lambda q, k, v, mask=None: A.scaled_dot_product_attention(q, k, v, mask))
    assert ch01.check_positions(good_positions)
    assert ch01.check_split_heads(lambda x, h: rearrange(x, "b t (h d) -> b h t d", h=h))
    out = capsys.readouterr().out
    assert out.count("PASS") == 6 and "FAIL" not in out


# --- wrong solutions --------------------------------------------------------------------------
def fails(res, *words):
    assert not res
    assert res.message, "a failure needs a message"
    for w in words:
        assert w in res.message, f"{w!r} not in {res.message!r}"


def test_softmax_failures():
    naive = lambda x: torch.exp(x) / torch.exp(x).sum(-1, keepdim=True)  # noqa: E731
    fails(ch01.check_softmax(naive, verbose=False), "large scores", "hint")
    fails(ch01.check_softmax(lambda x: torch.softmax(x, 0), verbose=False), "off by")
    fails(ch01.check_softmax(lambda x: x.tolist(), verbose=False), "torch.Tensor")


def test_causal_mask_failures():
    fails(ch01.check_causal_mask(lambda t: torch.ones(t, t, dtype=torch.bool).triu(), verbose=False), "transposed")
    fails(ch01.check_causal_mask(lambda t: torch.ones(t, t).tril(), verbose=False), "torch.bool")
    fails(ch01.check_causal_mask(lambda t: torch.ones(t, t, dtype=torch.bool).tril(-1), verbose=False), "expected")


def test_attention_failures():
    def unscaled(q, k, v, mask=None):
        w = torch.softmax(q @ k.transpose(-2, -1), -1)
        return w @ v, w

    def over_queries(q, k, v, mask=None):
        w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), -2)
        return w @ v, w

    def ignores_mask(q, k, v, mask=None):
        return good_attention(q, k, v)

    def inverted_mask(q, k, v, mask=None):
        return good_attention(q, k, v, None if mask is None else ~mask)

    fails(ch01.check_attention(unscaled, verbose=False), "sqrt(d)")
    fails(ch01.check_attention(over_queries, verbose=False), "over the queries")
    fails(ch01.check_attention(ignores_mask, verbose=False), "zero weight")
    fails(ch01.check_attention(inverted_mask, verbose=False), "zero weight")
    fails(ch01.check_attention(lambda q, k, v, mask=None: good_attention(q, k, v, mask)[0], verbose=False), "tuple")
    res = ch01.check_attention(lambda q, k, v, mask=None: 1 / 0, verbose=False)
    fails(res, "ZeroDivisionError")


def test_positions_failures():
    def blocked(t, d):
        pe = good_positions(t, d)
        return torch.cat([pe[:, 0::2], pe[:, 1::2]], 1)

    def wrong_exponent(t, d):
        ang = torch.arange(t)[:, None].float() / 10000 ** (torch.arange(d // 2).float() / d)
        pe = torch.zeros(t, d)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(ang), torch.cos(ang)
        return pe

    def swapped(t, d):
        pe = good_positions(t, d)
        return torch.stack([pe[:, 1::2], pe[:, 0::2]], -1).reshape(t, d)

    fails(ch01.check_positions(blocked, verbose=False), "interleaves")
    fails(ch01.check_positions(wrong_exponent, verbose=False), "2i/d")
    fails(ch01.check_positions(swapped, verbose=False), "position 0")
    fails(ch01.check_positions(lambda t, d: torch.zeros(d, t), verbose=False), "expected (6, 4)")


def test_split_heads_failures():
    fails(ch01.check_split_heads(lambda x, h: x.reshape(x.shape[0], h, x.shape[1], -1), verbose=False), "plain reshape")
    fails(ch01.check_split_heads(lambda x, h: rearrange(x, "b t (d h) -> b h t d", h=h), verbose=False), "head j")


def test_an_unanswered_exercise_says_not_attempted_yet(capsys):
    """The page's stub (``raise NotImplementedError``) is reported as not attempted, not as a failure."""
    from imagen_edu.exercises import ch01

    def stub(s):
        raise NotImplementedError

    res = ch01.check_softmax(stub)
    out = capsys.readouterr().out
    assert not res and not res.attempted and res.verdict == "NOT ATTEMPTED YET"
    assert out.startswith("NOT ATTEMPTED YET: softmax") and "FAIL" not in out
    wrong = ch01.check_softmax(lambda s: s)
    assert not wrong and wrong.attempted and wrong.verdict == "FAIL"
