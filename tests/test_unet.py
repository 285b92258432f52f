"""Tests for imagen_edu.unet: shapes, zero-initialised output, conditioning paths, errors, the
timestep embedding against diffusers, and the fused attention path against the explicit one on
random and shipped U-Nets. Per-detail tests are in ``test_unet_details.py``."""

import math

import pytest
import torch

from imagen_edu import checkpoints
from imagen_edu.attention import MultiHeadAttention
from imagen_edu.unet import SpatialAttention, UNet, UNetConfig, load_unet, save_unet, timestep_embedding


# small tensors: one intra-op thread is faster (and steadier on a shared machine)
pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(image_size=16, channels=8, channel_mults=(1, 2), attention_resolutions=(8,), num_heads=2)


def randomise_output(model):
    """Give the zero-initialised output layer random weights (to test what flows through it)."""
    torch.nn.init.normal_(model.out_conv.weight, std=0.1)
    torch.nn.init.normal_(model.out_conv.bias, std=0.1)
    return model


def test_timestep_embedding():
    e = timestep_embedding(torch.tensor([0, 1, 500]), 16)
    assert e.shape == (3, 16)
    torch.testing.assert_close(e[0], torch.cat([torch.ones(8), torch.zeros(8)]))
    # the first frequency is 1: cos(t), sin(t)
    assert math.isclose(e[1, 0].item(), math.cos(1.0), rel_tol=1e-6)
    assert math.isclose(e[1, 8].item(), math.sin(1.0), rel_tol=1e-6)
    with pytest.raises(ValueError, match="even"):
        timestep_embedding(torch.tensor([1]), 7)


def test_timestep_embedding_matches_diffusers():
    """Golden: our DDPM timestep embedding is diffusers' ``get_timestep_embedding`` with
    ``flip_sin_to_cos=True`` (cosines first) and ``downscale_freq_shift=0`` (w_i = 10000^(-i/(d/2))),
    for integer steps and for the fractional noise levels (1000 s) of chapter 5."""
    emb = pytest.importorskip("diffusers.models.embeddings")
    for t in (torch.tensor([0, 1, 17, 500, 999]), torch.tensor([0.0, 12.5, 370.0, 1000.0])):
        for dim in (2, 8, 32, 128):
            ref = emb.get_timestep_embedding(t, dim, flip_sin_to_cos=True, downscale_freq_shift=0)
            torch.testing.assert_close(timestep_embedding(t, dim), ref, atol=1e-6, rtol=1e-6)
    # diffusers' default (sines first, shift 1) is a different embedding: the golden can fail
    t = torch.tensor([3, 400])
    assert not torch.allclose(timestep_embedding(t, 16), emb.get_timestep_embedding(t, 16), atol=1e-3)


def set_flash(model, on: bool):
    """Switch every attention layer of ``model`` between torch's fused kernel and the explicit path."""
    n = 0
    for mod in model.modules():
        if isinstance(mod, MultiHeadAttention):
            mod.flash, n = on, n + 1
    assert n, "the model has no attention layer"


def test_unet_fused_attention_equals_explicit_path():
    """A U-Net with self- and cross-attention (text mask with padding, and a caption with no real
    token) gives the same output through torch's fused attention and the explicit softmax path."""
    torch.manual_seed(0)
    m = randomise_output(UNet(UNetConfig(**SMALL, cond_dim=6, context_dim=12, cross_attention_resolutions=(8, 16),
                                         context_positions=5))).eval()
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([3, 400, 999])
    ctx, cond = torch.randn(3, 5, 12), torch.randn(3, 6)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    outs = []
    for on in (True, False):
        set_flash(m, on)
        with torch.no_grad():
            outs.append(m(x, t, cond=cond, context=ctx, context_mask=mask))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    assert outs[0].abs().max() > 1e-2  # a real output, not the zero-initialised one


@pytest.mark.parametrize("name", ["imagen_base", "imagen_sr1"])
def test_shipped_unets_give_the_same_output_on_both_attention_paths(name):
    """The shipped stages load with their state-dict keys unchanged and give the same output on
    torch's fused attention kernel (the default) and on the explicit path, to 1e-5."""
    imagen = pytest.importorskip("imagen_edu.imagen")
    path = checkpoints.checkpoint_dir() / f"{name}.safetensors"
    if not path.is_file():
        pytest.skip(f"no shipped checkpoint {path}")
    tensors, _ = checkpoints.load(path)
    stage = imagen.load_stage(path)
    assert set(stage.state_dict()) == set(tensors)
    unet, c = stage.unet, stage.unet.config
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 3, c.image_size, c.image_size, generator=g), torch.tensor([10, 700])
    kw = dict(cond=torch.randn(2, c.cond_dim, generator=g), context=torch.randn(2, 6, c.context_dim, generator=g),
              context_mask=torch.tensor([[1] * 6, [1] * 2 + [0] * 4], dtype=torch.bool))
    if c.lowres_channels:
        kw.update(lowres=torch.rand(2, 3, c.image_size // 2, c.image_size // 2, generator=g) * 2 - 1,
                  lowres_noise_level=torch.tensor([0.0, 0.3]))
    outs = []
    for on in (True, False):
        set_flash(unet, on)
        with torch.no_grad():
            outs.append(unet(x, t, **kw))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)


def test_output_shape_and_zero_init():
    torch.manual_seed(0)
    for cfg in (UNetConfig(**SMALL), UNetConfig(**{**SMALL, "num_res_blocks": (1, 2), "scale_shift": False}),
                UNetConfig(image_size=32, channels=8, channel_mults=(1, 2, 2))):
        m = UNet(cfg)
        x = torch.randn(2, 3, cfg.image_size, cfg.image_size)
        out = m(x, torch.tensor([3, 7]))
        assert out.shape == x.shape
        assert torch.all(out == 0), "the output convolution starts at zero"


def test_time_conditioning_changes_output():
    torch.manual_seed(0)
    m = randomise_output(UNet(UNetConfig(**SMALL)))
    x = torch.randn(1, 3, 16, 16).repeat(2, 1, 1, 1)
    out = m(x, torch.tensor([0, 900]))
    assert not torch.allclose(out[0], out[1], atol=1e-4)
    torch.testing.assert_close(m(x, torch.tensor([5, 5]))[0], m(x, torch.tensor([5, 5]))[1])


def test_gradients_flow_to_every_parameter():
    torch.manual_seed(0)
    m = UNet(UNetConfig(**SMALL))
    x = torch.randn(2, 3, 16, 16)
    # with the zero output layer, only the output layer gets gradients at first ...
    m(x, torch.tensor([1, 2])).pow(2).sum().backward()
    m.zero_grad()
    (m(x, torch.tensor([1, 2])) - x).pow(2).mean().backward()
    assert m.out_conv.weight.grad.abs().sum() > 0
    # ... and once it is non-zero, everything learns
    randomise_output(m)
    m.zero_grad()
    (m(x, torch.tensor([1, 2])) - x).pow(2).mean().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, f"no gradient reaches {missing}"


def test_attention_present():
    m = UNet(UNetConfig(**SMALL))
    n_attn = sum(1 for mod in m.modules() if isinstance(mod, SpatialAttention))
    assert n_attn >= 2  # at 8x8 in the encoder, middle and decoder
    assert any(isinstance(mod, MultiHeadAttention) for mod in m.modules())


def test_pooled_cond_and_cross_attention_with_mask():
    torch.manual_seed(0)
    cfg = UNetConfig(**SMALL, cond_dim=6, context_dim=12)
    m = randomise_output(UNet(cfg))
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 10])
    cond = torch.randn(2, 6)
    ctx = torch.randn(2, 5, 12)
    mask = torch.tensor([[True, True, True, False, False]] * 2)
    out = m(x, t, cond=cond, context=ctx, context_mask=mask)
    assert out.shape == x.shape
    # masked tokens are ignored: changing them changes nothing
    ctx2 = ctx.clone()
    ctx2[:, 3:] = torch.randn(2, 2, 12) * 10
    torch.testing.assert_close(m(x, t, cond=cond, context=ctx2, context_mask=mask), out)
    # unmasked tokens matter, and so does the pooled vector
    ctx3 = ctx.clone()
    ctx3[:, 0] = torch.randn(2, 12)  # (a constant shift would be removed by the LayerNorm)
    assert not torch.allclose(m(x, t, cond=cond, context=ctx3, context_mask=mask), out, atol=1e-5)
    assert not torch.allclose(m(x, t, cond=cond + 1, context=ctx, context_mask=mask), out, atol=1e-5)
    with pytest.raises(ValueError, match="cond"):
        m(x, t, context=ctx)
    with pytest.raises(ValueError, match="context"):
        m(x, t, cond=cond)
    with pytest.raises(ValueError, match="context_mask"):
        m(x, t, cond=cond, context=ctx, context_mask=mask.float())


def test_lowres_super_resolution_inputs():
    torch.manual_seed(0)
    m = randomise_output(UNet(UNetConfig(**SMALL, lowres_channels=3)))
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([1, 2])
    low = torch.randn(2, 3, 8, 8)
    out = m(x, t, lowres=low, lowres_noise_level=torch.tensor([0.0, 0.0]))
    assert out.shape == x.shape
    assert not torch.allclose(m(x, t, lowres=low, lowres_noise_level=torch.tensor([0.5, 0.5])), out, atol=1e-5)
    assert not torch.allclose(m(x, t, lowres=-low), out, atol=1e-5)
    with pytest.raises(ValueError, match="lowres"):
        m(x, t)


def test_bad_shapes_and_configs_raise():
    m = UNet(UNetConfig(**SMALL))
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 16\)"):
        m(torch.randn(2, 3, 32, 32), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 16\)"):
        m(torch.randn(2, 1, 16, 16), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        m(torch.randn(3, 16, 16), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"t must be \(B,\)"):
        m(torch.randn(2, 3, 16, 16), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="no cross-attention"):
        m(torch.randn(2, 3, 16, 16), torch.tensor([1, 2]), context=torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="divisible"):
        UNetConfig(image_size=20, channel_mults=(1, 2, 2, 2))
    with pytest.raises(ValueError, match="one entry per level"):
        UNetConfig(**{**SMALL, "num_res_blocks": (1, 1, 1)})
    with pytest.raises(ValueError, match="divisible by groups"):
        UNetConfig(channels=10, groups=8)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    m = randomise_output(UNet(UNetConfig(**SMALL)))
    p = save_unet(m, tmp_path / "u.safetensors", extra={"schedule": "cosine"})
    m2, extra = load_unet(p)
    assert extra == {"schedule": "cosine"} and m2.config == m.config
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([4])
    m.eval()
    torch.testing.assert_close(m2(x, t), m(x, t))
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError, match="no checkpoint"):
        load_unet(tmp_path / "missing.safetensors")


def test_context_positions_make_cross_attention_order_aware():
    """Cross-attention alone is blind to word order (a permutation of the tokens gives the same
    output); with ``context_positions`` the order of the tokens matters (chapter 5: which object
    comes first in "A left of B")."""
    torch.manual_seed(0)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 50])
    ctx = torch.randn(2, 5, 12)
    perm = torch.tensor([4, 2, 0, 1, 3])
    outs = {}
    for k in (0, 8):
        torch.manual_seed(1)
        m = UNet(UNetConfig(**SMALL, context_dim=12, cross_attention_resolutions=(8,), context_positions=k)).eval()
        randomise_output(m)
        with torch.no_grad():
            outs[k] = (m(x, t, context=ctx), m(x, t, context=ctx[:, perm]))
    torch.testing.assert_close(outs[0][0], outs[0][1], atol=1e-5, rtol=1e-5)
    assert (outs[8][0] - outs[8][1]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="context_positions"):
        UNetConfig(**SMALL, context_positions=4)  # no context_dim
    with pytest.raises(ValueError, match="position embeddings for 8"):
        m(x, t, context=torch.randn(2, 9, 12))
