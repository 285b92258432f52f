"""Tests of imagen_edu.vit, the Vision Transformer image tower of CLIP (chapter 4, "Two image towers"),
and of its use in imagen_edu.clip (``CLIPConfig(image_tower="vit")``)."""

import dataclasses
import math

import pytest
import torch
from torch import nn

from imagen_edu import clip, clip_eval, profiles
from imagen_edu.attention import TransformerBlock
from imagen_edu.data.shapes import make_batch
from imagen_edu.exercises import ch04
from imagen_edu.vit import PatchEmbedding, VisionTransformer


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    m = VisionTransformer(image_size=16, patch_size=4, width=16, n_layers=2, n_heads=2).eval()
    with torch.no_grad():  # a class token that is not zero, so that its role is visible
        m.class_token.normal_()
    return m


def images(n=3, seed=0, size=16):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_shapes(vit):
    x = images(3)
    assert vit.patch_embed.num_patches == 16
    assert vit.tokens(x).shape == (3, 17, 16)
    assert vit(x).shape == (3, 16)


def test_patch_embedding_is_a_linear_map_of_each_flattened_patch_in_raster_order():
    """Eq. (1) of Dosovitskiy et al.: token i = x_p^i E + b, the flattened i-th P x P patch times a
    (P^2 C, width) matrix, patches read row by row. The conv with kernel = stride = P computes it."""
    torch.manual_seed(1)
    pe = PatchEmbedding(image_size=12, patch_size=3, width=5)
    x = images(2, seed=1, size=12)
    got = pe(x)                                                           # (2, 16, 5)
    E = pe.proj.weight.reshape(5, -1)                                     # (width, C P P)
    for r in range(4):
        for c in range(4):
            patch = x[:, :, 3 * r:3 * r + 3, 3 * c:3 * c + 3].reshape(2, -1)  # (2, C P P), C-major like the conv
            torch.testing.assert_close(got[:, 4 * r + c], patch @ E.T + pe.proj.bias)


def test_the_class_token_is_prepended_and_positions_added(vit):
    """Eq. (1) of ViT: z_0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos, the class token at index 0."""
    x = images(2)
    z = vit.tokens(x)
    torch.testing.assert_close(z[:, 0], (vit.class_token[0, 0] + vit.pos.weight[0]).expand(2, -1))
    torch.testing.assert_close(z[:, 1:], vit.patch_embed(x) + vit.pos.weight[1:])
    torch.testing.assert_close(vit.tokens(x, positions=False)[:, 1:], vit.patch_embed(x))


def test_the_output_is_the_class_tokens_final_state(vit):
    """The tower reads token 0 (the class token) after the final LayerNorm (Eq. 4 of ViT): the whole
    Transformer output at index 0, and a change of the class token parameter changes it."""
    x = images(2)
    torch.testing.assert_close(vit(x), vit.transformer(vit.tokens(x))[:, 0])
    other = VisionTransformer(16, 4, 16, 2, 2).eval()
    other.load_state_dict(vit.state_dict())
    with torch.no_grad():
        other.class_token.add_(torch.randn(16, generator=torch.Generator().manual_seed(4)))
    assert not torch.allclose(other(x), vit(x), atol=1e-4)


def test_the_class_token_reads_every_patch(vit):
    """The class token belongs to no patch: it gathers the image through attention, so changing the
    pixels of any single patch (here the last one, far from token 0) changes the output."""
    x = images(1)
    for r, c in ((0, 0), (3, 3), (1, 2)):
        y = x.clone()
        y[:, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4] = -y[:, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4]
        assert (vit(y) - vit(x)).abs().max() > 1e-3, (r, c)


def permute_patches(x, perm, p=4):
    """Move the P x P patches of x (B, C, R, R) to the raster positions given by perm."""
    g = x.shape[-1] // p
    tiles = x.unfold(2, p, p).unfold(3, p, p)                              # (B, C, g, g, p, p)
    tiles = tiles.reshape(*x.shape[:2], g * g, p, p)[:, :, perm]
    return tiles.reshape(*x.shape[:2], g, g, p, p).permute(0, 1, 2, 4, 3, 5).reshape(x.shape)


def test_without_positions_the_patches_are_a_set(vit):
    """Learned position embeddings (Eq. 1 of ViT) are what tell the tower where a patch is:
    attention is permutation-equivariant, so without positions shuffling the patches leaves the
    class token's state unchanged, and with them it changes it."""
    x = images(2)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(3))
    y = permute_patches(x, perm)
    torch.testing.assert_close(vit.patch_embed(y), vit.patch_embed(x)[:, perm])   # the helper moves patches
    torch.testing.assert_close(vit(y, positions=False), vit(x, positions=False), atol=1e-5, rtol=1e-4)
    assert (vit(y) - vit(x)).abs().max() > 1e-3


def test_blocks_are_chapter_ones_pre_norm_blocks(vit):
    """The ViT reuses imagen_edu.attention's Transformer (Eq. 2-3 of ViT: x + MSA(LN(x)), x + MLP(LN(x)))."""
    assert all(isinstance(b, TransformerBlock) for b in vit.transformer.blocks)
    assert len(vit.transformer.blocks) == 2 and isinstance(vit.transformer.norm, nn.LayerNorm)


def copy_into_torchvision(ours: VisionTransformer, tv) -> None:
    """Copy our weights into torchvision's VisionTransformer (an independent implementation)."""
    with torch.no_grad():
        tv.conv_proj.load_state_dict(ours.patch_embed.proj.state_dict())
        tv.class_token.copy_(ours.class_token)
        tv.encoder.pos_embedding.copy_(ours.pos.weight[None])
        for blk, layer in zip(ours.transformer.blocks, tv.encoder.layers):
            layer.ln_1.load_state_dict(blk.norm1.state_dict())
            layer.ln_2.load_state_dict(blk.norm2.state_dict())
            a, sa = blk.attn, layer.self_attention
            sa.in_proj_weight.copy_(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]))
            sa.in_proj_bias.copy_(torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]))
            sa.out_proj.load_state_dict(a.out_proj.state_dict())
            layer.mlp[0].load_state_dict(blk.mlp.net[0].state_dict())
            layer.mlp[3].load_state_dict(blk.mlp.net[2].state_dict())
        tv.encoder.ln.load_state_dict(ours.transformer.norm.state_dict())


def test_golden_against_torchvision_vision_transformer():
    """The whole tower (Dosovitskiy et al. Eq. 1-4: conv patch embedding, class token first, learned
    positions, pre-norm blocks, final LayerNorm, token 0 read) against
    torchvision.models.VisionTransformer with the same weights: the same class-token state."""
    tvm = pytest.importorskip("torchvision.models.vision_transformer")
    torch.manual_seed(2)
    ours = VisionTransformer(image_size=16, patch_size=4, width=32, n_layers=3, n_heads=4).eval()
    with torch.no_grad():
        ours.class_token.normal_()
    tv = tvm.VisionTransformer(image_size=16, patch_size=4, num_layers=3, num_heads=4, hidden_dim=32,
                               mlp_dim=128, norm_layer=nn.LayerNorm).eval()
    tv.heads = nn.Identity()
    copy_into_torchvision(ours, tv)
    x = images(4, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------ in CLIP
def vit_config(**kw):
    return clip.CLIPConfig(vocab_size=19, image_size=16, width=16, embed_dim=8, text_layers=1, text_heads=2,
                           image_tower="vit", patch_size=4, vision_layers=1, vision_heads=2, **kw)


def test_clip_builds_the_chosen_tower():
    torch.manual_seed(0)
    m = clip.CLIPModel(vit_config()).eval()
    assert isinstance(m.image_encoder, VisionTransformer)
    assert isinstance(clip.CLIPModel(dataclasses.replace(vit_config(), image_tower="cnn")).image_encoder,
                      clip.ImageEncoder)
    x, caps = make_batch(4, "test", 16, seed=0)
    u = m.encode_image(x)
    assert u.shape == (4, 8)
    torch.testing.assert_close(u.norm(dim=1), torch.ones(4))
    assert m(x, caps).shape == (4, 4) and m.loss(x, caps).dim() == 0


def test_config_validation_of_the_towers():
    with pytest.raises(ValueError, match="image_tower"):
        clip.CLIPConfig(vocab_size=19, image_tower="resnet")
    with pytest.raises(ValueError, match="patch_size"):
        clip.CLIPConfig(vocab_size=19, image_size=16, image_tower="vit", patch_size=5)
    with pytest.raises(ValueError, match="vision_heads"):
        clip.CLIPConfig(vocab_size=19, image_size=16, width=16, image_tower="vit", vision_heads=3)
    # a ViT needs no multiple of 8 (the CNN does)
    assert clip.CLIPConfig(vocab_size=19, image_size=12, width=16, image_tower="vit", patch_size=4).image_size == 12
    with pytest.raises(ValueError, match="multiple of 8"):
        clip.CLIPConfig(vocab_size=19, image_size=12)


def test_old_configs_without_a_tower_are_the_cnn():
    """A checkpoint written before the ViT existed has no image_tower in its config: it is a CNN."""
    cfg = dict(vocab_size=19, image_size=16, width=16, embed_dim=8, text_layers=1, text_heads=2)
    assert clip.CLIPConfig(**cfg).image_tower == "cnn"


def test_vit_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    m = clip.CLIPModel(vit_config()).eval()
    path = clip.save_model(tmp_path / "vit.safetensors", m)
    back, meta = clip.load_model(path)
    assert meta["config"]["image_tower"] == "vit"
    x, _ = make_batch(3, "test", 16, seed=1)
    torch.testing.assert_close(back.encode_image(x), m.encode_image(x))


def test_tower_config_matches_the_text_tower_and_the_cnn_grid():
    s = profiles.get("cpu").clip
    cfg = clip.tower_config(s, 19, "vit")
    assert (cfg.patch_size, cfg.vision_layers, cfg.vision_heads) == (s.image_size // 8, s.text_layers, s.text_heads)
    assert (cfg.image_size // cfg.patch_size) ** 2 == 64


def test_contrastive_training_of_the_vit_reduces_the_loss():
    """The same contrastive recipe (clip.train_clip) trains the ViT tower: the loss falls."""
    s = dataclasses.replace(profiles.get("ci").clip, steps=40)
    res = clip.train_clip(s, seed=0, progress=False, image_tower="vit")
    assert isinstance(res.model.image_encoder, VisionTransformer)
    assert res.settings["image_tower"] == "vit" and len(res.losses) == 40
    assert all(math.isfinite(v) for v in res.losses)
    first, last = sum(res.losses[:5]) / 5, sum(res.losses[-5:]) / 5
    assert last < first - 0.3


def test_compare_towers_measures_both_on_the_same_budget():
    s = dataclasses.replace(profiles.get("ci").clip, steps=5, n_eval=10, n_zero_shot=18)
    rows = clip_eval.compare_towers(s)
    assert set(rows) == {"cnn", "vit"}
    for row in rows.values():
        assert row["steps"] == 5
        assert set(clip_eval.TOWER_METRICS) <= set(row)
        assert all(0 <= row[k] <= 1 for k in clip_eval.TOWER_METRICS)
    assert rows["cnn"]["n_params"] - rows["cnn"]["image_params"] == rows["vit"]["n_params"] - rows["vit"]["image_params"]


def test_patchify_exercise_passes_the_solution_and_fails_wrong_orders():
    """The chapter-4 exercise on the ViT's patches (Eq. ch4-eq-vit, patch embedding): the check
    accepts patches in raster order flattened channel first, and rejects a wrong flattening order."""
    assert ch04.check_patchify(ch04.solution_patchify, verbose=False)
    wrong = lambda x, p: x.unfold(2, p, p).unfold(3, p, p).reshape(x.shape[0], -1, x.shape[1] * p * p)  # noqa: E731
    assert not ch04.check_patchify(wrong, verbose=False)
    columns_first = lambda x, p: ch04.solution_patchify(x.transpose(2, 3), p)  # noqa: E731
    assert not ch04.check_patchify(columns_first, verbose=False)
