"""imagen_edu.diagrams: every picture is read from the config it draws, and carries alt text.

Each test changes a config and checks that the drawn labels follow, so a picture cannot quietly
go stale when the code changes.
"""

import dataclasses
import json
import re
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from imagen_edu import attention, configs, ddpm_images, diagrams, profiles
from imagen_edu.clip import CLIPConfig, CLIPModel
from imagen_edu.t5 import T5Config
from imagen_edu.unet import UNetConfig

matplotlib.use("Agg")
BOOK = Path(__file__).resolve().parents[1] / "book"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def text_of(diagram) -> str:
    return "\n".join(diagrams.labels(diagram.fig))


@pytest.fixture(scope="module")
def cpu_stages():
    return configs.stage_configs(profiles.get("cpu").imagen)


# ---------------------------------------------------------------------------------------------
# 1. The pre-norm block
# ---------------------------------------------------------------------------------------------
def test_block_shows_both_residual_paths_and_reads_the_block():
    """Detail: the pre-norm block, Eq. (ch1-eq-prenorm): x + Attn(LN(x)) then x + MLP(LN(x)),
    with the widths read from the module (mlp_mult changes the MLP's hidden width)."""
    d = diagrams.transformer_block(attention.TransformerBlock(24, 3, mlp_mult=2))
    text = text_of(d)
    assert "x + Attn(LN(x))" in text and "x + MLP(LN(x))" in text
    assert text.count("LayerNorm") == 2 and text.count("residual path") == 2
    assert "24 -> 48 -> 24" in text and "3 heads x 8 dims" in text
    assert "CrossAttn" not in text
    assert "x + Attn(LN(x))" in d.alt and "x + MLP(LN(x))" in d.alt and "residual" in d.alt


def test_block_with_cross_attention_has_a_third_branch():
    """Detail: a block built with cross_attention=True has x + CrossAttn(LN(x), c) between the two."""
    text = text_of(diagrams.transformer_block(attention.TransformerBlock(16, 2, cross_attention=True,
                                                                         d_context=40)))
    assert text.count("LayerNorm") == 3 and "x + CrossAttn(LN(x), c)" in text and "width 40" in text


# ---------------------------------------------------------------------------------------------
# 2. Masks
# ---------------------------------------------------------------------------------------------
def test_masks_are_causal_and_bidirectional():
    """Detail: the causal mask lets query i read keys j <= i (a lower triangle, chapter 1's
    causal_mask); the bidirectional mask lets every query read every token."""
    words = "a blue square above a red circle".split()
    d = diagrams.attention_masks(words, query=3)
    grids = [ax.images[0].get_array() for ax in d.fig.axes if ax.images]
    assert len(grids) == 2
    np.testing.assert_array_equal(np.asarray(grids[0], dtype=bool), np.tril(np.ones((7, 7), dtype=bool)))
    assert np.asarray(grids[1], dtype=bool).all()
    text = text_of(d)
    assert "'above' reads 4 of 7 tokens" in text and "'above' reads 7 of 7 tokens" in text
    assert "causal" in d.alt and "bidirectional" in d.alt and "lower triangle" in d.alt


def test_masks_refuse_a_bad_query():
    with pytest.raises(ValueError, match="query"):
        diagrams.attention_masks(["a", "b"], query=5)


# ---------------------------------------------------------------------------------------------
# 3. The encoder-decoder
# ---------------------------------------------------------------------------------------------
def test_encoder_decoder_reads_layer_counts():
    """Detail: T5's encoder (bidirectional) and decoder (causal self-attn + cross-attn to the
    encoder's final states), with the layer counts of the T5Config."""
    text = text_of(diagrams.encoder_decoder(T5Config(vocab_size=20, n_layers=3, n_decoder_layers=1)))
    assert "encoder x 3" in text and "decoder x 1" in text
    assert len(re.findall(r"encoder block \d", text)) == 3 and len(re.findall(r"decoder block \d", text)) == 1
    assert "bidirectional self-attn" in text and "causal self-attn" in text and "cross-attn" in text
    deep = text_of(diagrams.encoder_decoder(T5Config(vocab_size=20, n_layers=24, n_decoder_layers=24)))
    assert "encoder blocks 2-23" in deep and "encoder block 24" in deep
    alt = diagrams.encoder_decoder(T5Config(vocab_size=20)).alt
    assert "cross-attention" in alt and "frozen" in alt and "bidirectional" in alt and "causal" in alt


# ---------------------------------------------------------------------------------------------
# 4. The U-Net
# ---------------------------------------------------------------------------------------------
def test_unet_layout_follows_the_config():
    """Detail: each level's resolution, width and ResBlocks (num_res_blocks down, one more up:
    each up block takes one skip), read off the built U-Net."""
    cfg = UNetConfig(image_size=32, channels=8, channel_mults=(1, 2, 4), num_res_blocks=(1, 2, 3),
                     attention_resolutions=(8,))
    lay = diagrams.unet_layout(cfg)
    assert [(lv.resolution, lv.width, lv.down_blocks, lv.up_blocks) for lv in lay.levels] == [
        (32, 8, 1, 2), (16, 16, 2, 3), (8, 32, 3, 4)]
    assert [lv.self_attention for lv in lay.levels] == [False, False, True]
    assert not any(lv.cross_attention for lv in lay.levels) and not lay.pooled_text and not lay.lowres


def test_unet_labels_change_with_channel_mults_and_attention():
    """Detail: changing channel_mults and attention_resolutions changes the drawn labels."""
    a = text_of(diagrams.unet(UNetConfig(image_size=16, channels=8, channel_mults=(1, 2), attention_resolutions=(8,))))
    b = text_of(diagrams.unet(UNetConfig(image_size=16, channels=8, channel_mults=(1, 3, 3),
                                         attention_resolutions=(16,))))
    assert "8x8 px, 16 ch" in a and "4x4 px" not in a
    assert "8x8 px, 24 ch" in b and "4x4 px, 24 ch" in b
    assert "16x16 px, 8 ch\n1 ResBlock\n+ self-attn" in b and "16x16 px, 8 ch\n1 ResBlock\n+ self-attn" not in a


def test_unet_cross_attention_sits_where_the_config_says(cpu_stages):
    """Detail: cross-attention at cross_attention_resolutions only; the pooled text vector joins
    the time embedding (cond_dim); the cpu profile's base stage."""
    base = cpu_stages["base"].unet
    lay = diagrams.unet_layout(base)
    assert {lv.resolution for lv in lay.levels if lv.cross_attention} == set(base.cross_resolutions())
    assert {lv.resolution for lv in lay.levels if lv.self_attention} == set(base.attention_resolutions)
    d = diagrams.unet(cpu_stages["base"])
    text = text_of(d)
    assert "pooled text vector" in text and "text tokens" in text and "low-res image" not in text
    moved = dataclasses.replace(base, cross_attention_resolutions=(4,))
    assert {lv.resolution for lv in diagrams.unet_layout(moved).levels if lv.cross_attention} == {4}
    assert "cross-attention" in d.alt and "pooled text" in d.alt and "time embedding" in d.alt


def test_unet_super_resolution_inputs(cpu_stages):
    """Detail: a super-resolution U-Net concatenates the upsampled low-res image to x_t and
    embeds its augmentation level into the time embedding (unet.py, lowres_channels)."""
    d = diagrams.unet(cpu_stages["sr1"])
    text = text_of(d)
    assert "low-res image (3 ch), upsampled" in text and "augmentation level" in text
    assert "low-resolution image" in d.alt and "augmentation level" in d.alt


def test_unconditional_unet_of_chapter_3b():
    """Detail: chapter 3b's U-Net has no text inputs; only the time embedding enters."""
    cfg = ddpm_images.shapes_unet_config(profiles.get("cpu").diffusion)
    d = diagrams.unet(cfg)
    text = text_of(d)
    assert "timestep t" in text and "pooled text" not in text and "text tokens" not in text
    for res in (cfg.image_size // 2 ** i for i in range(len(cfg.channel_mults))):
        assert f"{res}x{res} px" in text
    assert d.alt.startswith("Diagram of the unconditional U-Net")


def test_skip_scale_is_measured_as_one_over_sqrt2():
    """Detail: Imagen's Efficient U-Net scales skip connections by 1/sqrt(2) (Saharia et al.
    2022, Appendix B.1); measured on unet.UNet itself, and the picture says so."""
    assert diagrams.skip_scale() == pytest.approx(2 ** -0.5, rel=1e-5)
    d = diagrams.unet(UNetConfig(image_size=8, channels=8, channel_mults=(1, 2)))
    assert "1/sqrt(2)" in text_of(d) and "scaled by 1/sqrt(2)" in d.alt


def test_skip_label_follows_the_measured_scale(monkeypatch):
    """Detail: the 1/sqrt(2) label appears iff the U-Net scales its skips so (unscaled skips: no label)."""
    monkeypatch.setattr(diagrams, "skip_scale", lambda: 1.0)
    d = diagrams.unet(UNetConfig(image_size=8, channels=8, channel_mults=(1, 2)))
    assert "1/sqrt(2)" not in text_of(d) and "1/sqrt(2)" not in d.alt


# ---------------------------------------------------------------------------------------------
# 5. The cascade
# ---------------------------------------------------------------------------------------------
def test_cascade_reads_the_profile(cpu_stages):
    """Detail: the cascade base 16 px -> sr1 32 px with the frozen text encoder, and
    noise-conditioning augmentation (levels U[0, aug_max_level] in training, aug_sample_level at
    sampling) into the SR stage."""
    d = diagrams.cascade(cpu_stages)
    text = text_of(d)
    base, sr = cpu_stages["base"], cpu_stages["sr1"]
    assert "16 x 16 px image" in text and "32 x 32 px image" in text and "16 -> 32 px" in text
    assert "frozen text encoder" in text and base.text_encoder in text
    assert f"U[0, {sr.aug_max_level:g}]" in text and f"a = {sr.aug_sample_level:g}" in text and "level a" in text
    assert "noise-conditioning augmentation" in text
    assert "frozen text encoder" in d.alt and "noised" in d.alt and f"{sr.aug_sample_level:g}" in d.alt
    changed = dict(cpu_stages, sr1=dataclasses.replace(sr, aug_max_level=0.3, aug_sample_level=0.05))
    t2 = text_of(diagrams.cascade(changed))
    assert "U[0, 0.3]" in t2 and "a = 0.05" in t2


def test_cascade_from_a_profile_name():
    text = text_of(diagrams.cascade("ci"))
    assert "8 x 8 px image" in text and "16 x 16 px image" in text


# ---------------------------------------------------------------------------------------------
# 6. CLIP
# ---------------------------------------------------------------------------------------------
def test_clip_positives_are_the_diagonal():
    """Detail: in CLIP's (B, B) similarity matrix the positives (InfoNCE's targets, Eq.
    ch4-eq-infonce) are the diagonal, image i with caption i; every other cell is a negative."""
    d = diagrams.clip_towers(CLIPConfig(vocab_size=19), batch_size=5)
    ax = d.fig.axes[0]
    cells = {t.get_text(): t for t in ax.texts if re.fullmatch(r"u\d\.v\d", t.get_text())}
    assert len(cells) == 25
    dark = {t.get_text() for t in cells.values() if t.get_color() == "white"}
    assert dark == {f"u{i}.v{i}" for i in range(1, 6)}
    assert "positives" in d.alt and "diagonal" in d.alt and "5 x 5" in d.alt


def test_clip_towers_read_the_config():
    """Detail: the towers' widths, layers and the shared embedding width come from the CLIPConfig."""
    a = text_of(diagrams.clip_towers(CLIPConfig(vocab_size=19, width=32, embed_dim=16, text_layers=3, text_heads=2)))
    assert "projection 32 -> 16" in a and "3 blocks, 2 heads, width 32" in a and "8 -> 16 -> 32 ch" in a
    assert "shared space of 16 dims" in a
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(vocab_size=19, image_size=16, width=16, embed_dim=8, text_layers=1))
    b = diagrams.clip_towers(model, batch_size=3)
    assert "1 block, 4 heads, width 16" in text_of(b) and "(16 x 16)" in text_of(b)
    assert "image tower" in b.alt and "text tower" in b.alt and "L2-normalised" in b.alt


def test_clip_vit_tower_reads_its_patches():
    """Detail: the ViT tower (CLIPConfig(image_tower="vit")) is drawn as (R / P)^2 patches plus a
    class token, its blocks and heads read off the built tower."""
    cfg = CLIPConfig(vocab_size=19, image_size=16, width=32, embed_dim=16, image_tower="vit", patch_size=4,
                     vision_layers=3, vision_heads=2)
    d = diagrams.clip_towers(cfg)
    text = text_of(d)
    assert "image tower: ViT" in text and "16 patches of 4x4 + class token" in text
    assert "3 blocks, 2 heads, width 32" in text and "ViT" in d.alt
    assert "CNN" not in text


def test_clip_any_other_tower_is_named():
    """A tower the picture does not know is shown by its class name and docstring, not as a CNN."""

    class PatchTower(torch.nn.Module):
        """A stand-in tower."""

    model = CLIPModel(CLIPConfig(vocab_size=19, image_size=16, width=16, embed_dim=8))
    model.image_encoder = PatchTower()
    text = text_of(diagrams.clip_towers(model))
    assert "image tower: PatchTower" in text and "A stand-in tower." in text and "CNN" not in text


# ---------------------------------------------------------------------------------------------
# The pages
# ---------------------------------------------------------------------------------------------
# what the alt text of each picture must name (its key parts)
ALT_MUST_NAME = {
    "transformer_block": ["residual", "LayerNorm", "x + Attn(LN(x))", "x + MLP(LN(x))"],
    "attention_masks": ["causal", "bidirectional"],
    "encoder_decoder": ["encoder", "decoder", "cross-attention", "frozen"],
    "unet": ["skip", "1/sqrt(2)", "timestep embedding"],
    "cascade": ["frozen text encoder", "noise-conditioning augmentation", "super-resolution"],
    "clip_towers": ["image tower", "text tower", "diagonal"],
}


@pytest.mark.parametrize("page", ["01_attention", "02b_t5_encoder", "03b_ddpm_images", "04_clip", "05_imagen_cascade"])
def test_every_diagram_cell_has_alt_text(page):
    """Every page cell that draws a diagram carries alt text in its metadata (mystnb.image.alt),
    and the page draws at least one."""
    cells = json.loads((BOOK / f"{page}.ipynb").read_text())["cells"]
    drawing = [c for c in cells if c["cell_type"] == "code" and "diagrams." in "".join(c["source"])]
    assert drawing, f"{page} draws no diagram"
    for c in drawing:
        src = "".join(c["source"])
        alt = c.get("metadata", {}).get("mystnb", {}).get("image", {}).get("alt", "")
        assert len(alt) > 40, f"{page}: a diagram cell has no descriptive alt text: {src[:80]}"
        for fn, words in ALT_MUST_NAME.items():
            if f"diagrams.{fn}(" in src:
                missing = [w for w in words if w not in alt]
                assert not missing, f"{page}: the alt text of diagrams.{fn} does not mention {missing}"


def test_drawing_leaves_the_global_seed_alone(cpu_stages):
    """Drawing a picture in a page must not change what the page's later random draws give."""
    state = torch.get_rng_state()
    diagrams.transformer_block()
    diagrams.clip_towers(CLIPConfig(vocab_size=19))
    diagrams.unet(cpu_stages["base"])
    assert torch.equal(state, torch.get_rng_state())
