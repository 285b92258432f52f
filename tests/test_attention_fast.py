"""The fast attention path (torch's fused ``F.scaled_dot_product_attention``) against the explicit
``softmax(Q K^T / sqrt(d)) V`` of chapter 1 (Eq. ch1-eq-sdpa, masks Eq. ch1-eq-mask).

``scaled_dot_product_attention(..., need_weights=False)`` and ``MultiHeadAttention.flash`` pick
the fused kernel; these golden tests hold the two paths to the same outputs and gradients with
padding masks, causal masks, cross-attention and fully masked queries (dropout off).
"""

import pytest
import torch
import torch.nn.functional as F

from imagen_edu import attention as A

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = dict(atol=1e-5, rtol=1e-5)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def both_paths(q, k, v, mask=None):
    """(explicit output, fast output); the fast path returns no weights."""
    slow, w = A.scaled_dot_product_attention(q, k, v, mask)
    fast, none = A.scaled_dot_product_attention(q, k, v, mask, need_weights=False)
    assert w is not None and none is None
    return slow, fast


def test_fast_path_calls_torchs_kernel_only_without_weights(monkeypatch):
    """The fast path is torch's fused kernel, used only when the weights are not requested."""
    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    q = torch.randn(1, 2, 3, 4)
    A.scaled_dot_product_attention(q, q, q)
    assert not calls
    A.scaled_dot_product_attention(q, q, q, need_weights=False)
    assert calls == [1]
    mha = A.MultiHeadAttention(8, 2)
    mha(torch.randn(1, 3, 8))
    assert calls == [1]
    out, w = mha(torch.randn(1, 3, 8), need_weights=False)
    assert calls == [1, 1] and w is None
    mha.flash = False  # nanoGPT's flag off: the explicit path even without weights
    mha(torch.randn(1, 3, 8), need_weights=False)
    assert calls == [1, 1]


@pytest.mark.parametrize("mask_shape", [None, (5, 7), (2, 1, 5, 7), (2, 3, 5, 7), (2, 1, 1, 7)])
def test_fast_equals_explicit_with_masks(mask_shape):
    """Eq. (ch1-eq-mask): a boolean mask (True = may attend) gives the same output on both paths."""
    g = gen(1)
    q, k, v = torch.randn(2, 3, 5, 8, generator=g), torch.randn(2, 3, 7, 8, generator=g), torch.randn(2, 3, 7, 4, generator=g)
    mask = None if mask_shape is None else torch.rand(mask_shape, generator=g) > 0.5
    slow, fast = both_paths(q, k, v, mask)
    torch.testing.assert_close(fast, slow, **TOL)


def test_fast_equals_explicit_causal():
    """The causal mask (query i sees keys j <= i) on both paths, and torch's own is_causal."""
    g = gen(2)
    q, k, v = (torch.randn(3, 6, 8, generator=g) for _ in range(3))
    slow, fast = both_paths(q, k, v, A.causal_mask(6))
    torch.testing.assert_close(fast, slow, **TOL)
    torch.testing.assert_close(fast, F.scaled_dot_product_attention(q, k, v, is_causal=True), **TOL)


def test_fast_path_zeroes_a_fully_masked_query_with_finite_gradients():
    """A query with no allowed key: zero output on both paths (not NaN), and finite gradients."""
    g = gen(3)
    q, k, v = (torch.randn(1, 4, 3, generator=g, requires_grad=True) for _ in range(3))
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[2] = False
    grads = []
    for need in (True, False):
        out, _ = A.scaled_dot_product_attention(q, k, v, mask, need_weights=need)
        assert torch.all(out[:, 2] == 0) and torch.isfinite(out).all()
        grads.append(torch.autograd.grad((out * torch.arange(3.0)).sum(), (q, k, v)))
    for slow, fast in zip(*grads):
        assert torch.isfinite(fast).all()
        torch.testing.assert_close(fast, slow, **TOL)


def test_fast_equals_explicit_gradients():
    """Training through the fused kernel gives the gradients of the explicit formula."""
    g = gen(4)
    q, k, v = (torch.randn(2, 2, 5, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.rand(2, 1, 5, 5, generator=g) > 0.3
    mask[..., 0] = True
    outs = [A.scaled_dot_product_attention(q, k, v, mask, need_weights=n)[0] for n in (True, False)]
    gs = [torch.autograd.grad(o.pow(2).sum(), (q, k, v)) for o in outs]
    for a, b in zip(*gs):
        torch.testing.assert_close(b, a)


def _mha_pair(*args, **kwargs):
    torch.manual_seed(5)
    mha = A.MultiHeadAttention(*args, **kwargs).eval()
    return mha


def test_mha_fast_equals_explicit_self_cross_padding_causal():
    """MultiHeadAttention (Eq. ch1-eq-mha): self-attention with key padding and causal masks, and
    cross-attention to a context of another width and length with a text mask, agree on the
    fused and explicit paths (``flash`` on / off)."""
    g = gen(6)
    mha = _mha_pair(16, 4)
    x = torch.randn(3, 6, 16, generator=g)
    keep = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4], dtype=torch.bool)
    cross = _mha_pair(16, 2, d_context=10)
    ctx = torch.randn(3, 4, 10, generator=g)
    ctx_keep = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)  # row 3: no text
    cases = [(mha, (x,), {}), (mha, (x,), dict(key_mask=keep)), (mha, (x,), dict(causal=True)),
             (mha, (x,), dict(key_mask=keep, causal=True)), (mha, (x,), dict(mask=A.causal_mask(6))),
             (cross, (x, ctx), {}), (cross, (x, ctx), dict(key_mask=ctx_keep))]
    for m, args, kw in cases:
        slow, w = m(*args, **kw)
        fast, none = m(*args, **kw, need_weights=False)
        assert none is None and w is not None
        torch.testing.assert_close(fast, slow, **TOL)
    # and the flag really switches path: without flash the "fast" call is the explicit one, bit for bit
    cross.flash = False
    torch.testing.assert_close(cross(x, ctx, key_mask=ctx_keep, need_weights=False)[0],
                               cross(x, ctx, key_mask=ctx_keep)[0], atol=0, rtol=0)


def test_blocks_keep_weights_only_when_asked():
    """TransformerBlock keeps its heatmap weights only with ``keep_weights`` (else the fused kernel
    runs), and its output is the same either way."""
    torch.manual_seed(7)
    block = A.TransformerBlock(16, 2, cross_attention=True, d_context=8).eval()
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 3, 8)
    out = block(x, context=ctx, causal=True)
    assert block.last_weights == {}
    block.keep_weights = True
    torch.testing.assert_close(block(x, context=ctx, causal=True), out, **TOL)
    assert set(block.last_weights) == {"self", "cross"}
    assert torch.all(block.last_weights["self"].triu(1) == 0)


def test_fast_path_dropout_only_in_training():
    """Dropout on the attention weights (fused kernel's dropout_p) acts in training only."""
    torch.manual_seed(8)
    mha = A.MultiHeadAttention(8, 2, dropout=0.5)
    x = torch.randn(1, 6, 8)
    mha.eval()
    torch.testing.assert_close(mha(x, need_weights=False)[0], mha(x)[0], **TOL)
    mha.train()
    assert not torch.allclose(mha(x, need_weights=False)[0], mha(x, need_weights=False)[0])
