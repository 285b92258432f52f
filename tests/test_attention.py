"""Tests for imagen_edu.attention (chapter 1).

Golden tests compare with independent implementations in torch (``F.scaled_dot_product_attention``,
``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer(norm_first=True)``); property tests check what the chapter derives: masked keys get
zero weight, causality, permutation equivariance without positions, the sinusoidal formula.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from imagen_edu import attention as A

TOL = dict(atol=1e-5, rtol=1e-5)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# scaled dot-product attention: Eq. (ch1-eq-sdpa)
# ---------------------------------------------------------------------------------------------
def test_sdpa_matches_torch_without_mask():
    g = gen(1)
    q, k, v = torch.randn(2, 3, 5, 8, generator=g), torch.randn(2, 3, 7, 8, generator=g), torch.randn(2, 3, 7, 6, generator=g)
    out, w = A.scaled_dot_product_attention(q, k, v)
    ref = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out, ref, **TOL)
    assert out.shape == (2, 3, 5, 6) and w.shape == (2, 3, 5, 7)


def test_sdpa_matches_the_formula():
    """softmax(Q K^T / sqrt(d)) V written out with explicit loops over one batch element."""
    g = gen(2)
    q, k, v = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 2, generator=g, dtype=torch.float64)
    out, w = A.scaled_dot_product_attention(q, k, v)
    for i in range(4):
        s = [sum(q[i, c] * k[j, c] for c in range(3)) / math.sqrt(3) for j in range(5)]
        e = [math.exp(x) for x in s]
        ref_w = torch.tensor([x / sum(e) for x in e], dtype=torch.float64)
        torch.testing.assert_close(w[i], ref_w)
        torch.testing.assert_close(out[i], (ref_w[:, None] * v).sum(0))


@pytest.mark.parametrize("mask_shape", [(5, 7), (2, 1, 5, 7), (2, 3, 5, 7), (2, 1, 1, 7)])
def test_sdpa_matches_torch_with_boolean_mask(mask_shape):
    g = gen(3)
    q, k, v = torch.randn(2, 3, 5, 8, generator=g), torch.randn(2, 3, 7, 8, generator=g), torch.randn(2, 3, 7, 4, generator=g)
    mask = torch.rand(mask_shape, generator=g) > 0.4
    mask[..., 0] = True  # every query keeps at least one key (torch gives NaN otherwise)
    out, w = A.scaled_dot_product_attention(q, k, v, mask)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, ref, **TOL)
    # masked keys get exactly zero weight, rows sum to 1
    full = mask.expand(w.shape)
    assert torch.all(w[~full] == 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]), **TOL)


def test_sdpa_causal_mask_matches_torch_is_causal():
    g = gen(4)
    q, k, v = (torch.randn(3, 6, 8, generator=g) for _ in range(3))
    out, w = A.scaled_dot_product_attention(q, k, v, A.causal_mask(6))
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), **TOL)
    assert torch.all(w.triu(1) == 0)


def test_causal_mask_shape_and_values():
    m = A.causal_mask(4)
    assert m.dtype == torch.bool and m.shape == (4, 4)
    for i in range(4):
        for j in range(4):
            assert bool(m[i, j]) == (j <= i)
    with pytest.raises(ValueError, match="positive int"):
        A.causal_mask(0)


def test_fully_masked_query_gets_zero_weights_and_output():
    q, k, v = torch.randn(1, 3, 4), torch.randn(1, 5, 4), torch.randn(1, 5, 2)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1] = False
    out, w = A.scaled_dot_product_attention(q, k, v, mask)
    assert torch.isfinite(out).all()
    assert torch.all(w[:, 1] == 0) and torch.all(out[:, 1] == 0)
    torch.testing.assert_close(w[:, [0, 2]].sum(-1), torch.ones(1, 2))
    # and gradients stay finite (no NaN from the all -inf softmax row)
    q.requires_grad_(True)
    k.requires_grad_(True)
    A.scaled_dot_product_attention(q, k, v, mask)[0].sum().backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()


def test_scaling_keeps_score_variance_near_one():
    """Why divide by sqrt(d): q.k of unit-variance vectors has variance d; scaled, it has variance 1."""
    g = gen(5)
    for d in (4, 64, 512):
        q, k = torch.randn(20000, d, generator=g), torch.randn(20000, d, generator=g)
        dots = (q * k).sum(-1)
        assert abs(dots.var().item() / d - 1) < 0.1
        assert abs((dots / math.sqrt(d)).var().item() - 1) < 0.1


def test_sdpa_bad_inputs_say_what_was_expected():
    q, k, v = torch.randn(2, 5, 8), torch.randn(2, 7, 8), torch.randn(2, 7, 4)
    with pytest.raises(ValueError, match=r"last \(head\) dimension"):
        A.scaled_dot_product_attention(q, torch.randn(2, 7, 6), v)
    with pytest.raises(ValueError, match="number of keys Tk"):
        A.scaled_dot_product_attention(q, k, torch.randn(2, 6, 4))
    with pytest.raises(ValueError, match="torch.bool"):
        A.scaled_dot_product_attention(q, k, v, torch.zeros(5, 7))  # a float (additive) mask
    with pytest.raises(ValueError, match=r"\(\.\.\., Tq, Tk\)"):
        A.scaled_dot_product_attention(q, k, v, torch.ones(7, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(\.\.\., Tq, Tk\)"):
        A.scaled_dot_product_attention(q, k, v, torch.ones(3, 2, 5, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        A.scaled_dot_product_attention(torch.randn(8), k, v)
    with pytest.raises(TypeError, match="torch.Tensor"):
        A.scaled_dot_product_attention(q.tolist(), k, v)


# ---------------------------------------------------------------------------------------------
# multi-head attention against nn.MultiheadAttention
# ---------------------------------------------------------------------------------------------
def _torch_twin(mha: A.MultiHeadAttention) -> nn.MultiheadAttention:
    """An nn.MultiheadAttention with the same weights as ours."""
    kdim = mha.d_context
    ref = nn.MultiheadAttention(mha.d_model, mha.n_heads, batch_first=True, kdim=kdim, vdim=kdim)
    with torch.no_grad():
        if ref._qkv_same_embed_dim:
            ref.in_proj_weight.copy_(torch.cat([mha.q_proj.weight, mha.k_proj.weight, mha.v_proj.weight]))
        else:
            ref.q_proj_weight.copy_(mha.q_proj.weight)
            ref.k_proj_weight.copy_(mha.k_proj.weight)
            ref.v_proj_weight.copy_(mha.v_proj.weight)
        ref.in_proj_bias.copy_(torch.cat([mha.q_proj.bias, mha.k_proj.bias, mha.v_proj.bias]))
        ref.out_proj.weight.copy_(mha.out_proj.weight)
        ref.out_proj.bias.copy_(mha.out_proj.bias)
    return ref.eval()


def _compare(mha, ref, x, ctx=None, our_kwargs=None, ref_kwargs=None):
    ctx = x if ctx is None else ctx
    out, w = mha(x, None if ctx is x else ctx, **(our_kwargs or {}))
    ref_out, ref_w = ref(x, ctx, ctx, need_weights=True, average_attn_weights=False, **(ref_kwargs or {}))
    torch.testing.assert_close(out, ref_out, **TOL)
    torch.testing.assert_close(w, ref_w, **TOL)
    return w


def test_mha_matches_torch_self_attention():
    torch.manual_seed(0)
    mha = A.MultiHeadAttention(16, 4).eval()
    x = torch.randn(3, 6, 16)
    _compare(mha, _torch_twin(mha), x)


def test_mha_matches_torch_with_key_padding_mask():
    torch.manual_seed(1)
    mha = A.MultiHeadAttention(16, 2).eval()
    x = torch.randn(3, 6, 16)
    keep = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    # torch's key_padding_mask marks the keys to IGNORE; ours marks the keys that may be attended
    w = _compare(mha, _torch_twin(mha), x, our_kwargs=dict(key_mask=keep), ref_kwargs=dict(key_padding_mask=~keep))
    assert torch.all(w[1, :, :, 4:] == 0) and torch.all(w[2, :, :, 2:] == 0)


def test_mha_matches_torch_with_causal_mask():
    torch.manual_seed(2)
    mha = A.MultiHeadAttention(12, 3).eval()
    x = torch.randn(2, 5, 12)
    ref = _torch_twin(mha)
    forbid = ~A.causal_mask(5)  # torch's boolean attn_mask marks what is NOT allowed
    _compare(mha, ref, x, our_kwargs=dict(causal=True), ref_kwargs=dict(attn_mask=forbid))
    _compare(mha, ref, x, our_kwargs=dict(mask=A.causal_mask(5)), ref_kwargs=dict(attn_mask=forbid))


def test_mha_matches_torch_cross_attention_with_other_context_width():
    torch.manual_seed(3)
    mha = A.MultiHeadAttention(16, 4, d_context=10).eval()
    x, ctx = torch.randn(2, 9, 16), torch.randn(2, 4, 10)
    keep = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    ref = _torch_twin(mha)
    assert not ref._qkv_same_embed_dim  # torch really takes its kdim/vdim code path
    _compare(mha, ref, x, ctx)
    w = _compare(mha, ref, x, ctx, our_kwargs=dict(key_mask=keep), ref_kwargs=dict(key_padding_mask=~keep))
    assert w.shape == (2, 4, 9, 4)
    assert torch.all(w[0, ..., 3] == 0)


def test_cross_attention_padding_tokens_change_nothing():
    """Text padding masked out: the values at padded positions cannot influence the output."""
    torch.manual_seed(4)
    block = A.TransformerBlock(16, 2, cross_attention=True, d_context=8).eval()
    block.keep_weights = True
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 6, 8)
    keep = torch.ones(2, 6, dtype=torch.bool)
    keep[:, 4:] = False
    out = block(x, context=ctx, context_mask=keep)
    assert torch.all(block.last_weights["cross"][..., 4:] == 0)
    ctx2 = ctx.clone()
    ctx2[:, 4:] = 100 * torch.randn(2, 2, 8)
    torch.testing.assert_close(block(x, context=ctx2, context_mask=keep), out)
    # without the mask the padding does matter (so the test above could fail)
    assert not torch.allclose(block(x, context=ctx2), out, atol=1e-3)


def test_mha_weights_rows_sum_to_one():
    torch.manual_seed(5)
    mha = A.MultiHeadAttention(8, 2)
    _, w = mha(torch.randn(2, 7, 8), causal=True)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, 7), **TOL)


def test_mha_bad_inputs_say_what_was_expected():
    with pytest.raises(ValueError, match="not divisible by n_heads"):
        A.MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match="positive ints"):
        A.MultiHeadAttention(8, 0)
    mha = A.MultiHeadAttention(8, 2)
    x = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match=r"\(B, Tq, d_model=8\)"):
        mha(torch.randn(2, 5, 6))
    with pytest.raises(ValueError, match=r"d_context=8"):
        mha(x, torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="torch.bool"):
        mha(x, mask=torch.ones(5, 5))
    with pytest.raises(ValueError, match=r"\(\.\.\., Tq, Tk\)"):
        mha(x, mask=torch.ones(4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="ambiguous"):
        mha(x, mask=torch.ones(2, 5, 5, dtype=torch.bool))  # B == n_heads: would broadcast silently
    with pytest.raises(ValueError, match=r"\(B, Tk\)"):
        mha(x, key_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="torch.bool"):
        mha(x, key_mask=torch.ones(2, 5))
    cross = A.MultiHeadAttention(8, 2, d_context=4)
    with pytest.raises(ValueError, match="as many keys as queries"):
        cross(x, torch.randn(2, 3, 4), causal=True)


# ---------------------------------------------------------------------------------------------
# properties: causality, permutation equivariance, positions
# ---------------------------------------------------------------------------------------------
def test_causal_transformer_ignores_the_future():
    torch.manual_seed(6)
    model = A.Transformer(16, 4, n_layers=3).eval()
    x = torch.randn(2, 8, 16)
    out = model(x, causal=True)
    for t in (0, 3, 6):
        x2 = x.clone()
        x2[:, t + 1:] = torch.randn(2, 7 - t, 16)
        out2 = model(x2, causal=True)
        torch.testing.assert_close(out2[:, : t + 1], out[:, : t + 1], **TOL)
        assert not torch.allclose(out2[:, t + 1:], out[:, t + 1:])
    # and without the causal mask the past does see the future (the test can fail)
    assert not torch.allclose(model(x2)[:, :1], model(x)[:, :1])


def test_self_attention_is_permutation_equivariant_without_positions():
    torch.manual_seed(7)
    mha = A.MultiHeadAttention(16, 4).eval()
    block = A.TransformerBlock(16, 4).eval()
    x = torch.randn(2, 7, 16)
    perm = torch.randperm(7)
    out, w = mha(x)
    out_p, w_p = mha(x[:, perm])
    torch.testing.assert_close(out_p, out[:, perm], **TOL)
    torch.testing.assert_close(w_p, w[:, :, perm][..., perm], **TOL)
    torch.testing.assert_close(block(x[:, perm]), block(x)[:, perm], **TOL)


def test_sinusoidal_positions_break_permutation_equivariance():
    torch.manual_seed(8)
    block = A.TransformerBlock(16, 4).eval()
    x = torch.randn(1, 7, 16)
    pe = A.sinusoidal_positions(7, 16)
    perm = torch.tensor([6, 5, 4, 3, 2, 1, 0])
    assert not torch.allclose(block(x[:, perm] + pe), block(x + pe)[:, perm], atol=1e-3)
    lp = A.LearnedPositions(7, 16)
    assert not torch.allclose(block(lp(x[:, perm])), block(lp(x))[:, perm], atol=1e-4)


def test_sinusoidal_positions_formula():
    t, d = 12, 10
    pe = A.sinusoidal_positions(t, d)
    assert pe.shape == (t, d)
    for pos in range(t):
        for i in range(d // 2):
            angle = pos / 10000 ** (2 * i / d)
            assert abs(pe[pos, 2 * i].item() - math.sin(angle)) < 1e-5
            assert abs(pe[pos, 2 * i + 1].item() - math.cos(angle)) < 1e-5


def test_sinusoidal_dot_products_depend_only_on_offset():
    pe = A.sinusoidal_positions(64, 32).double()
    gram = pe @ pe.T
    for k in (0, 1, 5, 20):
        diag = torch.diagonal(gram, offset=k)
        torch.testing.assert_close(diag, torch.full_like(diag, diag[0].item()), atol=1e-4, rtol=0)
    # and they do depend on the offset
    assert gram[0, 1] > gram[0, 5] > gram[0, 20]
    # each row has norm sqrt(d/2)
    torch.testing.assert_close(pe.norm(dim=1), torch.full((64,), 4.0, dtype=torch.float64), atol=1e-5, rtol=0)


def test_sinusoidal_embedding_is_one_function_in_two_layouts():
    """Eq. (ch1-eq-sinusoid) once: the positions are its interleaved layout [sin, cos, sin, ...],
    the U-Net's timestep embedding its DDPM layout [cos ..., sin ...] (chapter 3); the same features
    permuted, at any (also fractional) position."""
    from imagen_edu.unet import timestep_embedding

    x = torch.tensor([0.0, 1.0, 2.5, 7.0, 999.0])
    inter = A.sinusoidal_embedding(x, 12)
    halves = A.sinusoidal_embedding(x, 12, interleave=False)
    torch.testing.assert_close(halves, torch.cat([inter[:, 1::2], inter[:, 0::2]], dim=1))
    torch.testing.assert_close(A.sinusoidal_positions(6, 12), A.sinusoidal_embedding(torch.arange(6), 12))
    torch.testing.assert_close(timestep_embedding(x, 12), halves)
    for i in range(6):
        angle = 2.5 / 10000 ** (2 * i / 12)
        assert abs(inter[2, 2 * i].item() - math.sin(angle)) < 1e-5
        assert abs(inter[2, 2 * i + 1].item() - math.cos(angle)) < 1e-5
    with pytest.raises(ValueError, match="even int"):
        A.sinusoidal_embedding(x, 5)


def test_sinusoidal_positions_bad_input():
    with pytest.raises(ValueError, match="even int dimension"):
        A.sinusoidal_positions(4, 7)
    with pytest.raises(ValueError, match="positive int length"):
        A.sinusoidal_positions(0, 8)


def test_learned_positions():
    lp = A.LearnedPositions(5, 4)
    x = torch.zeros(2, 3, 4)
    torch.testing.assert_close(lp(x), lp.weight[:3].expand(2, 3, 4))
    with pytest.raises(ValueError, match="max_len=5"):
        lp(torch.zeros(1, 6, 4))


# ---------------------------------------------------------------------------------------------
# blocks and stacks
# ---------------------------------------------------------------------------------------------
def test_transformer_block_is_pre_norm_residual():
    """Zeroing both sub-layers' output projections leaves the identity (pre-norm residual stream)."""
    torch.manual_seed(9)
    block = A.TransformerBlock(8, 2)
    with torch.no_grad():
        for lin in (block.attn.out_proj, block.mlp.net[2]):
            lin.weight.zero_()
            lin.bias.zero_()
    x = torch.randn(2, 4, 8)
    torch.testing.assert_close(block(x), x)


def _encoder_layer_twin(block: A.TransformerBlock) -> nn.TransformerEncoderLayer:
    """torch's pre-norm encoder layer with our block's weights (GELU, batch first, no dropout)."""
    d = block.norm1.normalized_shape[0]
    ref = nn.TransformerEncoderLayer(d, block.attn.n_heads, dim_feedforward=block.mlp.net[0].out_features,
                                     dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(torch.cat([block.attn.q_proj.weight, block.attn.k_proj.weight,
                                                      block.attn.v_proj.weight]))
        ref.self_attn.in_proj_bias.copy_(torch.cat([block.attn.q_proj.bias, block.attn.k_proj.bias,
                                                    block.attn.v_proj.bias]))
        ref.self_attn.out_proj.load_state_dict(block.attn.out_proj.state_dict())
        ref.linear1.load_state_dict(block.mlp.net[0].state_dict())
        ref.linear2.load_state_dict(block.mlp.net[2].state_dict())
        ref.norm1.load_state_dict(block.norm1.state_dict())
        ref.norm2.load_state_dict(block.norm2.state_dict())
    return ref.eval()


def test_transformer_block_matches_torch_pre_norm_encoder_layer():
    """Eq. (ch1-eq-prenorm): x + MHA(LN(x)), then x + MLP(LN(x)) with a GELU MLP equals
    ``nn.TransformerEncoderLayer(norm_first=True)`` with the same weights: plain, with a key
    padding mask and causal, on the explicit and the fused attention paths."""
    torch.manual_seed(12)
    block = A.TransformerBlock(16, 4, mlp_mult=3).eval()
    with torch.no_grad():  # non-trivial LayerNorm parameters, so that swapping them would show
        for ln in (block.norm1, block.norm2):
            ln.weight.normal_(1.0, 0.2)
            ln.bias.normal_(0.0, 0.2)
    ref = _encoder_layer_twin(block)
    x = torch.randn(3, 6, 16)
    keep = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 3 + [0] * 3], dtype=torch.bool)
    for keep_weights in (True, False):
        block.keep_weights = keep_weights
        torch.testing.assert_close(block(x), ref(x), **TOL)
        torch.testing.assert_close(block(x, key_mask=keep), ref(x, src_key_padding_mask=~keep), **TOL)
        torch.testing.assert_close(block(x, causal=True), ref(x, src_mask=~A.causal_mask(6)), **TOL)
    # the reference can fail: post-norm (norm_first=False) is another function
    post = nn.TransformerEncoderLayer(16, 4, 48, dropout=0.0, activation="gelu", batch_first=True).eval()
    post.load_state_dict(ref.state_dict())
    assert not torch.allclose(block(x), post(x), atol=1e-3)


def test_transformer_block_context_rules_and_weights():
    block = A.TransformerBlock(8, 2)
    with pytest.raises(ValueError, match="no cross-attention"):
        block(torch.randn(1, 3, 8), context=torch.randn(1, 2, 8))
    cross = A.TransformerBlock(8, 2, cross_attention=True, d_context=6)
    cross.keep_weights = True
    with pytest.raises(ValueError, match="pass context"):
        cross(torch.randn(1, 3, 8))
    out = cross(torch.randn(1, 3, 8), context=torch.randn(1, 5, 6))
    assert out.shape == (1, 3, 8)
    assert cross.last_weights["self"].shape == (1, 2, 3, 3)
    assert cross.last_weights["cross"].shape == (1, 2, 3, 5)


def test_transformer_stack_shapes_and_gradients():
    torch.manual_seed(10)
    model = A.Transformer(16, 2, n_layers=2, cross_attention=True, d_context=12)
    x, ctx = torch.randn(2, 5, 16, requires_grad=True), torch.randn(2, 3, 12)
    out = model(x, context=ctx, context_mask=torch.ones(2, 3, dtype=torch.bool))
    assert out.shape == (2, 5, 16)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert len(model.blocks) == 2


def test_dropout_only_in_training():
    torch.manual_seed(11)
    mha = A.MultiHeadAttention(8, 2, dropout=0.5)
    x = torch.randn(1, 6, 8)
    mha.eval()
    torch.testing.assert_close(mha(x)[0], mha(x)[0])
    mha.train()
    assert not torch.allclose(mha(x)[0], mha(x)[0])


# ---------------------------------------------------------------------------------------------
# the chapter's pictures (imagen_edu.viz attention helpers)
# ---------------------------------------------------------------------------------------------
def test_attention_pictures_and_explorer():
    import matplotlib

    matplotlib.use("Agg")
    import ipywidgets as W

    from imagen_edu import viz

    toks = ["a", "red", "circle"]
    maps = [torch.softmax(torch.randn(2, 3, 3), -1) for _ in range(2)]
    ax = viz.attention_heatmap(maps[0][0], toks, toks, title="t", annotate=True)
    assert ax.get_title() == "t" and [t.get_text() for t in ax.get_xticklabels()] == toks
    with pytest.raises(ValueError, match="labels"):
        viz.attention_heatmap(maps[0][0], toks[:2], toks)
    fig = viz.attention_grid(maps, toks, toks, title="grid")
    assert len(fig.axes) == 4
    box = viz.attention_explorer(maps, toks)
    assert isinstance(box, W.VBox)
    layers = box.children[2]
    assert isinstance(layers, W.Stack) and len(layers.children) == 2
    # every (layer, head) page holds one row view per query, starting at the last query
    rows = layers.children[1].children[0].children[0]
    assert len(rows.children) == 3 and rows.selected_index == 2
    assert "0." in rows.children[2].value and "circle" in rows.children[2].value
    with pytest.raises(ValueError, match=r"expected weights of shape"):
        viz.attention_explorer(maps, toks + ["square"])
    dup = viz.attention_explorer([torch.softmax(torch.randn(1, 4, 4), -1)], ["a", "b", "a", "b"])
    assert dup.children[1].index == 3 and len(set(dup.children[1]._options_labels)) == 4
    cross = viz.attention_explorer([torch.softmax(torch.randn(1, 2, 4), -1)], ["px0", "px1"], toks + ["<pad>"])
    assert isinstance(cross, W.VBox)
