"""Tests of imagen_edu.imagen: guidance, thresholding, noise-conditioning augmentation, the cascade."""

import math
import warnings

import pytest
import torch

from imagen_edu import checkpoints, profiles
from imagen_edu import imagen as im


@pytest.fixture(scope="module")
def encoder():
    return im.get_text_encoder(im.stage_config("base", "ci").text_encoder)


@pytest.fixture(scope="module")
def configs(encoder):
    return {s: im.stage_config(s, "ci", text_dim=encoder.dim) for s in ("base", "sr1")}


@pytest.fixture(scope="module")
def stages(configs):
    torch.manual_seed(0)
    out = {}
    for name, cfg in configs.items():
        st = im.ImagenStage(cfg).eval()
        # the U-Net's output layer starts at zero: perturb it so predictions depend on the input
        with torch.no_grad():
            for p in st.parameters():
                p.add_(0.05 * torch.randn_like(p))
        out[name] = st
    return out


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory, configs, encoder):
    d = tmp_path_factory.mktemp("cascade")
    for name in ("base", "sr1"):
        im.train_stage(configs[name], encoder, out_dir=d, progress=False, profile="ci")
    return d


def text(encoder, prompts):
    return encoder.encode(prompts)


# ------------------------------------------------------------------ thresholding
def test_dynamic_threshold_in_range_and_rescales():
    g = torch.Generator().manual_seed(0)
    x0 = 3 * torch.randn(4, 3, 8, 8, generator=g)
    out = im.dynamic_threshold(x0, 0.995)
    assert out.abs().max() <= 1.0 + 1e-6
    s = torch.quantile(x0.abs().flatten(1), 0.995, dim=1)
    assert (s > 1).all()
    want = torch.stack([x0[i].clamp(-s[i], s[i]) / s[i] for i in range(4)])
    torch.testing.assert_close(out, want)
    # rescaling, not clipping: the sign pattern and the ordering of values inside [-s, s] are kept
    inside = x0.abs() < s.reshape(-1, 1, 1, 1)
    torch.testing.assert_close(out[inside] * s.reshape(-1, 1, 1, 1).expand_as(x0)[inside], x0[inside])
    assert not torch.equal(out, im.static_threshold(x0))


def test_dynamic_threshold_equals_static_when_s_is_one():
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(3, 3, 8, 8, generator=g) * 1.8 - 0.9  # all |x0| <= 1 -> s = 1
    torch.testing.assert_close(im.dynamic_threshold(x0), im.static_threshold(x0))
    torch.testing.assert_close(im.dynamic_threshold(x0), x0)
    # mixed batch: each sample has its own s
    x = torch.stack([x0[0], 5 * x0[1]])
    out = im.dynamic_threshold(x)
    torch.testing.assert_close(out[0], x0[0])
    assert out[1].abs().max() <= 1 + 1e-6 and not torch.allclose(out[1], x[1].clamp(-1, 1))


def test_dynamic_threshold_bad_input():
    with pytest.raises(ValueError):
        im.dynamic_threshold(torch.zeros(2, 3), percentile=1.5)
    with pytest.raises(ValueError):
        im.dynamic_threshold(torch.zeros(3))


# ------------------------------------------------------------------ guidance
def test_guidance_w1_is_conditional_w0_unconditional(stages, encoder):
    """Classifier-free guidance, Eq. (ch5-eq-cfg): w = 1 gives the conditional prediction, w = 0 the
    unconditional one, and the w = 1 shortcut skips the unconditional half."""
    st = stages["base"]
    emb, mask = text(encoder, ["a red circle", "a blue square left of a green circle"])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=g)
    t = torch.tensor([10, 70])
    cond = st(x, t, text_emb=emb, text_mask=mask)
    uncond = st(x, t, text_emb=emb, text_mask=mask, drop=torch.ones(2, dtype=torch.bool))
    assert not torch.allclose(cond, uncond, atol=1e-4)
    for w, want in ((1.0, cond), (0.0, uncond), (3.0, uncond + 3 * (cond - uncond))):
        got = im.GuidedDenoiser(st, emb, mask, w, skip_uncond=False)(x, t)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    # the w = 1 shortcut computes only the conditional half
    den = im.GuidedDenoiser(st, emb, mask, 1.0)
    torch.testing.assert_close(den(x, t), cond)


def test_guidance_in_output_space_equals_guidance_in_eps_space(stages, encoder):
    """Guidance on a v-model's output equals guidance on its eps (affine maps commute with an affine combination)."""
    st = stages["base"]  # a v-model
    assert st.config.objective == "v"
    diff = st.diffusion
    emb, mask = text(encoder, ["a red circle", "a cyan triangle"])
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([20, 90])
    v_c = st(x, t, text_emb=emb, text_mask=mask)
    v_u = st(x, t, text_emb=emb, text_mask=mask, drop=torch.ones(2, dtype=torch.bool))
    w = 4.0
    eps_guided = diff.predict_eps_from_v(x, t, im.guide(v_c, v_u, w))
    eps_of_guided = im.guide(diff.predict_eps_from_v(x, t, v_c), diff.predict_eps_from_v(x, t, v_u), w)
    torch.testing.assert_close(eps_guided, eps_of_guided, atol=1e-5, rtol=1e-4)


def test_guidance_rejects_negative(stages, encoder):
    emb, mask = text(encoder, ["a red circle"])
    with pytest.raises(ValueError):
        im.GuidedDenoiser(stages["base"], emb, mask, -1.0)


# ------------------------------------------------------------------ conditioning dropout and masks
def test_cond_dropout_replaces_exactly_the_dropped_rows(stages, encoder):
    """Text dropout (Eq. ch5-eq-drop): a dropped row gets the null token at position 0 (the only
    unmasked one) and the null pooled vector; the other rows are untouched."""
    st = stages["base"]
    emb, mask = text(encoder, ["a red circle", "a blue square left of a green circle", "a cyan triangle"])
    drop = torch.tensor([False, True, False])
    ctx, m, pooled = st.condition(emb, mask, drop)
    ctx0, m0, pooled0 = st.condition(emb, mask)
    for i in (0, 2):
        torch.testing.assert_close(ctx[i], ctx0[i])
        assert torch.equal(m[i], m0[i])
        torch.testing.assert_close(pooled[i], pooled0[i])
    torch.testing.assert_close(ctx[1, 0], st.null_token.detach())
    assert (ctx[1, 1:] == 0).all()
    assert m[1].tolist() == [True] + [False] * (mask.shape[1] - 1)
    torch.testing.assert_close(pooled[1], st.null_pooled.detach())
    torch.testing.assert_close(pooled0, im.masked_mean(emb, mask))


def test_training_uses_drop_probability(stages, encoder, monkeypatch):
    """Text dropout without the trainer: training_loss drops rows at rate cond_drop_prob."""
    st = stages["base"]
    seen = {}
    real = im.ImagenStage.condition

    def spy(self, e, m, drop=None):
        seen["drop"] = drop
        return real(self, e, m, drop)

    monkeypatch.setattr(im.ImagenStage, "condition", spy)
    emb, mask = text(encoder, ["a red circle"] * 1000)
    x0 = torch.zeros(1000, 3, 8, 8)
    st.training_loss(x0, emb, mask, generator=torch.Generator().manual_seed(0))
    share = seen["drop"].float().mean().item()
    assert abs(share - st.config.cond_drop_prob) < 0.04  # 4 standard deviations


def test_text_mask_honoured_end_to_end(stages, encoder):
    """Padding is ignored end to end: a prompt gives the same output alone or padded in a batch, and
    values at padded positions change nothing (masked pooling and masked cross-attention)."""
    st = stages["base"]
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([30])
    alone = st(x, t, *(), **dict(zip(("text_emb", "text_mask"), text(encoder, ["a red circle"]))))
    emb, mask = text(encoder, ["a red circle", "a blue square left of a green circle"])
    assert not mask[0].all()  # the short caption is padded in this batch
    batched = st(torch.cat([x, x]), torch.cat([t, t]), text_emb=emb, text_mask=mask)
    torch.testing.assert_close(batched[:1], alone, atol=1e-5, rtol=1e-4)
    # garbage at padding positions changes nothing
    junk = emb.clone()
    junk[0, ~mask[0]] = 7.0
    torch.testing.assert_close(st(torch.cat([x, x]), torch.cat([t, t]), text_emb=junk, text_mask=mask), batched)


# ------------------------------------------------------------------ noise-conditioning augmentation
def test_nca_level_zero_is_identity_and_level_one_is_noise():
    """Noise-conditioning augmentation, Eq. (ch5-eq-nca): level 0 is the identity, level 1 pure noise,
    in between the forward process sqrt(abar) x + sqrt(1 - abar) eps."""
    low = torch.rand(4, 3, 8, 8) * 2 - 1
    torch.testing.assert_close(im.augment_lowres(low, 0.0), low)
    noise = torch.randn_like(low)
    torch.testing.assert_close(im.augment_lowres(low, 1.0, noise=noise), noise, atol=1e-3, rtol=0)
    # the forward process: mean sqrt(abar) x, variance 1 - abar
    a = torch.tensor([0.0, 0.3, 0.6, 1.0])
    ab = im.aug_alpha_bar(a).float().reshape(-1, 1, 1, 1)
    torch.testing.assert_close(im.augment_lowres(low, a, noise=noise), ab.sqrt() * low + (1 - ab).sqrt() * noise)
    assert (im.aug_alpha_bar(torch.linspace(0, 1, 11)).diff() < 0).all()
    with pytest.raises(ValueError):
        im.augment_lowres(low, 1.5)


def test_nca_model_receives_the_level(stages, encoder, monkeypatch):
    """Noise-conditioning augmentation: the U-Net is given the level (per row in training, fixed at sampling)."""
    st = stages["sr1"]
    seen = []
    real = st.unet.forward

    def spy(x, t, **kw):
        seen.append({k: kw[k].clone() for k in ("lowres", "lowres_noise_level")})
        return real(x, t, **kw)

    monkeypatch.setattr(st.unet, "forward", spy)
    emb, mask = text(encoder, ["a red circle", "a blue square"])
    low = torch.rand(2, 3, 8, 8) * 2 - 1
    level = torch.tensor([0.0, 0.4])
    st.training_loss(torch.zeros(2, 3, 16, 16), emb, mask, lowres=low, aug_level=level,
                     generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(seen[-1]["lowres_noise_level"], level)
    torch.testing.assert_close(seen[-1]["lowres"][0], low[0])          # level 0: unchanged
    assert not torch.allclose(seen[-1]["lowres"][1], low[1])          # level 0.4: noised
    # at sampling: the fixed level, for every row and step
    seen.clear()
    st.sample(emb, mask, lowres=low, aug_level=0.25, steps=2, generator=torch.Generator().manual_seed(0))
    assert len(seen) == 2 and all(torch.allclose(s["lowres_noise_level"], torch.full((2,), 0.25)) for s in seen)
    seen.clear()
    st.sample(emb, mask, lowres=low, aug_level=0.0, steps=1, guidance=1.0)
    torch.testing.assert_close(seen[0]["lowres"], low)


# ------------------------------------------------------------------ the cascade
def test_cascade_sampling_shapes_and_determinism(stages, encoder):
    cas = im.ImagenCascade(encoder, [stages["base"], stages["sr1"]])
    a = cas.sample(["a red circle", "a blue square left of a green circle"], n=2, seed=3, steps=3, progress=False)
    assert a.shape == (4, 3, 16, 16) and a.abs().max() <= 1
    b = cas.sample(["a red circle", "a blue square left of a green circle"], n=2, seed=3, steps=3, progress=False)
    assert torch.equal(a, b)
    c = cas.sample(["a red circle", "a blue square left of a green circle"], n=2, seed=4, steps=3, progress=False)
    assert not torch.equal(a, c)
    final, each = cas.sample("a red circle", n=1, steps=2, guidance=[2.0, 1.0], progress=False, return_stages=True)
    assert [tuple(x.shape[-2:]) for x in each] == [(8, 8), (16, 16)] and torch.equal(final, each[-1])


def test_cascade_bad_input(stages, encoder):
    cas = im.ImagenCascade(encoder, [stages["base"], stages["sr1"]])
    for kw in ({"prompts": ""}, {"prompts": ["a red circle", "  "]}, {"prompts": "a red circle", "guidance": -0.5},
               {"prompts": "a red circle", "steps": 0}, {"prompts": "a red circle", "n": 0}, {"prompts": []}):
        with pytest.raises(ValueError):
            cas.sample(progress=False, **kw)
    with pytest.warns(UserWarning, match="purple"):
        out = cas.sample("a purple circle", n=1, steps=2, progress=False)
    assert out.shape == (1, 3, 16, 16)
    with pytest.raises(ValueError):
        im.ImagenCascade(encoder, [stages["sr1"], stages["base"]])


def test_checkpoint_round_trip(stages, tmp_path, encoder):
    st = stages["sr1"]
    path = im.save_stage(st, tmp_path / "sr1.safetensors")
    back = im.load_stage(path)
    assert back.config == st.config
    for (k, v), (k2, v2) in zip(st.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    emb, mask = text(encoder, ["a red circle"])
    x, low = torch.randn(1, 3, 16, 16), torch.rand(1, 3, 8, 8)
    t = torch.tensor([5])
    torch.testing.assert_close(back(x, t, text_emb=emb, text_mask=mask, lowres=low),
                               st(x, t, text_emb=emb, text_mask=mask, lowres=low))


def test_train_writes_manifest_and_cascade_loads(trained_dir):
    man = checkpoints.read_manifest(trained_dir / "manifest.json")
    assert {"imagen_base", "imagen_sr1"} <= set(man)
    assert man["imagen_base"]["sha256"] == checkpoints.sha256(trained_dir / "imagen_base.safetensors")
    assert "python -m imagen_edu train --stage base" in man["imagen_base"]["command"]
    cas = im.ImagenCascade.from_dir(trained_dir)
    assert cas.resolutions == [8, 16]
    out = cas.sample(["a red circle"], n=2, steps=2, progress=False)
    assert out.shape == (2, 3, 16, 16) and torch.isfinite(out).all()


def test_tampered_or_truncated_checkpoint_is_refused(trained_dir, tmp_path):
    import shutil

    d = tmp_path / "c"
    shutil.copytree(trained_dir, d)
    f = d / "imagen_base.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(checkpoints.CheckpointError, match="sha256"):
        im.ImagenCascade.from_dir(d)
    f.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(checkpoints.CheckpointError):
        im.load_stage(f)


def test_missing_cascade_names_file_and_command(tmp_path):
    with pytest.raises(im.MissingCheckpointError, match="imagen_base.safetensors") as err:
        im.ImagenCascade.from_dir(tmp_path)
    assert "python -m imagen_edu train --stage base" in str(err.value)


def test_resume_continues_exactly(configs, encoder, tmp_path):
    cfg = configs["base"].replace(steps=4)
    straight = im.train_stage(cfg, encoder, progress=False)
    d = tmp_path / "r"
    im.train_stage(cfg.replace(steps=2), encoder, out_dir=d, progress=False)
    resumed = im.train_stage(cfg, encoder, out_dir=d, resume=True, progress=False)
    assert resumed["steps"] == 4 and len(resumed["losses"]) == 2
    assert resumed["losses"] == pytest.approx(straight["losses"][2:], rel=1e-4)
    for a, b in zip(straight["stage"].parameters(), resumed["stage"].parameters()):
        torch.testing.assert_close(a, b)
    with pytest.raises(FileNotFoundError):
        im.train_stage(cfg, encoder, out_dir=tmp_path / "none", resume=True, progress=False)


def test_training_stops_on_nan_naming_the_step(configs, encoder, monkeypatch):
    calls = {"n": 0}
    real = im.ImagenStage.training_loss

    def bad(self, *a, **k):
        calls["n"] += 1
        loss = real(self, *a, **k)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(im.ImagenStage, "training_loss", bad)
    with pytest.raises(FloatingPointError, match="step 2"):
        im.train_stage(configs["base"], encoder, progress=False)


def test_training_lowers_the_loss(configs, encoder):
    cfg = configs["base"].replace(steps=25, lr=3e-3)
    res = im.train_stage(cfg, encoder, progress=False)
    first, last = sum(res["losses"][:6]) / 6, sum(res["losses"][-6:]) / 6
    assert last < first and all(math.isfinite(x) for x in res["losses"])


def test_eval_captions_half_and_half():
    from imagen_edu.data.captions import parse_caption

    for split in ("test", "heldout"):
        caps = im.eval_captions(split, 20)
        n_two = sum(parse_caption(c).relation is not None for c in caps)
        assert len(caps) == 20 and n_two == 10
        assert all(parse_caption(c).heldout == (split == "heldout") for c in caps)


def test_stage_config_validation(configs):
    cfg = configs["sr1"]
    assert im.StageConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError):
        cfg.replace(resolution=32)  # unet.image_size no longer matches
    with pytest.raises(ValueError):
        cfg.replace(cond_drop_prob=1.0)
    with pytest.raises(ValueError):
        im.stage_config("sr3", "ci")


def test_no_stray_warnings_for_known_words(stages, encoder):
    cas = im.ImagenCascade(encoder, [stages["base"], stages["sr1"]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cas.sample("A Red  circle", n=1, steps=1, progress=False)


def test_lm_words_and_states_encoder_sees_shape_words():
    from imagen_edu import text_encoders

    lm = text_encoders.get("lm")
    ours = im.get_text_encoder("lm+words")
    assert ours.dim == 2 * lm.dim
    caps = ["a red circle", "a red square", "a red circle left of a blue square"]
    emb, mask = ours.encode(caps)
    base, base_mask = lm.encode(caps)
    assert emb.shape == (3, base.shape[1], 2 * lm.dim) and torch.equal(mask, base_mask)
    assert (emb[~mask] == 0).all()
    cos = torch.nn.functional.cosine_similarity
    # at the shape token (position 3) our features separate circle from square more than the LM's states
    assert cos(emb[0, 3], emb[1, 3], dim=0) < cos(base[0, 3], base[1, 3], dim=0)
    # real tokens do not depend on the padding of the batch
    alone, _ = ours.encode(["a red circle"])
    torch.testing.assert_close(emb[0, : alone.shape[1]], alone[0])


def test_canonical_encoder_reads_the_meaning_not_the_wording():
    """``canonical:lm+words`` (the oracle of chapter 5a's ablation, never a default) gives
    "A right of B" exactly the embedding of "B left of A", and still tells "A left of B" from
    "B left of A"."""
    from imagen_edu import profiles

    assert all(not profiles.get(p).imagen.text_encoder.startswith("canonical:") for p in profiles.names())
    enc = im.get_text_encoder("canonical:lm+words")
    plain = im.get_text_encoder("lm+words")
    assert enc.dim == plain.dim and enc.name == "canonical:lm+words" and enc.tokenizer is plain.tokenizer
    e, m = enc.encode(["a red circle right of a blue square", "a blue square left of a red circle",
                       "a red circle left of a blue square", "a red circle below a green triangle",
                       "a green triangle above a red circle", "a red circle"])
    assert torch.equal(e[0], e[1]) and torch.equal(e[3], e[4])
    assert (e[0] - e[2]).abs().max() > 0.1
    p, pm = plain.encode(["a blue square left of a red circle", "a red circle"])
    torch.testing.assert_close(e[1], p[0])                      # canonical captions pass through
    torch.testing.assert_close(e[5, :5], p[1, :5])
    with pytest.raises(TypeError, match="single str"):
        enc.encode("a red circle")
    with pytest.raises(ValueError, match="unknown text encoder"):
        im.get_text_encoder("canonical:nope")


def test_relation_loss_test_tells_the_shipped_base_from_the_plain_one():
    """Chapter 5a's loss test: the shipped base (reading the learned toy T5) pays for a flipped
    relation at every t, the oracle base (canonical captions) pays more, and the ablation base
    reading chapter 2's LM on the captions as written does not (it never learnt sides)."""
    from imagen_edu import checkpoints

    root = checkpoints.checkpoint_dir()
    d, o = root / "ablation_text" / "plain", root / "ablation_text" / "oracle"
    plain = im.load_stage(d / "imagen_base.safetensors", verify_name="imagen_base", manifest=d / "manifest.json")
    oracle = im.load_stage(o / "imagen_base.safetensors", verify_name="imagen_base", manifest=o / "manifest.json")
    shipped = im.load_stage(root / "imagen_base.safetensors", verify_name="imagen_base")
    rp, rs, ro = (im.relation_loss_test(st, n=96, bins=2) for st in (plain, shipped, oracle))
    assert rp["t_ranges"] == [(0, 500), (500, 1000)]
    for r in (rp, rs, ro):
        assert all(n > t for n, t in zip(r["null"], r["true"]))   # all read the text
    assert all(abs(f - t) < 0.02 * t for f, t in zip(rp["flipped"], rp["true"]))
    assert all(f > 1.15 * t for f, t in zip(rs["flipped"], rs["true"]))
    assert all(f > 1.5 * t for f, t in zip(ro["flipped"], ro["true"]))
    assert im.converse_caption("a red circle below a blue square") == "a red circle above a blue square"
    with pytest.raises(ValueError, match="two-object"):
        im.converse_caption("a red circle")
    with pytest.raises(ValueError, match="base stage"):
        im.relation_loss_test(im.load_stage(checkpoints.checkpoint_dir() / "imagen_sr1.safetensors"))


def test_three_stage_cascade_with_sr2(encoder):
    """An ``sr2`` entry in the settings' stages adds a second SR stage fed by sr1; the cascade samples at its size."""
    import dataclasses

    from imagen_edu import profiles

    ci = profiles.get("ci").imagen
    sr2 = {**ci.stages["sr1"], "resolution": 32, "steps": 2, "sample_steps": 2,
           "unet": {**ci.stages["sr1"]["unet"], "cross_attention_resolutions": (8,)}}
    s = dataclasses.replace(ci, stages={**ci.stages, "sr2": sr2})
    cfgs = im.stage_configs(s, text_dim=encoder.dim)
    assert cfgs["sr2"].lowres_resolution == cfgs["sr1"].resolution == 16 and cfgs["sr2"].resolution == 32
    assert "sr2" not in im.stage_configs(profiles.get("ci").imagen, text_dim=encoder.dim)
    torch.manual_seed(0)
    cas = im.ImagenCascade(encoder, [im.ImagenStage(cfgs[k]).eval() for k in ("base", "sr1", "sr2")])
    out, per_stage = cas.sample(["a red circle"], n=2, steps=2, progress=False, return_stages=True)
    assert [x.shape[-1] for x in per_stage] == [8, 16, 32] and out.shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="sr2"):
        im.ImagenCascade(encoder, [im.ImagenStage(cfgs["base"]), im.ImagenStage(cfgs["sr2"])])


def test_shipped_cascade_verifies_and_samples():
    """The shipped toy cascade: every file matches its manifest sha256, and it samples 32 px images."""
    from imagen_edu import checkpoints

    for key in ("imagen_base", "imagen_sr1"):
        checkpoints.verify(key)
    d = checkpoints.checkpoint_dir()
    for sub in ("aug", "noaug"):
        checkpoints.verify("imagen_sr1", manifest=d / "ablation_nca" / sub / "manifest.json")
    checkpoints.verify("imagen_base", manifest=d / "ablation_text" / "plain" / "manifest.json")
    checkpoints.verify("t5")
    for key in ("imagen_base", "imagen_sr1"):
        checkpoints.verify(key, manifest=d / "ablation_text" / "oracle" / "manifest.json")
    plain = im.load_stage(d / "ablation_text" / "plain" / "imagen_base.safetensors", verify_name="imagen_base",
                          manifest=d / "ablation_text" / "plain" / "manifest.json")
    assert plain.config.text_encoder == "lm+words"
    oracle = im.ImagenCascade.from_dir(d / "ablation_text" / "oracle")
    assert [s.config.text_encoder for s in oracle.stages] == ["canonical:lm+words"] * 2
    cas = im.ImagenCascade.from_dir()
    assert cas.resolutions == [16, 32]
    # the shipped cascade reads the learned toy T5, the profiles' default, with no caption rewrite
    assert [s.config.text_encoder for s in cas.stages] == ["toyt5"] * 2 == [profiles.get("cpu").imagen.text_encoder] * 2
    out = cas.sample(["a red circle", "a blue square above a green triangle"], n=1, steps=2, progress=False)
    assert out.shape == (2, 3, 32, 32) and torch.isfinite(out).all() and out.abs().max() <= 1.0
    noaug = im.load_stage(d / "ablation_nca" / "noaug" / "imagen_sr1.safetensors", verify_name="imagen_sr1",
                          manifest=d / "ablation_nca" / "noaug" / "manifest.json")
    assert noaug.config.aug_max_level == 0.0 and noaug.config.aug_sample_level == 0.0
