"""Detail tests for imagen_edu.unet: each test fails when one DDPM / Imagen U-Net detail changes.

Every test builds a small seeded U-Net, records what flows between its parts with forward hooks
and compares it with a hand computation of the detail its docstring names (chapter 3 for the
unconditional U-Net, chapter 5 for the text and super-resolution inputs).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from imagen_edu.attention import sinusoidal_positions
from imagen_edu.unet import ResBlock, SpatialAttention, UNet, UNetConfig, heads_and_groups

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = dict(atol=1e-5, rtol=1e-5)
SMALL = dict(image_size=16, channels=8, channel_mults=(1, 2), attention_resolutions=(8,), num_heads=2)
# every optional input on: pooled text, text tokens with positions, a low-resolution image
FULL = dict(SMALL, cond_dim=6, context_dim=12, context_positions=8, lowres_channels=3)


def randomise(model, seed=1):
    """Random values for the parameters that start at a constant (zero output layer, LayerNorm and
    GroupNorm affine), so that a hand computation that skips one of them would disagree."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("out_conv") or "norm" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if name.endswith("weight") and
                                                                    "norm" in name else 0.0))
    return model.eval()


def full_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return randomise(UNet(UNetConfig(**{**FULL, **overrides})))


def full_inputs(seed=2, b=2, length=5):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[0, 3:] = False
    return dict(x=torch.randn(b, 3, 16, 16, generator=g), t=torch.tensor([3, 870])[:b],
                cond=torch.randn(b, 6, generator=g), context=torch.randn(b, length, 12, generator=g),
                context_mask=mask, lowres=torch.randn(b, 3, 8, 8, generator=g).tanh(),
                lowres_noise_level=torch.tensor([0.0, 0.37])[:b])


def run(model, inp):
    inp = dict(inp)
    with torch.no_grad():
        return model(inp.pop("x"), inp.pop("t"), **inp)


class Record:
    """Forward (pre-)hooks that store what a module received or returned."""

    def __init__(self):
        self.handles, self.calls = [], []

    def inputs(self, module, tag=None):
        self.handles.append(module.register_forward_pre_hook(
            lambda m, args, kwargs: self.calls.append((tag, m, args, kwargs)), with_kwargs=True))

    def outputs(self, module, tag=None):
        self.handles.append(module.register_forward_hook(lambda m, args, out: self.calls.append((tag, m, out))))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def hand_timestep_embedding(t, dim):
    """[cos(t w_0), ..., cos(t w_{d/2-1}), sin(t w_0), ...], w_i = 10000^(-i/(d/2)) (DDPM, chapter 3)."""
    rows = []
    for s in t.tolist():
        w = [10000 ** (-i / (dim // 2)) for i in range(dim // 2)]
        rows.append([math.cos(s * wi) for wi in w] + [math.sin(s * wi) for wi in w])
    return torch.tensor(rows, dtype=torch.float32)


def is_level(mod):
    return hasattr(mod, "res")


# ---------------------------------------------------------------------------------------------
# conditioning inputs (chapters 3 and 5)
# ---------------------------------------------------------------------------------------------
def test_time_embedding_is_the_sinusoid_of_the_step_number():
    """DDPM's timestep embedding: the time MLP reads the sinusoids of the integer step ``t`` itself
    (not t / T, not 1000 t), of width ``channels``, in the [cos, sin] layout."""
    m = full_model()
    inp = full_inputs()
    with Record() as r:
        r.inputs(m.time_mlp)
        run(m, inp)
    (_, _, args, _), = r.calls
    torch.testing.assert_close(args[0], hand_timestep_embedding(inp["t"], 8), atol=1e-4, rtol=1e-4)


def test_noise_level_embedding_is_the_timestep_embedding_of_1000_times_the_level():
    """Imagen's noise-conditioning augmentation (Section 2.4, chapter 5): the augmentation level
    ``s`` in [0, 1] is embedded as a timestep of ``1000 s``, so its sinusoids span the same speeds
    as a 1000-step ``t``; the noise-level MLP reads exactly those sinusoids."""
    m = full_model()
    inp = full_inputs()
    with Record() as r:
        r.inputs(m.noise_level_mlp)
        run(m, inp)
    (_, _, args, _), = r.calls
    torch.testing.assert_close(args[0], hand_timestep_embedding(1000.0 * inp["lowres_noise_level"], 8),
                               atol=1e-4, rtol=1e-4)
    # the default level is 0 (no augmentation), not "absent"
    inp0 = {**inp, "lowres_noise_level": torch.zeros(2)}
    no_level = {k: v for k, v in inp.items() if k != "lowres_noise_level"}
    torch.testing.assert_close(run(m, no_level), run(m, inp0))


def test_every_resblock_reads_time_plus_pooled_text_plus_noise_level():
    """Imagen's pooled text conditioning (Section 2.1, Appendix B): one vector
    ``time_mlp(emb(t)) + cond_proj(pooled text) + noise_level_mlp(emb(1000 s))`` of width
    ``4 * channels`` reaches every ResBlock."""
    m = full_model()
    inp = full_inputs()
    with torch.no_grad():
        want = (m.time_mlp(hand_timestep_embedding(inp["t"], 8)) + m.cond_proj(inp["cond"])
                + m.noise_level_mlp(hand_timestep_embedding(1000.0 * inp["lowres_noise_level"], 8)))
    assert want.shape == (2, 4 * 8)
    res_blocks = [mod for mod in m.modules() if isinstance(mod, ResBlock)]
    with Record() as r:
        for rb in res_blocks:
            r.inputs(rb)
        run(m, inp)
    assert len(r.calls) == len(res_blocks) == 2 + 2 + 4  # down, middle, up (one more per level)
    for _, _, args, _ in r.calls:
        torch.testing.assert_close(args[1], want, atol=1e-4, rtol=1e-4)
    # structure: Linear -> SiLU -> Linear from `channels` to 4 * channels, a Linear for the pooled text
    lin1, act, lin2 = m.time_mlp
    assert (lin1.in_features, lin1.out_features, lin2.out_features) == (8, 32, 32)
    assert isinstance(act, torch.nn.SiLU) and m.cond_proj.in_features == 6


def test_lowres_image_is_upsampled_bilinearly_and_concatenated_to_x_t():
    """Imagen's super-resolution conditioning (Appendix B.1, chapter 5): the low-resolution image
    is resized to the output size (bilinear, align_corners=False) and concatenated to ``x_t`` along
    the channels before the first convolution."""
    m = full_model()
    inp = full_inputs()
    with Record() as r:
        r.inputs(m.input_conv)
        run(m, inp)
    (_, _, args, _), = r.calls
    up = F.interpolate(inp["lowres"], size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(args[0], torch.cat([inp["x"], up], dim=1))
    assert m.input_conv.in_channels == 3 + 3


def test_text_tokens_get_learned_positions_then_a_layernorm_before_cross_attention():
    """Two details of the text path into cross-attention (chapter 5): the learned context positions
    (initialised to the chapter-1 sinusoids) are added to the tokens, and the result passes a
    LayerNorm (Saharia et al. 2022: Layer Normalization of the text embeddings in the attention
    layers) before it becomes keys and values. Checked against ``(c - mean) / sqrt(var + eps) * w + b``
    written out, at every cross-attention layer."""
    torch.manual_seed(0)
    fresh = UNet(UNetConfig(**FULL))
    torch.testing.assert_close(fresh.context_pos.detach(), sinusoidal_positions(8, 12))
    m = full_model()
    with torch.no_grad():
        m.context_pos.add_(torch.randn(8, 12))  # a trained-looking position table
    inp = full_inputs()
    crosses = [mod for mod in m.modules() if isinstance(mod, SpatialAttention) and mod.is_cross]
    assert crosses
    with Record() as r:
        for sa in crosses:
            r.inputs(sa.attn, tag=sa)
        run(m, inp)
    assert len(r.calls) == len(crosses)
    c = inp["context"] + m.context_pos[:5].detach()
    for sa, _, args, kwargs in r.calls:
        ln = sa.context_norm
        assert isinstance(ln, torch.nn.LayerNorm) and ln.normalized_shape == (12,)
        mu, var = c.mean(-1, keepdim=True), c.var(-1, unbiased=False, keepdim=True)
        want = (c - mu) / torch.sqrt(var + ln.eps) * ln.weight.detach() + ln.bias.detach()
        torch.testing.assert_close(args[1], want, **TOL)
        assert torch.equal(kwargs["key_mask"], inp["context_mask"])


# ---------------------------------------------------------------------------------------------
# the architecture (chapter 3, Efficient U-Net details of chapter 5)
# ---------------------------------------------------------------------------------------------
def test_skip_connections_are_scaled_by_one_over_sqrt_2():
    """Imagen's Efficient U-Net (Appendix B.1): every skip connection is multiplied by
    ``1/sqrt(2)`` before it is concatenated to the up path's features."""
    m = full_model()
    inp = full_inputs()
    levels = [mod for mod in m.up if is_level(mod)]
    with Record() as r:
        r.outputs(m.input_conv, "skip")
        for mod in m.down:
            r.outputs(mod, "skip")
        for mod in levels:
            r.inputs(mod, "up")
        run(m, inp)
    skips = [out for tag, *rest in r.calls if tag == "skip" for out in rest[1:]]
    ups = [call[2][0] for call in r.calls if call[0] == "up"]
    assert len(ups) == len(levels) == len(skips) == 4
    for h_in in ups:
        skip = skips.pop()
        torch.testing.assert_close(h_in[:, -skip.shape[1]:], skip / math.sqrt(2), **TOL)


def test_up_path_channel_counts():
    """The U-Net's up path (Ho et al. 2020, chapter 3): one more ResBlock per level than the down
    path, each reading its input concatenated with the matching skip: for channels 8, mults (1, 2)
    and (1, 2) blocks, the skips are [8, 8, 8, 16, 16] and the up ResBlocks map
    32->16, 32->16, 24->16, 24->8, 16->8."""
    m = UNet(UNetConfig(**{**SMALL, "num_res_blocks": (1, 2)}))
    down = [(lv.res.norm1.num_channels, lv.res.conv2.out_channels) for lv in m.down if is_level(lv)]
    up = [(lv.res.norm1.num_channels, lv.res.conv2.out_channels) for lv in m.up if is_level(lv)]
    assert down == [(8, 8), (8, 16), (16, 16)]
    assert up == [(32, 16), (32, 16), (24, 16), (24, 8), (16, 8)]
    assert [type(lv.res.skip).__name__ for lv in m.up if is_level(lv)] == ["Conv2d"] * 5
    assert (m.out_norm.num_channels, m.out_conv.in_channels) == (8, 8)


def test_attention_sits_at_the_attention_resolutions_and_always_in_the_middle():
    """Self-attention at ``attention_resolutions`` (DDPM: 16x16 of 32) plus always in the middle
    block; cross-attention to the text at ``cross_attention_resolutions`` (Imagen: the lower
    resolutions). Recorded by the feature-map side each attention layer sees, in call order."""
    torch.manual_seed(0)
    m = UNet(UNetConfig(image_size=16, channels=8, channel_mults=(1, 2, 2), attention_resolutions=(8,),
                        num_heads=2, context_dim=12, cross_attention_resolutions=(4, 8))).eval()
    with Record() as r:
        for mod in m.modules():
            if isinstance(mod, SpatialAttention):
                r.inputs(mod)
        with torch.no_grad():
            m(torch.randn(1, 3, 16, 16), torch.tensor([5]), context=torch.randn(1, 3, 12))
    seen = [("cross" if mod.is_cross else "self", args[0].shape[-1]) for _, mod, args, _ in r.calls]
    assert seen == [("self", 8), ("cross", 8),                    # down, 8x8
                    ("cross", 4),                                 # down, 4x4 (no self-attention there)
                    ("self", 4), ("cross", 4),                    # middle: self-attention always
                    ("cross", 4), ("cross", 4),                   # up, 4x4
                    ("self", 8), ("cross", 8), ("self", 8), ("cross", 8)]  # up, 8x8
    # without context_dim there is no cross-attention at all
    plain = UNet(UNetConfig(**SMALL))
    assert not any(mod.is_cross for mod in plain.modules() if isinstance(mod, SpatialAttention))


def test_resblock_film_time_conditioning_by_hand():
    """The ResBlock (Ho et al. 2020; FiLM / scale-shift norm of Dhariwal & Nichol 2021, used by
    Imagen): ``h = conv1(SiLU(GN(x)))``, ``(scale, shift) = Linear(SiLU(emb))``,
    ``h = GN(h) (1 + scale) + shift``, output ``skip(x) + conv2(SiLU(h))``; with
    ``scale_shift=False`` the embedding is added before the second GroupNorm."""
    for scale_shift in (True, False):
        torch.manual_seed(3)
        rb = randomise(ResBlock(4, 8, 12, groups=2, scale_shift=scale_shift))
        x, emb = torch.randn(2, 4, 5, 5), torch.randn(2, 12)
        h = rb.conv1(F.silu(F.group_norm(x, 2, rb.norm1.weight, rb.norm1.bias)))
        e = rb.emb(F.silu(emb))[..., None, None]
        if scale_shift:
            scale, shift = e[:, :8], e[:, 8:]
            h = F.group_norm(h, 2, rb.norm2.weight, rb.norm2.bias) * (1 + scale) + shift
        else:
            h = F.group_norm(h + e, 2, rb.norm2.weight, rb.norm2.bias)
        want = rb.skip(x) + rb.conv2(F.silu(h))
        with torch.no_grad():
            torch.testing.assert_close(rb(x, emb), want.detach(), **TOL)
        assert rb.emb.out_features == (16 if scale_shift else 8)


def test_spatial_self_attention_by_hand():
    """Self-attention over the H*W pixels (DDPM, chapter 3): ``x + W_o Attn(GN(x))`` with the
    pixels as tokens, written out with softmax(Q K^T / sqrt(d_h)) V per head."""
    torch.manual_seed(4)
    sa = randomise(SpatialAttention(8, num_heads=2, groups=4))
    x = torch.randn(2, 8, 3, 3)
    a = sa.attn
    tokens = F.group_norm(x, 4, sa.norm.weight, sa.norm.bias).flatten(2).transpose(1, 2)  # (B, 9, 8)
    q, k, v = (lin(tokens).reshape(2, 9, 2, 4).transpose(1, 2) for lin in (a.q_proj, a.k_proj, a.v_proj))
    heads = torch.softmax(q @ k.transpose(-1, -2) / 2.0, -1) @ v                          # sqrt(4) = 2
    out = a.out_proj(heads.transpose(1, 2).reshape(2, 9, 8)).transpose(1, 2).reshape(2, 8, 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(sa(x), (x + out).detach(), **TOL)


def test_down_and_up_sampling_by_hand():
    """DDPM's resampling (chapter 3): down is a stride-2 3x3 convolution, up is nearest-neighbour
    2x upsampling followed by a 3x3 convolution."""
    torch.manual_seed(5)
    m = UNet(UNetConfig(**SMALL))
    down = [mod for mod in m.down if not is_level(mod)]
    up = [mod for mod in m.up if not is_level(mod)]
    assert len(down) == len(up) == 1
    x = torch.randn(1, 8, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(down[0](x), F.conv2d(x, down[0].conv.weight, down[0].conv.bias, stride=2,
                                                        padding=1))
        y = torch.randn(1, 16, 8, 8)
        near = y.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
        torch.testing.assert_close(up[0](y), F.conv2d(near, up[0].conv.weight, up[0].conv.bias, padding=1))


def test_output_layer_is_zero_initialised_after_groupnorm_silu():
    """The output head ``conv(SiLU(GN(h)))`` starts with zero weights and bias (Imagen's Efficient
    U-Net and DDPM zero-initialise the last layer), so the untrained network predicts exactly 0."""
    torch.manual_seed(6)
    m = UNet(UNetConfig(**FULL))
    assert torch.all(m.out_conv.weight == 0) and torch.all(m.out_conv.bias == 0)
    assert torch.all(run(m, full_inputs()) == 0)
    m = full_model()
    inp = full_inputs()
    with Record() as r:
        r.inputs(m.out_norm)
        out = run(m, inp)
    (_, _, args, _), = r.calls
    with torch.no_grad():
        want = m.out_conv(F.silu(m.out_norm(args[0])))
    torch.testing.assert_close(out, want)


def test_heads_and_groups_rule_is_the_config_default():
    """One rule for the attention heads and GroupNorm groups of a width: 4 heads for a multiple
    of 4 (else 1), min(8, width) groups; UNetConfig uses it unless told otherwise."""
    assert [heads_and_groups(w) for w in (32, 8, 6, 4, 3)] == [(4, 8), (4, 8), (1, 6), (4, 4), (1, 3)]
    for w in (32, 8, 4, 6):
        cfg = UNetConfig(image_size=8, channels=w, channel_mults=(1, 2))
        assert (cfg.num_heads, cfg.groups) == heads_and_groups(w)
    cfg = UNetConfig(image_size=8, channels=16, channel_mults=(1,), num_heads=2, groups=4)
    assert (cfg.num_heads, cfg.groups) == (2, 4)
    m = UNet(UNetConfig(image_size=8, channels=6, channel_mults=(1,), attention_resolutions=(8,)))
    assert {mod.num_groups for mod in m.modules() if isinstance(mod, torch.nn.GroupNorm)} == {6}
    assert {mod.attn.n_heads for mod in m.modules() if isinstance(mod, SpatialAttention)} == {1}
    with pytest.raises(ValueError, match="positive int"):
        heads_and_groups(0)
