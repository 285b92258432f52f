"""The ``gpu`` profile exercised on the CPU, and the smoke override (``IMAGEN_EDU_SMOKE``).

Every model family a chapter builds from the profile is built here at the ``gpu`` profile's
sizes, takes one optimizer step on a tiny batch and one sampling (or inference) step: a size that
no longer builds (heads that do not divide a width, groups that do not divide channels, a
resolution the U-Net cannot halve) fails here without a GPU. The batches are tiny on purpose: the
sizes are what is checked, not the learning.
"""

import dataclasses
import math

import pytest
import torch
from torch import nn

from imagen_edu import attention, clip, ddpm_images, ddpm_train, imagen, lm, profiles, rnn, t5_pretraining, toy2d
from imagen_edu.diffusion import GaussianDiffusion

GPU = profiles.get("gpu")
CI = profiles.get("ci")
TINY = 2  # rows per batch


def params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def moved(before: list[torch.Tensor], model: nn.Module) -> bool:
    return any(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))


def one_step(model: nn.Module, loss: torch.Tensor) -> None:
    """One AdamW step on ``loss``; the loss must be finite and the weights must change."""
    assert torch.isfinite(loss), loss
    before = params(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert moved(before, model)


# ---------------------------------------------------------------------------------------------
# Chapter 1: the demo Transformer
# ---------------------------------------------------------------------------------------------
def test_attention_demo_transformer_at_gpu_sizes():
    """Chapter 1's demo model (embedding + imagen_edu.attention.Transformer + a read-out) at the gpu
    profile's d_model / heads / layers: one step of the colour task's cross-entropy, one forward."""
    s = GPU.attention
    assert s.d_model % s.n_heads == 0
    torch.manual_seed(0)
    emb, body, head = nn.Embedding(20, s.d_model), attention.Transformer(s.d_model, s.n_heads, s.n_layers), \
        nn.Linear(s.d_model, 6)
    model = nn.ModuleList([emb, body, head])
    ids = torch.randint(0, 20, (TINY, 7))
    mask = torch.ones(TINY, 7, dtype=torch.bool)
    mask[1, 5:] = False

    def run(ids):
        x = emb(ids) + attention.sinusoidal_positions(ids.shape[1], s.d_model)
        return head(body(x, key_mask=mask))

    logits = run(ids)
    assert logits.shape == (TINY, 7, 6)
    one_step(model, nn.functional.cross_entropy(logits.flatten(0, 1), torch.randint(0, 6, (TINY * 7,))))
    assert sum(isinstance(m, attention.TransformerBlock) for m in body.modules()) == s.n_layers
    with torch.no_grad():
        assert torch.isfinite(run(ids)).all()


# ---------------------------------------------------------------------------------------------
# Chapter 2: the language models, chapter 2b: the toy T5
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("train", [lm.train_lm, rnn.train_rnn], ids=["gpt", "rnn"])
def test_language_models_at_gpu_sizes(train):
    """Chapter 2's GPT and RNN built by their own trainers from the gpu LMSettings (d_model 128,
    4 layers): one training step, then one sampled caption."""
    s = dataclasses.replace(GPU.lm, max_steps=1, batch_size=TINY)
    res = train(s, device="cpu", progress=False)
    assert len(res.losses) == 1 and math.isfinite(res.losses[0])
    assert res.settings["d_model"] == GPU.lm.d_model
    if train is lm.train_lm:
        assert res.model.config.d_model == GPU.lm.d_model and res.model.config.n_layers == GPU.lm.n_layers
    texts = lm.sample(res.model, res.tokenizer, n=1, max_len=6)
    assert len(texts) == 1 and isinstance(texts[0], str)


def test_toy_t5_at_gpu_sizes():
    """Chapter 2b's toy T5 (the cascade's text encoder recipe) at the gpu profile's model sizes:
    pretrain one step (span corruption + the paraphrase term), then encode a caption."""
    cfg = t5_pretraining.cascade_encoder_config(GPU)
    assert cfg.model == GPU.t5["model"]
    cfg = dataclasses.replace(cfg, steps=1, batch_size=TINY, warmup_steps=1, paraphrase_facts=1)
    model, tok, trainer = t5_pretraining.pretrain(cfg, progress=False)
    assert trainer.step == 1
    ids, mask = tok.batch_encode(["a red circle left of a blue square"])
    states = model.encode(ids, mask)
    assert states.shape == (1, ids.shape[1], GPU.t5["model"]["d_model"]) and torch.isfinite(states).all()


# ---------------------------------------------------------------------------------------------
# Chapter 3: DDPM (2-D toy and the image U-Net)
# ---------------------------------------------------------------------------------------------
def test_ddpm_toy_at_gpu_sizes():
    """Chapter 3's 2-D toy denoiser at the gpu toy_hidden with the gpu timesteps: one step of
    ddpm_train.fit, one DDIM step of sampling."""
    s = GPU.diffusion
    toy = toy2d.ToyDenoiser(hidden=s.toy_hidden)
    d = GaussianDiffusion(s.schedule, s.timesteps, objective=s.objective)
    data = toy2d.make_moons(TINY, generator=torch.Generator().manual_seed(0))
    before = params(toy)
    losses = ddpm_train.fit(toy, d, lambda step: data, steps=1, lr=1e-3, progress=False)
    assert len(losses) == 1 and math.isfinite(losses[0]) and moved(before, toy)
    pts = d.sample(toy, (TINY, 2), sampler="ddim", steps=1, clip_denoised=False, progress=False)
    assert pts.shape == (TINY, 2) and torch.isfinite(pts).all()


def test_ddpm_image_unet_at_gpu_sizes():
    """Chapter 3b's shapes U-Net built by train_shapes from the gpu DiffusionSettings (64 channels,
    32 px): one step, then one DDIM sampling step of the EMA model."""
    s = dataclasses.replace(GPU.diffusion, image_batch=TINY, n_train_images=TINY)
    res = ddpm_images.train_shapes(s, steps=1, max_seconds=None, device="cpu", progress=False)
    assert res["steps"] == 1 and math.isfinite(res["losses"][0])
    cfg = res["config"]
    assert (cfg.channels, cfg.image_size, tuple(cfg.channel_mults)) == (64, 32, tuple(GPU.diffusion.unet_mults))
    x = res["diffusion"].sample(res["model"], (1, 3, s.image_size, s.image_size), sampler="ddim", steps=1,
                                progress=False)
    assert x.shape == (1, 3, 32, 32) and torch.isfinite(x).all()


# ---------------------------------------------------------------------------------------------
# Chapter 4: CLIP (both towers)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tower", ["cnn", "vit"])
def test_clip_at_gpu_sizes(tower):
    """Chapter 4's CLIP with either image tower at the gpu CLIPSettings (width 128, 3 text layers):
    one contrastive step by train_clip, then the image-text similarity of a batch."""
    s = dataclasses.replace(GPU.clip, steps=1, batch_size=TINY, n_train_images=TINY, max_seconds=None)
    res = clip.train_clip(s, device="cpu", progress=False, image_tower=tower)
    assert len(res.losses) == 1 and math.isfinite(res.losses[0])
    model = res.model
    assert model.config.width == GPU.clip.width and model.config.image_tower == tower
    with torch.no_grad():
        logits = model(torch.zeros(TINY, 3, s.image_size, s.image_size), ["a red circle", "a blue square"])
    assert logits.shape == (TINY, TINY) and torch.isfinite(logits).all()


# ---------------------------------------------------------------------------------------------
# Chapter 5: the cascade's stages
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(GPU.imagen.stages))
def test_cascade_stage_at_gpu_sizes(name):
    """Chapter 5's stages from imagen.stage_config(name, gpu) (base 16 px, sr1 16 -> 32, sr2
    32 -> 64): one step of the stage loss (text dropout, noise augmentation for SR), one guided
    DDIM sampling step."""
    cfg = imagen.stage_config(name, GPU)
    assert cfg.unet.channels == GPU.imagen.stages[name]["unet"]["channels"]
    torch.manual_seed(0)
    stage = imagen.ImagenStage(cfg)
    R, r = cfg.resolution, cfg.lowres_resolution
    emb, mask = torch.randn(TINY, 5, cfg.text_dim), torch.ones(TINY, 5, dtype=torch.bool)
    low = torch.rand(TINY, 3, r, r) * 2 - 1 if cfg.is_sr else None
    one_step(stage, stage.training_loss(torch.rand(TINY, 3, R, R) * 2 - 1, emb, mask, lowres=low,
                                        generator=torch.Generator().manual_seed(0)))
    stage.eval()
    x = stage.sample(emb, mask, steps=1, lowres=low, guidance=3.0)
    assert x.shape == (TINY, 3, R, R) and torch.isfinite(x).all()


# ---------------------------------------------------------------------------------------------
# The smoke override
# ---------------------------------------------------------------------------------------------
def _without_run_lengths(p: profiles.Profile) -> dict:
    """The profile as a dict with every run-length field (and the description) dropped: its sizes."""
    d = dataclasses.asdict(p)
    d.pop("description")
    for section, fields in profiles.RUN_LENGTH_FIELDS.items():
        for k in fields:
            d[section].pop(k, None)
    for own in d["imagen"]["stages"].values():
        for k in profiles.STAGE_RUN_LENGTH_FIELDS:
            own.pop(k)
    return d


@pytest.mark.parametrize("name", profiles.names())
def test_smoke_keeps_sizes_and_takes_ci_run_lengths(name):
    """IMAGEN_EDU_SMOKE's rule (profiles module docstring): every model size of the profile stays,
    every run-length field is the ci profile's (a stage ci lacks takes ci's last stage's)."""
    p = profiles.get(name)
    s = profiles.smoke(p)
    assert s.name == p.name and "smoke" in s.description
    assert _without_run_lengths(s) == _without_run_lengths(p)
    for section, fields in profiles.RUN_LENGTH_FIELDS.items():
        mine, ci = getattr(s, section), getattr(CI, section)
        for k in fields:
            if isinstance(mine, dict):
                assert mine.get(k) == ci.get(k, p.t5.get(k)), (section, k)
            else:
                assert getattr(mine, k) == getattr(ci, k), (section, k)
    ci_stages = list(CI.imagen.stages.values())
    for stage, own in s.imagen.stages.items():
        want = CI.imagen.stages.get(stage, ci_stages[-1])
        assert {k: own[k] for k in profiles.STAGE_RUN_LENGTH_FIELDS} == \
               {k: want[k] for k in profiles.STAGE_RUN_LENGTH_FIELDS}, stage


def test_smoke_caps_the_gpu_profile():
    """What the override is for: under it the gpu profile's budgets are small (so every notebook
    runs on a CPU in minutes) while its models are the gpu ones."""
    s = profiles.smoke(GPU)
    assert s.diffusion.image_steps <= 10 and s.clip.steps <= 50 and s.lm.max_steps <= 50 and s.t5["steps"] <= 100
    assert s.imagen.live_seconds <= 30 and s.imagen.n_train_images <= 100 and s.diffusion.sample_steps <= 10
    assert s.diffusion.timesteps <= 100 and s.imagen.timesteps <= 100  # full DDPM chains are T steps long
    assert all(own["steps"] <= 10 and own["batch_size"] <= 8 and own["sample_steps"] <= 10
               for own in s.imagen.stages.values())
    assert s.lm.d_model == GPU.lm.d_model and s.diffusion.unet_channels == GPU.diffusion.unet_channels
    assert imagen.stage_config("base", s).unet == imagen.stage_config("base", GPU).unet


def test_run_length_fields_exist():
    """RUN_LENGTH_FIELDS names real fields (a renamed field would silently escape the cap)."""
    p = profiles.get("cpu")
    for section, fields in profiles.RUN_LENGTH_FIELDS.items():
        have = getattr(p, section)
        if section == "t5":
            have = {f.name for f in dataclasses.fields(t5_pretraining.PretrainConfig)}
        else:
            have = {f.name for f in dataclasses.fields(have)}
        assert set(fields) <= have, (section, set(fields) - have)
    assert set(profiles.STAGE_RUN_LENGTH_FIELDS) <= set(profiles.CPU_STAGES["base"])


@pytest.mark.parametrize("value,on", [("1", True), ("yes", True), ("", False), ("0", False), ("false", False),
                                      ("No", False)])
def test_smoke_env_var_switches_current(monkeypatch, value, on):
    """profiles.current() applies smoke() exactly when IMAGEN_EDU_SMOKE is set to a true value,
    whatever IMAGEN_EDU_PROFILE picks."""
    monkeypatch.setenv(profiles.ENV_VAR, "gpu")
    monkeypatch.setenv(profiles.SMOKE_VAR, value)
    assert profiles.smoke_enabled() is on
    assert profiles.current() == (profiles.smoke(GPU) if on else GPU)
    monkeypatch.delenv(profiles.SMOKE_VAR)
    assert profiles.current() == GPU
