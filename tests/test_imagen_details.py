"""Imagen details of chapter 5, one test each: every docstring names the detail it guards, and the
test fails when that detail is changed (guidance, text dropout, pooling, noise-conditioning
augmentation, thresholding inside the cascade, the SR stage's input)."""

import pytest
import torch
import torch.nn.functional as F

from imagen_edu import configs, stage as stage_mod
from imagen_edu.cascade import ImagenCascade
from imagen_edu.diffusion import GaussianDiffusion
from imagen_edu.guidance import AttentionPool, GuidedDenoiser, guide, masked_mean
from imagen_edu.text_encoders import get as get_text_encoder
from imagen_edu.noise_augmentation import aug_alpha_bar, augment_lowres
from imagen_edu.stage import ImagenStage
from imagen_edu.stage_training import StageLoss, stage_batches


@pytest.fixture(scope="module")
def encoder():
    return get_text_encoder(configs.stage_config("base", "ci").text_encoder)


@pytest.fixture(scope="module")
def stages(encoder):
    torch.manual_seed(0)
    out = {}
    for name in ("base", "sr1"):
        st = ImagenStage(configs.stage_config(name, "ci", text_dim=encoder.dim)).eval()
        with torch.no_grad():  # the output layer starts at zero: perturb so outputs depend on the input
            for p in st.parameters():
                p.add_(0.05 * torch.randn_like(p))
        out[name] = st
    return out


def unet_inputs(stage, monkeypatch) -> dict:
    """The keyword inputs of the stage's U-Net at its latest call (filled in as it runs)."""
    seen = {}
    real = stage.unet.forward

    def spy(x, t, **kw):
        seen.update(kw)
        return real(x, t, **kw)

    monkeypatch.setattr(stage.unet, "forward", spy)
    return seen


def test_guide_is_uncond_plus_w_times_the_difference():
    """Classifier-free guidance, Eq. (ch5-eq-cfg): ``uncond + w (cond - uncond)``; ``w = 1`` is the
    conditional prediction, ``w = 0`` the unconditional one."""
    g = torch.Generator().manual_seed(0)
    c, u = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    torch.testing.assert_close(guide(c, u, 1.0), c)
    torch.testing.assert_close(guide(c, u, 0.0), u)
    for w in (0.5, 3.0, 8.0):
        torch.testing.assert_close(guide(c, u, w), u + w * (c - u))


def test_guided_denoiser_pairs_text_with_cond_and_null_with_uncond(stages, encoder):
    """Classifier-free guidance in the sampler: GuidedDenoiser's conditional half reads the text and
    its unconditional half the learned null text, combined as ``uncond + w (cond - uncond)``."""
    st = stages["base"]
    emb, mask = encoder.encode(["a red circle", "a blue square left of a green circle"])
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10, 70])
    cond = st(x, t, text_emb=emb, text_mask=mask)
    uncond = st(x, t, text_emb=emb, text_mask=mask, drop=torch.ones(2, dtype=torch.bool))
    for w in (0.0, 1.0, 2.5):
        got = GuidedDenoiser(st, emb, mask, w, skip_uncond=False)(x, t)
        torch.testing.assert_close(got, uncond + w * (cond - uncond), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_guidance_in_output_space_equals_guidance_in_eps_space(objective):
    """Guidance acts on the network output (eps, x0 or v): since eps is an affine function of the
    output for fixed ``x_t, t`` and guidance an affine combination, the guided output's eps equals
    the guided eps (Saharia et al.'s formula holds whatever the objective)."""
    diff = GaussianDiffusion("cosine", 100, objective=objective)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 3, 8, 8, generator=g)
    t = torch.tensor([5, 50, 95])
    oc, ou = torch.randn(3, 3, 8, 8, generator=g), torch.randn(3, 3, 8, 8, generator=g)

    def eps_of(out):
        return diff.model_predictions(lambda *_: out, x, t, clip_denoised=False)["pred_eps"]

    w = 4.0
    torch.testing.assert_close(eps_of(guide(oc, ou, w)), guide(eps_of(oc), eps_of(ou), w), atol=1e-4, rtol=1e-4)


def test_masked_mean_ignores_padding():
    """Masked-mean pooling (Saharia et al. 2022, Appendix B): the pooled text vector is the mean of
    the real tokens only; values at padded positions change nothing."""
    g = torch.Generator().manual_seed(3)
    emb = torch.randn(2, 5, 4, generator=g)
    mask = torch.tensor([[True, True, False, False, False], [True, True, True, True, True]])
    want = torch.stack([emb[0, :2].mean(0), emb[1].mean(0)])
    torch.testing.assert_close(masked_mean(emb, mask), want)
    junk = emb.clone()
    junk[0, 2:] = 100.0
    torch.testing.assert_close(masked_mean(junk, mask), want)


def test_attention_pool_is_one_learned_query_over_the_real_tokens():
    """Attention pooling (Saharia et al. 2022, Appendix A.13a): per head, the softmax of the learned
    query against the real tokens' keys weights their values, written out here from the weights;
    padded positions change nothing, a real token does."""
    torch.manual_seed(0)
    pool = AttentionPool(8, n_heads=2)
    g = torch.Generator().manual_seed(4)
    emb = torch.randn(2, 5, 8, generator=g)
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    a = pool.attn
    q = a.q_proj(pool.query).view(2, 4)
    want = []
    for b in range(2):
        x = emb[b, mask[b]]
        k, v = a.k_proj(x).view(-1, 2, 4), a.v_proj(x).view(-1, 2, 4)
        w = torch.softmax(torch.einsum("hd,thd->ht", q, k) / 2.0, dim=-1)
        want.append(a.out_proj(torch.einsum("ht,thd->hd", w, v).reshape(8)))
    got = pool(emb, mask)
    torch.testing.assert_close(got, torch.stack(want), atol=1e-5, rtol=1e-5)
    junk = emb.clone()
    junk[0, 3:] = 50.0
    torch.testing.assert_close(pool(junk, mask), got)
    junk[0, 0] += 1.0
    assert not torch.allclose(pool(junk, mask)[0], got[0])
    with pytest.raises(ValueError, match="at least one real token"):
        pool(emb, torch.zeros(2, 5, dtype=torch.bool))


def test_stage_pooling_mean_or_attention():
    """``StageConfig.pooling``: ``"mean"`` (the default) gives :func:`masked_mean` and no extra
    weights; ``"attention"`` gives the stage an :class:`AttentionPool` whose output is the pooled
    vector, and it is saved and loaded with the stage; another value is refused."""
    cfg = configs.stage_config("base", "ci", text_dim=8)
    assert cfg.pooling == "mean"
    g = torch.Generator().manual_seed(5)
    emb, mask = torch.randn(3, 4, 8, generator=g), torch.tensor([[True, True, False, False]] * 3)
    mean_stage = ImagenStage(cfg)
    assert mean_stage.pool is None
    torch.testing.assert_close(mean_stage.condition(emb, mask)[2], masked_mean(emb, mask))
    torch.manual_seed(1)
    att = ImagenStage(cfg.replace(pooling="attention"))
    assert any(n.startswith("pool.") for n, _ in att.named_parameters())
    pooled = att.condition(emb, mask)[2]
    torch.testing.assert_close(pooled, att.pool(emb, mask))
    assert not torch.allclose(pooled, masked_mean(emb, mask))
    with pytest.raises(ValueError, match="pooling"):
        cfg.replace(pooling="max")


def test_attention_pooled_stage_round_trips(tmp_path):
    """A stage with attention pooling is saved with its pool's weights and its config, and loads back
    to the same pooled vector."""
    torch.manual_seed(2)
    st = ImagenStage(configs.stage_config("base", "ci", text_dim=8).replace(pooling="attention")).eval()
    path = stage_mod.save_stage(st, tmp_path / "att.safetensors")
    back = stage_mod.load_stage(path)
    assert back.config.pooling == "attention"
    emb, mask = torch.randn(2, 3, 8), torch.ones(2, 3, dtype=torch.bool)
    torch.testing.assert_close(back.condition(emb, mask)[2], st.condition(emb, mask)[2])


def test_training_batches_drop_text_at_cond_drop_prob():
    """Text dropout for classifier-free guidance: the trainer's batches mark each row for the null
    text with probability ``cond_drop_prob`` (here 0.3, within 4 standard deviations)."""
    cfg = configs.stage_config("base", "ci", text_dim=8).replace(batch_size=4000, cond_drop_prob=0.3)
    highs = torch.zeros(10, 3, 8, 8)
    batch = stage_batches(cfg, highs, torch.zeros(10, dtype=torch.long))(0, 0, 1, torch.Generator().manual_seed(0))
    assert batch["drop"].dtype == torch.bool
    assert abs(batch["drop"].float().mean().item() - 0.3) < 4 * (0.3 * 0.7 / 4000) ** 0.5


def test_dropped_rows_train_on_the_learned_null_text(stages, encoder, monkeypatch):
    """Text dropout in the stage loss: a row marked ``drop`` reaches the U-Net as the learned null
    token (the only unmasked position) and the null pooled vector; the other rows keep their text."""
    st = stages["base"]
    seen = unet_inputs(st, monkeypatch)
    emb, mask = encoder.encode(["a red circle", "a blue square left of a green circle"])
    loss = StageLoss(st, emb, mask)
    drop = torch.tensor([True, False])
    loss({"x0": torch.zeros(2, 3, 8, 8), "caption_ids": torch.tensor([0, 1]), "drop": drop,
          "t": torch.tensor([3, 40]), "noise": torch.randn(2, 3, 8, 8)})
    torch.testing.assert_close(seen["context"][0, 0], st.null_token.detach())
    assert seen["context_mask"][0].tolist() == [True] + [False] * (mask.shape[1] - 1)
    torch.testing.assert_close(seen["cond"][0], st.null_pooled.detach())
    torch.testing.assert_close(seen["context"][1], emb[1])
    torch.testing.assert_close(seen["cond"][1], masked_mean(emb, mask)[1])


def test_aug_alpha_bar_endpoints():
    """Noise-conditioning augmentation's schedule: ``abar(0) = 1`` (level 0 leaves the image as it
    is) and ``abar(1) ~ 0`` (level 1 is pure noise), decreasing in between."""
    ab = aug_alpha_bar(torch.tensor([0.0, 0.5, 1.0]))
    assert ab[0].item() == pytest.approx(1.0, abs=1e-6) and ab[2].item() < 1e-3
    assert 0.0 < ab[1].item() < 1.0
    low = torch.rand(2, 3, 4, 4) * 2 - 1
    torch.testing.assert_close(augment_lowres(low, 0.0), low)


def test_training_augmentation_levels_are_uniform_up_to_aug_max_level():
    """Noise-conditioning augmentation in training: levels ``a ~ U[0, aug_max_level]``, one per row
    (here aug_max_level = 0.4: all in range, mean 0.2, spread over the whole range)."""
    cfg = configs.stage_config("sr1", "ci", text_dim=8).replace(batch_size=4000, aug_max_level=0.4)
    highs, lows = torch.zeros(10, 3, 16, 16), torch.zeros(10, 3, 8, 8)
    b = stage_batches(cfg, highs, torch.zeros(10, dtype=torch.long), lows)(0, 0, 1, torch.Generator().manual_seed(0))
    a = b["aug_level"]
    assert a.shape == (4000,) and a.min() >= 0 and a.max() <= 0.4
    assert abs(a.mean().item() - 0.2) < 0.01 and a.min() < 0.01 and a.max() > 0.39


def test_stage_loss_gives_the_network_the_augmented_image_and_its_level(stages, encoder, monkeypatch):
    """Noise-conditioning augmentation: in training the SR U-Net sees the low-res image noised to
    the row's level, ``sqrt(abar(a)) x + sqrt(1 - abar(a)) eps``, and is told ``a``."""
    st = stages["sr1"]
    seen = unet_inputs(st, monkeypatch)
    emb, mask = encoder.encode(["a red circle", "a blue square"])
    low, aug_noise = torch.rand(2, 3, 8, 8) * 2 - 1, torch.randn(2, 3, 8, 8)
    level = torch.tensor([0.1, 0.45])
    StageLoss(st, emb, mask)({"x0": torch.zeros(2, 3, 16, 16), "caption_ids": torch.tensor([0, 1]),
                              "drop": torch.zeros(2, dtype=torch.bool), "t": torch.tensor([3, 40]),
                              "noise": torch.randn(2, 3, 16, 16), "lowres": low, "aug_level": level,
                              "aug_noise": aug_noise})
    ab = aug_alpha_bar(level).float().reshape(2, 1, 1, 1)
    torch.testing.assert_close(seen["lowres"], ab.sqrt() * low + (1 - ab).sqrt() * aug_noise)
    torch.testing.assert_close(seen["lowres_noise_level"], level)


def test_sampling_uses_the_fixed_augmentation_level(stages, encoder, monkeypatch):
    """Noise-conditioning augmentation at sampling: every step of an SR stage is told the one fixed
    level (``aug_sample_level`` by default), and the cascade passes it on."""
    st = stages["sr1"]
    levels = []
    real = st.unet.forward

    def spy(x, t, **kw):
        levels.append(kw["lowres_noise_level"].clone())
        return real(x, t, **kw)

    monkeypatch.setattr(st.unet, "forward", spy)
    emb, mask = encoder.encode(["a red circle"])
    st.sample(emb, mask, lowres=torch.zeros(1, 3, 8, 8), steps=3, generator=torch.Generator().manual_seed(0))
    assert len(levels) == 3 and all(torch.equal(v, torch.full((1,), st.config.aug_sample_level)) for v in levels)
    levels.clear()
    ImagenCascade(encoder, [stages["base"], st]).sample("a red circle", steps=2, aug_level=0.3, progress=False)
    assert len(levels) == 2 and all(torch.equal(v, torch.full((1,), 0.3)) for v in levels)


@pytest.mark.parametrize("threshold, calls", [("dynamic", 3), ("static", 0)])
def test_cascade_sampling_thresholds_dynamically(stages, encoder, monkeypatch, threshold, calls):
    """Dynamic thresholding (Saharia et al. 2022, Section 2.3) inside the cascade: with
    ``threshold="dynamic"`` every sampling step of every stage passes the predicted ``x0`` through
    :func:`imagen_edu.thresholding.dynamic_threshold`; with ``"static"`` it does not."""
    seen = []
    real = stage_mod.dynamic_threshold

    def spy(x0, p=0.995):
        seen.append(x0.shape[-1])
        return real(x0, p)

    monkeypatch.setattr(stage_mod, "dynamic_threshold", spy)
    cas = ImagenCascade(encoder, [stages["base"], stages["sr1"]])
    cas.sample("a red circle", steps=3, threshold=threshold, progress=False)
    assert seen == [8] * calls + [16] * calls


def test_sr_stage_sees_the_upsampled_base_image(stages, encoder, monkeypatch):
    """The cascade's super-resolution input (Section 2.4): the SR U-Net's first convolution reads
    ``[x_t; upsample(base image)]``, the base stage's output bilinearly upsampled to 16 px (level 0:
    no augmentation noise)."""
    sr = stages["sr1"]
    inputs = []
    real = sr.unet.input_conv.forward

    def spy(x):
        inputs.append(x.clone())
        return real(x)

    monkeypatch.setattr(sr.unet.input_conv, "forward", spy)
    cas = ImagenCascade(encoder, [stages["base"], sr])
    _, (base, _) = cas.sample("a red circle", steps=2, aug_level=0.0, progress=False, return_stages=True)
    up = F.interpolate(base, size=(16, 16), mode="bilinear", align_corners=False)
    assert len(inputs) == 2
    for x in inputs:
        assert x.shape == (1, 6, 16, 16)
        torch.testing.assert_close(x[:, 3:], up)


@pytest.mark.parametrize("name", ["base", "sr1"])
def test_no_host_reads_in_the_stage_loss_or_per_sampling_step(name):
    """No host-device synchronisation per step: the stage loss (forward and backward, text dropout
    and augmentation included) and every sampling step run on the ``meta`` device, where any
    ``.item()``, ``float(t)`` or ``.cpu()`` raises; on a GPU each would stall the step."""
    cfg = configs.stage_config(name, "ci", text_dim=8)
    with torch.device("meta"):
        st = ImagenStage(cfg)
    R, r = cfg.resolution, cfg.lowres_resolution
    lows = torch.zeros(10, 3, r, r) if cfg.is_sr else None
    batch = stage_batches(cfg, torch.zeros(10, 3, R, R), torch.zeros(10, dtype=torch.long), lows)(
        0, 0, 1, torch.Generator().manual_seed(0))
    batch = {k: v.to("meta") for k, v in batch.items()}
    emb, mask = torch.zeros(2, 4, 8, device="meta"), torch.ones(2, 4, dtype=torch.bool, device="meta")
    loss = StageLoss(st, emb[:1], mask[:1])(batch)
    loss.backward()
    assert loss.device.type == "meta"
    calls = []
    real = st.unet.forward

    def count(x, t, **kw):
        calls.append(t.shape)
        return real(x, t, **kw)

    st.unet.forward = count
    low = torch.zeros(2, 3, r, r, device="meta") if cfg.is_sr else None
    try:  # the sampler may read one flag back after its last step (a finite check): not per step
        st.sample(emb, mask, steps=3, guidance=3.0, lowres=low, threshold="dynamic")
    except RuntimeError as err:
        assert "meta" in str(err)
    assert len(calls) == 3
