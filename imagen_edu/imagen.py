"""Imagen: a text-conditioned cascade of diffusion models (chapter 5).

Saharia et al. 2022, *Photorealistic Text-to-Image Diffusion Models with Deep Language
Understanding* (``saharia2022imagen``), at toy scale on the shapes benchmark:

* a frozen text encoder (chapter 2's language model by default, any
  :mod:`imagen_edu.text_encoders` encoder plugs in) turns a prompt into token embeddings
  ``(B, T, D)`` with a mask ``(B, T)``;
* every stage is a :class:`~imagen_edu.unet.UNet` that reads the tokens by cross-attention and a
  *masked-mean pooled* text vector added to its timestep embedding (Section 2.1 and Appendix B);
* **classifier-free guidance** (Ho and Salimans 2022, ``ho2022classifierfree``): during training
  the text of a row is replaced, with probability ``cond_drop_prob`` (0.1), by a learned *null*
  embedding; at sampling ``eps = eps_uncond + w (eps_cond - eps_uncond)`` (Section 2.2);
* **dynamic thresholding** of the predicted ``x0`` at every sampling step (Section 2.3);
* a **cascade**: a base stage at low resolution (16 px here), then one or two super-resolution
  stages that see the previous stage's image, upsampled, as extra input channels; with
  **noise-conditioning augmentation** (Section 2.4): in training that image is noised to a
  random level ``a`` in ``[0, aug_max_level]`` by the forward process and ``a`` is given to the
  network; at sampling a fixed level (``aug_sample_level``) is used.

Derived in chapter 5 (``book/05_*.ipynb``). Command line: ``python -m imagen_edu --help``.

**Where guidance acts.** :class:`GuidedDenoiser` combines the two predictions in the space of
whatever the network outputs (eps, x0 or v; see :mod:`imagen_edu.diffusion`). For a fixed
``x_t`` and ``t`` the predicted eps and x0 are *affine* functions of the network output
(``x0 = sqrt(abar) x_t - sqrt(1 - abar) v``, ``eps = sqrt(1 - abar) x_t + sqrt(abar) v``, or the
identity), and guidance is an affine combination (weights ``1 - w`` and ``w`` sum to 1), so
guiding the output is *exactly* the same as guiding eps (or x0): the paper's formula holds
whatever the objective.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Sequence

import torch
from einops import rearrange, repeat
from torch import nn

from . import checkpoints
from .data.captions import canonical_caption, converse_caption
from .diffusion import GaussianDiffusion, cosine_alpha_bar
from .thresholding import THRESHOLDS, dynamic_threshold, static_threshold
from .unet import UNet, UNetConfig

__all__ = [
    "STAGES",
    "dynamic_threshold",
    "static_threshold",
    "masked_mean",
    "guide",
    "augment_lowres",
    "aug_alpha_bar",
    "StageConfig",
    "ImagenStage",
    "GuidedDenoiser",
    "ImagenCascade",
    "TextCache",
    "LMWordsAndStates",
    "CanonicalCaptions",
    "get_text_encoder",
    "stage_config",
    "stage_configs",
    "train_stage",
    "save_stage",
    "load_stage",
    "stage_file",
    "train_command",
    "eval_captions",
    "evaluate_cascade",
    "converse_caption",
    "relation_loss_test",
    "MissingCheckpointError",
]

#: the stage names of a cascade, in order: a base model and up to two super-resolution stages
STAGES: tuple[str, ...] = ("base", "sr1", "sr2")


# ---------------------------------------------------------------------------------------------
# Text conditioning and classifier-free guidance
# ---------------------------------------------------------------------------------------------
def masked_mean(emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the real tokens: ``emb (B, T, D)``, ``mask (B, T)`` bool -> ``(B, D)``.

    The pooled text vector added to the U-Net's timestep embedding. Padding tokens do not count.
    """
    if emb.dim() != 3 or mask.shape != emb.shape[:2]:
        raise ValueError(f"emb must be (B, T, D) and mask (B, T), got {tuple(emb.shape)} and {tuple(mask.shape)}")
    m = mask.to(emb.dtype)[..., None]
    return (emb * m).sum(1) / m.sum(1).clamp(min=1.0)


def guide(cond_out: torch.Tensor, uncond_out: torch.Tensor, w: float) -> torch.Tensor:
    """Classifier-free guidance, Eq. (ch5-eq-cfg): ``uncond + w (cond - uncond)``.

    Ho and Salimans 2022; Saharia et al. 2022, Section 2.2. ``w = 1`` gives the conditional
    prediction, ``w = 0`` the unconditional one, ``w > 1`` over-emphasises the text.
    """
    return uncond_out + w * (cond_out - uncond_out)


# ---------------------------------------------------------------------------------------------
# Noise-conditioning augmentation (Section 2.4 and Appendix of Saharia et al. 2022)
# ---------------------------------------------------------------------------------------------
def aug_alpha_bar(level: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """``abar(a)`` of the continuous cosine forward process at augmentation level ``a`` in [0, 1].

    :func:`imagen_edu.diffusion.cosine_alpha_bar` (Nichol and Dhariwal, Eq. 17, with continuous
    time) clamped to ``[0, 1]``: ``abar(0) = 1`` (no noise), ``abar(1) ~ 0``.
    """
    return cosine_alpha_bar(level, s).clamp(0.0, 1.0)


def augment_lowres(lowres: torch.Tensor, level, *, noise: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Noise the low-resolution conditioning image to augmentation level ``level``.

    ``z_a = sqrt(abar(a)) x + sqrt(1 - abar(a)) eps``: the forward process, Eq. (4) of Ho et al.,
    in continuous time (:func:`aug_alpha_bar`). ``lowres (B, C, h, w)``, ``level`` a float or
    ``(B,)`` in [0, 1]. Level 0 returns ``lowres`` unchanged. Derived in chapter 5, Eq. (ch5-eq-nca).
    """
    b = lowres.shape[0]
    level = torch.as_tensor(level, dtype=torch.float32)
    if level.dim() == 0:
        level = level.expand(b)
    if level.shape != (b,):
        raise ValueError(f"level must be a float or (B,) = ({b},), got {tuple(level.shape)}")
    if level.numel() and (float(level.min()) < 0 or float(level.max()) > 1):
        raise ValueError(f"augmentation levels must lie in [0, 1], got min {float(level.min())}, "
                         f"max {float(level.max())}")
    if noise is None:
        noise = torch.randn(lowres.shape, generator=generator, dtype=lowres.dtype).to(lowres.device)
    ab = aug_alpha_bar(level).to(device=lowres.device, dtype=lowres.dtype).reshape(b, *([1] * (lowres.dim() - 1)))
    return ab.sqrt() * lowres + (1 - ab).sqrt() * noise


# ---------------------------------------------------------------------------------------------
# Stage configuration
# ---------------------------------------------------------------------------------------------
@dataclass
class StageConfig:
    """One stage of the cascade: its U-Net, diffusion process, guidance and training recipe.

    Attributes:
        name: ``"base"``, ``"sr1"`` or ``"sr2"``.
        resolution: side of the images this stage generates.
        lowres_resolution: side of the conditioning image (``None`` for the base stage).
        unet: the :class:`~imagen_edu.unet.UNetConfig` (``image_size == resolution``,
            ``cond_dim == context_dim == text_dim``, ``lowres_channels`` set iff super-resolution).
        text_dim: width ``D`` of the text encoder's embeddings.
        text_encoder: the encoder's name for :func:`imagen_edu.text_encoders.get`.
        timesteps, schedule, objective, loss_weighting: the :class:`~imagen_edu.diffusion.GaussianDiffusion`.
        cond_drop_prob: probability of replacing a row's text by the null embedding in training.
        aug_max_level: training augmentation levels are uniform in ``[0, aug_max_level]``.
        aug_sample_level: the fixed augmentation level at sampling.
        guidance: default guidance weight ``w`` at sampling.
        sample_steps: default number of DDIM steps.
        threshold: default thresholding of the predicted ``x0`` at sampling: ``"dynamic"``,
            ``"static"`` or ``"none"``.
        eta: default DDIM noise scale at sampling (0: deterministic DDIM, 1: ancestral-like).
        steps, batch_size, lr, warmup, ema_decay, grad_clip: the training recipe (AdamW without
            weight decay, linear warm-up then cosine decay to 10 % of ``lr``; :class:`imagen_edu.train.Trainer`).
        max_seconds: optional wall-clock cap on training (``None``: none): training stops there,
            with a checkpoint, wherever the step-based schedule has got to.
        n_train_images: size of the rendered training pool (``train`` split).
        two_object_fraction: share of two-object scenes in the pool.
        seed: seed of the pool and of training.
    """

    name: str = "base"
    resolution: int = 16
    lowres_resolution: int | None = None
    unet: UNetConfig = field(default_factory=UNetConfig)
    text_dim: int = 64
    text_encoder: str = "lm"
    timesteps: int = 1000
    schedule: str = "cosine"
    objective: str = "v"
    loss_weighting: str | None = None
    cond_drop_prob: float = 0.1
    aug_max_level: float = 0.5
    aug_sample_level: float = 0.1
    guidance: float = 3.0
    sample_steps: int = 25
    threshold: str = "dynamic"
    eta: float = 0.0
    steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 50
    ema_decay: float = 0.995
    grad_clip: float | None = 1.0
    max_seconds: float | None = None
    n_train_images: int = 20000
    two_object_fraction: float = 0.5
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.unet, dict):
            self.unet = UNetConfig(**self.unet)
        if not isinstance(self.unet, UNetConfig):
            raise TypeError(f"StageConfig.unet must be a UNetConfig, got {type(self.unet).__name__}")
        if self.name not in STAGES:
            raise ValueError(f"stage name must be one of {STAGES}, got {self.name!r}")
        if self.unet.image_size != self.resolution:
            raise ValueError(f"unet.image_size={self.unet.image_size} must equal resolution={self.resolution}")
        if self.unet.cond_dim != self.text_dim or self.unet.context_dim != self.text_dim:
            raise ValueError(f"unet.cond_dim and unet.context_dim must equal text_dim={self.text_dim}, got "
                             f"{self.unet.cond_dim} and {self.unet.context_dim}")
        if (self.lowres_resolution is None) != (self.unet.lowres_channels is None):
            raise ValueError("a super-resolution stage needs both lowres_resolution and unet.lowres_channels; "
                             "a base stage neither")
        if self.lowres_resolution is not None and not 0 < self.lowres_resolution < self.resolution:
            raise ValueError(f"lowres_resolution must be in (0, {self.resolution}), got {self.lowres_resolution}")
        if (self.name == "base") != (self.lowres_resolution is None):
            raise ValueError(f"stage {self.name!r}: only the base stage has no lowres_resolution")
        if not 0.0 <= self.cond_drop_prob < 1.0:
            raise ValueError(f"cond_drop_prob must be in [0, 1), got {self.cond_drop_prob}")
        if not 0.0 <= self.aug_max_level <= 1.0 or not 0.0 <= self.aug_sample_level <= 1.0:
            raise ValueError("aug_max_level and aug_sample_level must be in [0, 1]")
        if self.guidance < 0:
            raise ValueError(f"guidance must be >= 0, got {self.guidance}")
        if self.threshold not in THRESHOLDS:
            raise ValueError(f"threshold must be one of {THRESHOLDS}, got {self.threshold!r}")
        for name in ("steps", "batch_size", "n_train_images", "sample_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "steps" else 1):
                raise ValueError(f"StageConfig.{name} must be a positive int, got {v!r}")

    @property
    def is_sr(self) -> bool:
        return self.lowres_resolution is not None

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (the U-Net config nested)."""
        d = asdict(self)
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, d: dict) -> "StageConfig":
        d = dict(d)
        u = dict(d.pop("unet"))
        for k in ("channel_mults", "attention_resolutions", "cross_attention_resolutions", "num_res_blocks"):
            if isinstance(u.get(k), list):
                u[k] = tuple(u[k])
        known = {f.name for f in fields(cls)}
        return cls(unet=UNetConfig(**u), **{k: v for k, v in d.items() if k in known})

    def replace(self, **changes) -> "StageConfig":
        """A copy with some fields changed (``unet`` may be a dict of UNetConfig changes)."""
        d = self.to_dict()
        if isinstance(changes.get("unet"), dict):
            d["unet"].update(changes.pop("unet"))
        d.update(changes)
        return StageConfig.from_dict(d)

    def make_diffusion(self) -> GaussianDiffusion:
        return GaussianDiffusion(self.schedule, self.timesteps, objective=self.objective,
                                 loss_weighting=self.loss_weighting)


# ---------------------------------------------------------------------------------------------
# Recipes: stage configs built from imagen_edu.profiles.ImagenSettings
# ---------------------------------------------------------------------------------------------
def _unet(resolution, channels, mults, blocks, attn, cross, text_dim, lowres=False, heads=4, groups=8):
    return UNetConfig(image_size=resolution, channels=channels, channel_mults=tuple(mults),
                      num_res_blocks=blocks, attention_resolutions=tuple(attn), num_heads=heads, groups=groups,
                      cond_dim=text_dim, context_dim=text_dim, cross_attention_resolutions=tuple(cross),
                      lowres_channels=3 if lowres else None)


def stage_configs(settings, text_dim: int | None = None) -> dict[str, StageConfig]:
    """The cascade's :class:`StageConfig` s (``{"base": ..., "sr1": ...}``, plus ``"sr2"`` when
    ``settings.sr2_resolution`` is set) from an
    :class:`imagen_edu.profiles.ImagenSettings`. ``text_dim`` defaults to the width of
    ``settings.text_encoder`` (which is loaded to find it)."""
    s = settings
    D = get_text_encoder(s.text_encoder).dim if text_dim is None else text_dim
    common = dict(text_dim=D, text_encoder=s.text_encoder, timesteps=s.timesteps, objective=s.objective, lr=s.lr,
                  ema_decay=s.ema_decay, cond_drop_prob=s.cond_drop_prob, n_train_images=s.n_train_images)

    def heads_groups(ch):
        return (4 if ch % 4 == 0 else 1), min(8, ch)

    h, g = heads_groups(s.base_channels)
    base = StageConfig(
        name="base", resolution=s.base_resolution,
        unet=_unet(s.base_resolution, s.base_channels, s.base_mults, tuple(s.base_res_blocks), s.base_attention,
                   s.base_cross_attention, D, heads=h, groups=g),
        two_object_fraction=s.base_two_object_fraction, steps=s.base_steps, batch_size=s.base_batch,
        max_seconds=s.base_max_seconds, guidance=s.base_guidance, sample_steps=s.base_sample_steps,
        threshold=s.base_threshold, eta=s.base_eta, warmup=min(50, max(1, s.base_steps // 10)), **common)
    def sr_stage(name, resolution, lowres_resolution, channels, mults, blocks, cross, steps, batch, max_seconds,
                 sample_steps):
        h, g = heads_groups(channels)
        return StageConfig(
            name=name, resolution=resolution, lowres_resolution=lowres_resolution,
            unet=_unet(resolution, channels, mults, blocks, (), cross, D, lowres=True, heads=h, groups=g),
            two_object_fraction=s.sr_two_object_fraction, eta=s.sr_eta,
            steps=steps, batch_size=batch, max_seconds=max_seconds, guidance=1.0,
            sample_steps=sample_steps, threshold=s.sr_threshold, aug_max_level=s.aug_max_level,
            aug_sample_level=s.aug_sample_level, warmup=min(50, max(1, steps // 10)), **common)

    out = {"base": base,
           "sr1": sr_stage("sr1", s.sr_resolution, s.base_resolution, s.sr_channels, s.sr_mults, s.sr_res_blocks,
                           s.sr_cross_attention, s.sr_steps, s.sr_batch, s.sr_max_seconds, s.sr_sample_steps)}
    if s.sr2_resolution is not None:
        out["sr2"] = sr_stage("sr2", s.sr2_resolution, s.sr_resolution, s.sr2_channels, s.sr2_mults, 1,
                              s.sr2_cross_attention, s.sr2_steps, s.sr2_batch, s.sr2_max_seconds,
                              s.sr2_sample_steps)
    return out


def stage_config(stage: str, profile=None, text_dim: int | None = None) -> StageConfig:
    """The :class:`StageConfig` of ``stage`` for a profile (a name or a Profile; default: the current one).

    Sizes and steps come from the profile's ``imagen`` settings (:class:`imagen_edu.profiles.ImagenSettings`).
    """
    from . import profiles

    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}: expected one of {STAGES}")
    prof = profiles.current() if profile is None else (profile if isinstance(profile, profiles.Profile)
                                                       else profiles.get(profile))
    recipe = stage_configs(prof.imagen, text_dim)
    if stage not in recipe:
        raise ValueError(f"the {prof.name!r} recipe has no stage {stage!r}; it has {sorted(recipe)}")
    return recipe[stage]


# ---------------------------------------------------------------------------------------------
# One stage: U-Net + diffusion + null text embeddings
# ---------------------------------------------------------------------------------------------
class ImagenStage(nn.Module):
    """A text-conditioned diffusion model: the U-Net, its diffusion process and the null text.

    ``forward(x_t, t, text_emb=(B, T, D), text_mask=(B, T), drop=None, lowres=None,
    lowres_noise_level=None)`` returns the U-Net's prediction ``(B, 3, R, R)`` (of
    ``config.objective``). Rows with ``drop[i] = True`` see the learned null text instead of
    theirs: one null token (the only unmasked position) and a null pooled vector.

    Derived in chapter 5 (Section "Conditioning the U-Net on text").
    """

    def __init__(self, config: StageConfig):
        super().__init__()
        if not isinstance(config, StageConfig):
            raise TypeError(f"config must be a StageConfig, got {type(config).__name__}")
        self.config = config
        self.unet = UNet(config.unet)
        self.null_token = nn.Parameter(torch.randn(config.text_dim) * 0.02)
        self.null_pooled = nn.Parameter(torch.randn(config.text_dim) * 0.02)
        self.diffusion = config.make_diffusion()

    @property
    def device(self) -> torch.device:
        return self.null_token.device

    def condition(self, text_emb: torch.Tensor, text_mask: torch.Tensor, drop: torch.Tensor | None = None):
        """Text -> ``(context (B, T, D), context_mask (B, T), pooled (B, D))``, null rows where ``drop``.

        Derived in chapter 5, Eq. (ch5-eq-drop): a dropped row's context is the null token at
        position 0 (the only unmasked position) and its pooled vector the null pooled vector.
        """
        D = self.config.text_dim
        if not isinstance(text_emb, torch.Tensor) or text_emb.dim() != 3 or text_emb.shape[-1] != D:
            raise ValueError(f"text_emb must be (B, T, {D}), got {getattr(text_emb, 'shape', None)}")
        if not isinstance(text_mask, torch.Tensor) or text_mask.dtype != torch.bool or \
                text_mask.shape != text_emb.shape[:2]:
            raise ValueError(f"text_mask must be bool (B, T) = {tuple(text_emb.shape[:2])}, got "
                             f"{getattr(text_mask, 'dtype', None)} {tuple(getattr(text_mask, 'shape', ()))}")
        b, T = text_mask.shape
        pooled = masked_mean(text_emb, text_mask)
        if drop is None:
            return text_emb, text_mask, pooled
        drop = torch.as_tensor(drop, dtype=torch.bool, device=text_emb.device)
        if drop.shape != (b,):
            raise ValueError(f"drop must be bool (B,) = ({b},), got {tuple(drop.shape)}")
        null_ctx = torch.zeros_like(text_emb)
        null_ctx[:, 0] = self.null_token.to(text_emb.dtype)
        null_mask = torch.zeros_like(text_mask)
        null_mask[:, 0] = True
        d3 = rearrange(drop, "b -> b 1 1")
        context = torch.where(d3, null_ctx, text_emb)
        mask = torch.where(rearrange(drop, "b -> b 1"), null_mask, text_mask)
        pooled = torch.where(rearrange(drop, "b -> b 1"), repeat(self.null_pooled.to(pooled.dtype), "d -> b d", b=b),
                             pooled)
        return context, mask, pooled

    def forward(self, x: torch.Tensor, t: torch.Tensor, *, text_emb: torch.Tensor, text_mask: torch.Tensor,
                drop: torch.Tensor | None = None, lowres: torch.Tensor | None = None,
                lowres_noise_level: torch.Tensor | None = None) -> torch.Tensor:
        """``x_t (B, 3, R, R)``, ``t (B,)`` -> the network output ``(B, 3, R, R)``."""
        context, mask, pooled = self.condition(text_emb, text_mask, drop)
        kw = {}
        if self.config.is_sr:
            if lowres is None:
                raise ValueError(f"stage {self.config.name!r} is a super-resolution stage: pass lowres "
                                 f"(B, 3, {self.config.lowres_resolution}, {self.config.lowres_resolution})")
            kw = {"lowres": lowres, "lowres_noise_level": lowres_noise_level}
        elif lowres is not None:
            raise ValueError("the base stage takes no lowres image")
        return self.unet(x, t, cond=pooled, context=context, context_mask=mask, **kw)

    def training_loss(self, x0: torch.Tensor, text_emb: torch.Tensor, text_mask: torch.Tensor, *,
                      lowres: torch.Tensor | None = None, generator: torch.Generator | None = None,
                      drop: torch.Tensor | None = None, aug_level: torch.Tensor | None = None,
                      t: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                      aug_noise: torch.Tensor | None = None) -> torch.Tensor:
        """The diffusion loss of a batch with text dropout and (for SR) noise-conditioning augmentation.

        ``drop`` (default: Bernoulli(``cond_drop_prob``)), ``aug_level`` (default: uniform in
        ``[0, aug_max_level]``), the time steps ``t``, the ``noise`` and the augmentation noise
        ``aug_noise`` are drawn from ``generator`` unless given (the trainer draws them itself).
        """
        b, dev = x0.shape[0], x0.device
        cfg = self.config
        if drop is None:
            drop = (torch.rand(b, generator=generator) < cfg.cond_drop_prob).to(dev)
        kw = {"text_emb": text_emb, "text_mask": text_mask, "drop": drop}
        if cfg.is_sr:
            if lowres is None:
                raise ValueError("a super-resolution stage needs the lowres image to train")
            if aug_level is None:
                aug_level = torch.rand(b, generator=generator) * cfg.aug_max_level
            aug_level = aug_level.to(dev)
            if aug_noise is None:
                aug_noise = torch.randn(lowres.shape, generator=generator, dtype=lowres.dtype)
            kw["lowres"] = augment_lowres(lowres, aug_level, noise=aug_noise.to(dev))
            kw["lowres_noise_level"] = aug_level
        return self.diffusion.loss(self, x0, t=None if t is None else t.to(dev),
                                   noise=None if noise is None else noise.to(dev), model_kwargs=kw, generator=generator)

    @torch.no_grad()
    def sample(self, text_emb: torch.Tensor, text_mask: torch.Tensor, *, guidance: float | None = None,
               steps: int | None = None, lowres: torch.Tensor | None = None, aug_level: float | None = None,
               sampler: str = "ddim", eta: float | None = None, threshold: str | None = None, percentile: float = 0.995,
               generator: torch.Generator | None = None, progress: bool = False,
               return_trajectory: bool = False):
        """Generate ``(B, 3, R, R)`` images for the encoded text (and the lowres image, for SR).

        ``threshold``: ``"dynamic"`` (:func:`dynamic_threshold` at ``percentile``), ``"static"``
        (clip to [-1, 1]), ``"none"`` or ``None`` (``config.threshold``). ``eta``: DDIM's noise
        scale (``None``: ``config.eta``). For an SR stage, ``lowres`` is noised to ``aug_level``
        (default ``config.aug_sample_level``) before use, and the level is given to the network.
        """
        cfg = self.config
        w = cfg.guidance if guidance is None else guidance
        k = cfg.sample_steps if steps is None else steps
        threshold = cfg.threshold if threshold is None else threshold
        eta = cfg.eta if eta is None else eta
        if threshold not in THRESHOLDS:
            raise ValueError(f"threshold must be one of {THRESHOLDS}, got {threshold!r}")
        b, dev = text_emb.shape[0], self.device
        extra = {}
        if cfg.is_sr:
            if lowres is None:
                raise ValueError(f"stage {cfg.name!r} needs the lowres image")
            a = cfg.aug_sample_level if aug_level is None else float(aug_level)
            level = torch.full((b,), a, device=dev)
            noise = torch.randn(lowres.shape, generator=generator, dtype=lowres.dtype).to(dev)
            extra = {"lowres": augment_lowres(lowres.to(dev), level, noise=noise), "lowres_noise_level": level}
        model = GuidedDenoiser(self, text_emb.to(dev), text_mask.to(dev), w, **extra)
        transform = (lambda x0, t: dynamic_threshold(x0, percentile)) if threshold == "dynamic" else None
        return self.diffusion.sample(model, (b, self.config.unet.in_channels, cfg.resolution, cfg.resolution),
                                     sampler=sampler, steps=min(int(k), cfg.timesteps), eta=eta,
                                     generator=generator, clip_denoised=threshold != "none",
                                     x0_transform=transform, progress=progress, device=dev,
                                     return_trajectory=return_trajectory)


class GuidedDenoiser:
    """Classifier-free guidance as a denoiser ``f(x_t, t) -> output`` for :meth:`GaussianDiffusion.sample`.

    One forward pass on the doubled batch ``[x_t; x_t]`` with ``[text; null]``, then
    ``out = out_uncond + w (out_cond - out_uncond)`` (:func:`guide`), in the network's output
    space (equivalent to guiding eps: see the module docstring). With ``w == 1`` and
    ``skip_uncond=True`` (the default) only the conditional half is computed.

    Derived in chapter 5, Eq. (ch5-eq-cfg).
    """

    def __init__(self, stage: ImagenStage, text_emb: torch.Tensor, text_mask: torch.Tensor, guidance: float,
                 lowres: torch.Tensor | None = None, lowres_noise_level: torch.Tensor | None = None,
                 skip_uncond: bool = True):
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or guidance < 0:
            raise ValueError(f"guidance must be a number >= 0, got {guidance!r}")
        self.stage, self.w = stage, float(guidance)
        self.text_emb, self.text_mask = text_emb, text_mask
        self.lowres, self.level = lowres, lowres_noise_level
        self.skip_uncond = skip_uncond
        self.calls = 0  # forward passes of the U-Net (for the speed discussion)

    def parameters(self):
        return self.stage.parameters()

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        lowres = {}
        if self.lowres is not None:
            lowres = {"lowres": self.lowres, "lowres_noise_level": self.level}
        self.calls += 1
        if self.w == 1.0 and self.skip_uncond:
            return self.stage(x, t, text_emb=self.text_emb, text_mask=self.text_mask, **lowres)
        drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(x.device)
        two = {k: torch.cat([v, v]) for k, v in lowres.items()}
        out = self.stage(torch.cat([x, x]), torch.cat([t, t]), text_emb=torch.cat([self.text_emb, self.text_emb]),
                         text_mask=torch.cat([self.text_mask, self.text_mask]), drop=drop, **two)
        cond, uncond = out.chunk(2)
        return guide(cond, uncond, self.w)


# ---------------------------------------------------------------------------------------------
# Text encoders
# ---------------------------------------------------------------------------------------------
class LMWordsAndStates:
    """Chapter 2's frozen language model read at its input *and* its output: ``(B, T, 2 D)``.

    A causal LM's final state at token t is built to predict token t+1. In the caption grammar
    nothing after a shape word depends on which shape it was, so the final states of
    ``a red circle`` and ``a red square`` are nearly equal (cosine similarity 0.9995 for the
    shipped model): a U-Net conditioned on them alone cannot learn shapes. This encoder
    concatenates, per token, the LM's own (frozen) input layer ``pos(tok_emb(ids))`` (which word,
    where) with its final hidden states (the context), each layer-normalised. Still a frozen text
    encoder, as in Imagen: nothing here is trained with the images.

    Derived in chapter 5 (Section "Which text features?").
    """

    def __init__(self, lm_encoder):
        self.base = lm_encoder
        self.model, self.tokenizer = lm_encoder.model, lm_encoder.tokenizer
        self.name = "lm+words"

    @property
    def dim(self) -> int:
        return 2 * self.base.dim

    def __call__(self, texts):
        return self.encode(texts)

    def __repr__(self) -> str:
        return f"LMWordsAndStates(base={self.base!r})"

    @torch.no_grad()
    def encode(self, texts):
        """``texts`` (B strings) -> ``(embeddings (B, T, 2 D), mask (B, T) bool)``; zeros on padding."""
        texts = self.base._check_texts(texts)
        dev = next(self.model.parameters()).device
        ids, mask = self.tokenizer.batch_encode(texts)
        ids, mask = ids.to(dev), mask.to(dev)
        words = self.model.pos(self.model.tok_emb(ids))          # (B, T, D): the LM's input layer
        states = self.model.hidden(ids, mask)                    # (B, T, D): its final states
        D = words.shape[-1]
        out = torch.cat([torch.nn.functional.layer_norm(words, (D,)),
                         torch.nn.functional.layer_norm(states, (D,))], dim=-1)
        return out * mask[..., None], mask


class CanonicalCaptions:
    """A frozen text encoder that reads every caption in its canonical form (``canonical:NAME``).

    ``A right of B`` and ``B left of A`` mean the same scene; which object goes left depends on
    the relation word *and* the word order together, an interaction that a small U-Net trained
    for minutes does not find (chapter 5, "Left of, right of": the loss with the relation flipped
    equals the loss with the true caption). Rewriting each caption with
    :func:`imagen_edu.data.captions.canonical_caption` (relations ``left of`` / ``above`` only)
    makes word order alone say where each object goes. A large pretrained encoder such as T5
    has learned such equivalences from text; ours is handed this one. Text outside the caption
    grammar passes through unchanged, so any encoder can be wrapped.
    """

    def __init__(self, encoder):
        self.base = encoder
        self.tokenizer = getattr(encoder, "tokenizer", None)
        self.name = f"canonical:{encoder.name}"

    @property
    def dim(self) -> int:
        return self.base.dim

    def __call__(self, texts):
        return self.encode(texts)

    def __repr__(self) -> str:
        return f"CanonicalCaptions(base={self.base!r})"

    def encode(self, texts):
        """``texts`` (B strings) -> the base encoder's ``(embeddings, mask)`` of their canonical forms."""
        if isinstance(texts, str):
            raise TypeError("encode expects a list of strings, got a single str: wrap it as [text]")
        return self.base.encode([canonical_caption(t) for t in texts])


_ENCODERS: dict = {}


def get_text_encoder(name: str, device: str = "cpu"):
    """A frozen text encoder by name: ``"lm+words"`` (:class:`LMWordsAndStates`), any name of
    :func:`imagen_edu.text_encoders.get` (``"lm"``, ``"t5:..."``), or ``"canonical:NAME"`` (the
    encoder ``NAME`` reading canonical captions, :class:`CanonicalCaptions`). Cached per name and device."""
    from . import text_encoders

    if not isinstance(name, str):
        raise TypeError(f"encoder name must be a str, got {type(name).__name__}")
    key = (name, str(device))
    if key not in _ENCODERS:
        if name.startswith("canonical:"):
            _ENCODERS[key] = CanonicalCaptions(get_text_encoder(name[len("canonical:"):], device=device))
        elif name == "lm+words":
            _ENCODERS[key] = LMWordsAndStates(text_encoders.get("lm", device=device))
        else:
            _ENCODERS[key] = text_encoders.get(name, device=device)
    return _ENCODERS[key]


# ---------------------------------------------------------------------------------------------
# Text cache and training
# ---------------------------------------------------------------------------------------------
class TextCache:
    """Encode each distinct caption once: the benchmark has only 1098 captions.

    ``lookup(captions) -> (emb (B, T, D), mask (B, T))`` with ``T`` the longest caption in the cache.
    """

    def __init__(self, encoder, captions: Sequence[str] = (), chunk: int = 256):
        self.encoder, self.chunk = encoder, chunk
        self.index: dict[str, int] = {}
        self.emb = self.mask = None
        self.add(captions)

    def add(self, captions: Sequence[str]) -> None:
        new = sorted({c for c in captions if c not in self.index})
        if not new:
            return
        embs, masks = [], []
        for i in range(0, len(new), self.chunk):
            e, m = self.encoder.encode(new[i:i + self.chunk])
            embs.append(e.float().cpu())
            masks.append(m.cpu())
        T = max([e.shape[1] for e in embs] + ([self.emb.shape[1]] if self.emb is not None else []))

        def pad(e, m):
            return (torch.nn.functional.pad(e, (0, 0, 0, T - e.shape[1])),
                    torch.nn.functional.pad(m, (0, T - m.shape[1])))

        parts = [pad(e, m) for e, m in zip(embs, masks)]
        if self.emb is not None:
            parts.insert(0, pad(self.emb, self.mask))
        self.emb = torch.cat([p[0] for p in parts])
        self.mask = torch.cat([p[1] for p in parts])
        for c in new:
            self.index[c] = len(self.index)

    def ids(self, captions: Sequence[str]) -> torch.Tensor:
        self.add(captions)
        return torch.tensor([self.index[c] for c in captions], dtype=torch.long)

    def lookup(self, captions: Sequence[str]):
        i = self.ids(captions)
        return self.emb[i], self.mask[i]


def stage_file(out_dir, stage: str) -> Path:
    """``OUT/imagen_STAGE.safetensors``: the EMA weights used for sampling (what ships)."""
    return Path(out_dir) / f"imagen_{stage}.safetensors"


def _resume_file(out_dir, stage: str) -> Path:
    return Path(out_dir) / f"imagen_{stage}.resume.safetensors"


def train_command(stage: str, profile: str = "cpu", out_dir="data/checkpoints") -> str:
    """The command line that trains ``stage`` into ``out_dir`` (relative to the current folder when inside it)."""
    out = Path(out_dir)
    if out.is_absolute():
        try:
            out = out.resolve().relative_to(Path.cwd().resolve())
        except ValueError:
            pass
    return f"python -m imagen_edu train --stage {stage} --profile {profile} --out {out}"


def _training_pool(cfg: StageConfig, progress: bool):
    from .data.shapes import ShapesDataset

    res = (cfg.lowres_resolution, cfg.resolution) if cfg.is_sr else cfg.resolution
    ds = ShapesDataset("train", res, length=cfg.n_train_images, seed=cfg.seed,
                       two_object_fraction=cfg.two_object_fraction)
    lows, highs, caps = [], [], []
    chunk = 1024
    it = range(0, cfg.n_train_images, chunk)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"rendering {cfg.n_train_images} {cfg.name} training scenes", leave=False)
    for s in it:
        imgs, c = ds.batch(range(s, min(s + chunk, cfg.n_train_images)))
        if cfg.is_sr:
            lows.append(imgs[0])
            highs.append(imgs[1])
        else:
            highs.append(imgs)
        caps += c
    return (torch.cat(lows) if lows else None), torch.cat(highs), caps


def _check_pool(cfg: StageConfig, pool):
    if not isinstance(pool, (tuple, list)) or len(pool) != 3:
        raise TypeError("pool must be a tuple (lows or None, highs, captions)")
    lows, highs, caps = pool
    R = cfg.resolution
    if not isinstance(highs, torch.Tensor) or highs.dim() != 4 or tuple(highs.shape[1:]) != (3, R, R):
        raise ValueError(f"pool images must be (N, 3, {R}, {R}) for stage {cfg.name!r}, got "
                         f"{tuple(getattr(highs, 'shape', ()))}")
    if len(caps) != len(highs) or not all(isinstance(c, str) and c.strip() for c in caps):
        raise ValueError(f"pool needs one non-empty caption per image: {len(highs)} images, {len(caps)} captions")
    if cfg.is_sr:
        r = cfg.lowres_resolution
        if not isinstance(lows, torch.Tensor) or tuple(lows.shape) != (len(highs), 3, r, r):
            raise ValueError(f"super-resolution stage {cfg.name!r} needs pool lows (N, 3, {r}, {r}), got "
                             f"{tuple(getattr(lows, 'shape', ())) if lows is not None else None}")
    elif lows is not None:
        raise ValueError("the base stage takes no low-resolution images: pass pool=(None, highs, captions)")
    return lows, highs.float(), list(caps)


class _manifest_lock:
    """An exclusive lock on ``out_dir/.manifest.lock`` (POSIX ``fcntl``; a no-op where it is missing)."""

    def __init__(self, out_dir):
        self.path = Path(out_dir) / ".manifest.lock"
        self.f = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(self.path, "w")
        fcntl.flock(self.f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.f is not None:
            import fcntl

            fcntl.flock(self.f, fcntl.LOCK_UN)
            self.f.close()


class _StageLoss(nn.Module):
    """The loss of one stage as a module, so that :class:`imagen_edu.train.Trainer` (and DDP) can
    wrap it: ``forward(batch) -> scalar``. The text embeddings of the pool's captions are looked
    up here; they are plain attributes, not buffers, so they are not saved with the weights."""

    def __init__(self, stage: "ImagenStage", emb_table: torch.Tensor, mask_table: torch.Tensor):
        super().__init__()
        self.stage = stage
        self.emb_table, self.mask_table = emb_table, mask_table

    def forward(self, batch: dict) -> torch.Tensor:
        dev = batch["x0"].device
        ci = batch["caption_ids"].to(self.emb_table.device)
        emb, mask = self.emb_table[ci].to(dev), self.mask_table[ci].to(dev)
        return self.stage.training_loss(batch["x0"], emb, mask, lowres=batch.get("lowres"), drop=batch["drop"],
                                        t=batch["t"], noise=batch["noise"], aug_level=batch.get("aug_level"),
                                        aug_noise=batch.get("aug_noise"))


def stage_batches(cfg: StageConfig, highs: torch.Tensor, cap_ids: torch.Tensor, lows: torch.Tensor | None = None):
    """``batch_fn(step, rank, world_size, generator)`` for :class:`imagen_edu.train.Trainer`: a
    random batch of the pool with every random draw of the loss made here (text dropout, time
    steps, noise, augmentation level and noise), from the trainer's generator, so that a resumed
    run draws exactly what an uninterrupted one would."""

    def batch_fn(step, rank, world_size, g):
        b = cfg.batch_size // world_size
        idx = torch.randint(0, len(highs), (b,), generator=g)
        x0 = highs[idx]
        out = {"x0": x0, "caption_ids": cap_ids[idx], "drop": torch.rand(b, generator=g) < cfg.cond_drop_prob,
               "t": torch.randint(0, cfg.timesteps, (b,), generator=g),
               "noise": torch.randn(x0.shape, generator=g, dtype=x0.dtype)}
        if cfg.is_sr:
            low = lows[idx]
            out.update(lowres=low, aug_level=torch.rand(b, generator=g) * cfg.aug_max_level,
                       aug_noise=torch.randn(low.shape, generator=g, dtype=low.dtype))
        return out

    return batch_fn


def check_resume(cfg: StageConfig, out_dir) -> None:
    """Before any step: ``out_dir`` must hold a resume file of this stage, trained with this config
    (only ``steps`` and ``max_seconds`` may change). Raises ``FileNotFoundError`` or a
    ``ValueError`` naming each differing field."""
    if out_dir is None:
        raise FileNotFoundError(f"cannot resume stage {cfg.name!r}: no resume file (no out_dir given)")
    rfile = _resume_file(out_dir, cfg.name)
    if not rfile.is_file():
        raise FileNotFoundError(f"cannot resume stage {cfg.name!r}: no resume file {rfile} (train without "
                                "--resume first)")
    _, meta = checkpoints.load(rfile)
    info = meta.get("model_info") if isinstance(meta, dict) else None
    if not isinstance(info, dict) or "stage_config" not in info:
        raise ValueError(f"{rfile} is not a resume file of python -m imagen_edu train (no stage_config)")
    saved = {**cfg.to_dict(), **info["stage_config"]}
    if saved.get("name") != cfg.name:
        raise ValueError(f"{rfile} is a checkpoint of stage {saved.get('name')!r}, not of stage {cfg.name!r}")
    now = cfg.to_dict()
    saved = StageConfig.from_dict(saved).to_dict()
    diff = [k for k in now if k not in _RESUME_FREE and now[k] != saved.get(k)]
    if diff:
        detail = "; ".join(f"{k}: saved {saved.get(k)!r}, now {now[k]!r}" for k in diff)
        raise ValueError(f"cannot resume from {rfile}: it was trained with another config ({detail}). "
                         "Use the same --profile, --data/--set options, or another --out folder")


#: StageConfig fields a resumed run may change (to train a finished run for longer)
_RESUME_FREE = ("steps", "max_seconds")


def _model_info(cfg: StageConfig) -> dict:
    d = cfg.to_dict()
    for k in _RESUME_FREE:
        d.pop(k, None)
    return {"stage_config": d}


def train_stage(config: StageConfig, encoder=None, *, out_dir=None, resume: bool = False,
                progress: bool = True, device=None, save_every: int = 200, command: str | None = None,
                profile: str | None = None, log_every: int = 10, pool=None, amp: str = "auto") -> dict:
    """Train one stage of the cascade from scratch (or resume it) with :class:`imagen_edu.train.Trainer`.

    Renders a pool of ``config.n_train_images`` training scenes (at the stage's resolution, and
    at ``lowres_resolution`` for SR stages: exact pairs), encodes each distinct caption once with
    the frozen ``encoder`` (default ``text_encoders.get(config.text_encoder)``), then runs
    ``config.steps`` steps of :meth:`ImagenStage.training_loss` with the book's one trainer:
    AdamW (no weight decay), linear warm-up and cosine decay to 0.1, gradient clipping, EMA
    weights, mixed precision on CUDA (``amp``: ``"auto"``, ``"bf16"``, ``"fp16"``, ``"off"``),
    a stop with ``FloatingPointError`` naming the step on a non-finite loss, and a checkpoint on
    Ctrl-C. ``pool=(lows or None, highs (N, 3, R, R) in [-1, 1], captions)`` trains on those
    images instead of rendered shapes (real data: :mod:`imagen_edu.data.real`); ``lows`` (N, 3,
    r, r) is required for a super-resolution stage.

    With ``out_dir``: writes the full training state to ``imagen_STAGE.resume.safetensors`` every
    ``save_every`` steps and at the end, and ``imagen_STAGE.safetensors`` (the EMA weights and
    config, via :mod:`imagen_edu.checkpoints`) with an ``imagen_STAGE`` entry in
    ``out_dir/manifest.json``. ``resume=True`` continues from the resume file exactly (a longer
    ``steps`` may be given to train a finished run further).

    Returns a dict: ``stage`` (the EMA :class:`ImagenStage`, eval mode), ``raw`` (the trained
    weights), ``losses``, ``steps`` (total), ``seconds`` (training time of this call),
    ``images_per_s`` and ``path`` (or ``None``).
    """
    from .train import TrainConfig, Trainer

    cfg = config
    device = torch.device(device or "cpu")
    if encoder is None:
        encoder = get_text_encoder(cfg.text_encoder)
    if encoder.dim != cfg.text_dim:
        raise ValueError(f"the text encoder gives {encoder.dim}-d embeddings but the stage expects "
                         f"text_dim={cfg.text_dim}")
    rfile = _resume_file(out_dir, cfg.name) if out_dir is not None else None
    if resume:
        check_resume(cfg, out_dir)
    if not resume and rfile is not None and rfile.is_file():
        rfile.unlink()  # a fresh run in this folder replaces the previous one (the CLI's documented behaviour)

    lows, highs, caps = _training_pool(cfg, progress) if pool is None else _check_pool(cfg, pool)
    cache = TextCache(encoder, caps)
    cap_ids = cache.ids(caps)
    torch.manual_seed(cfg.seed)
    module = _StageLoss(ImagenStage(cfg), cache.emb.to(device), cache.mask.to(device))
    tcfg = TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=0.0,
                       warmup_steps=cfg.warmup, min_lr_ratio=0.1, grad_clip=cfg.grad_clip,
                       ema_decay=cfg.ema_decay, amp=amp,
                       checkpoint_every=save_every if out_dir is not None else 0,
                       out_dir=None if out_dir is None else str(out_dir), seed=cfg.seed,
                       log_every=max(1, int(log_every)), max_seconds=cfg.max_seconds)
    trainer = Trainer(module, lambda m, batch: m(batch), stage_batches(cfg, highs, cap_ids, lows), tcfg,
                      resume=resume, device=device, progress=progress, model_info=_model_info(cfg),
                      allow_changes=_RESUME_FREE,
                      **({} if rfile is None else {"checkpoint_name": rfile.name}))
    start_step = trainer.step
    t0 = time.perf_counter()
    try:
        losses = trainer.train()
    finally:
        trainer.close()
    seconds = time.perf_counter() - t0
    new = trainer.step - start_step
    ema, raw = trainer.ema_model().stage.eval(), trainer.model.stage.eval()
    path = None
    if out_dir is not None:
        metrics = {"steps": trainer.step, "train_seconds": round(seconds, 1),
                   "images_per_s": round(new * cfg.batch_size / max(seconds, 1e-9), 1),
                   "final_loss": round(sum(losses[-50:]) / max(1, len(losses[-50:])), 5) if losses else None,
                   "train_threads": torch.get_num_threads(), "device": str(device),
                   "n_params": sum(p.numel() for p in raw.parameters())}
        if trainer.resumed_from is not None:
            metrics["resumed_from_step"] = trainer.resumed_from
        path = save_stage(ema, stage_file(out_dir, cfg.name), train=metrics)
        with _manifest_lock(out_dir):  # stages may train side by side and finish together
            checkpoints.register(f"imagen_{cfg.name}", path,
                                 command=command or train_command(cfg.name, profile or "cpu", out_dir),
                                 seed=cfg.seed, metrics=metrics, profile=profile,
                                 manifest=Path(out_dir) / "manifest.json")
    return {"stage": ema, "raw": raw, "losses": losses[start_step:], "steps": trainer.step, "seconds": seconds,
            "images_per_s": new * cfg.batch_size / max(seconds, 1e-9), "path": path}


# ---------------------------------------------------------------------------------------------
# Saving and loading stages
# ---------------------------------------------------------------------------------------------
def save_stage(stage: ImagenStage, path, **extra) -> Path:
    """Write a stage's weights and config (JSON metadata) with :func:`imagen_edu.checkpoints.save`."""
    meta = {"kind": "imagen_stage", "stage_config": stage.config.to_dict(), **extra}
    return checkpoints.save(path, stage.state_dict(), meta)


def load_stage(path, device="cpu", *, verify_name: str | None = None, manifest=None) -> ImagenStage:
    """Load a :func:`save_stage` file (eval mode).

    With ``verify_name`` the file is first checked against its sha256 in ``manifest``
    (:func:`imagen_edu.checkpoints.load_shipped`); a truncated or corrupt file raises
    :class:`~imagen_edu.checkpoints.CheckpointError` either way.
    """
    if verify_name is not None:
        tensors, meta = checkpoints.load_shipped(verify_name, device="cpu", manifest=manifest)
    else:
        tensors, meta = checkpoints.load(path, device="cpu")
    if not isinstance(meta, dict) or meta.get("kind") != "imagen_stage":
        raise checkpoints.CheckpointError(f"{path} is not an Imagen stage checkpoint (no 'kind': 'imagen_stage' "
                                          "metadata): write it with imagen_edu.imagen.save_stage")
    stage = ImagenStage(StageConfig.from_dict(meta["stage_config"]))
    stage.load_state_dict(tensors)
    return stage.to(device).eval()


class MissingCheckpointError(FileNotFoundError):
    """A cascade stage's checkpoint is not there: the message names the file and the train command."""


# ---------------------------------------------------------------------------------------------
# The cascade
# ---------------------------------------------------------------------------------------------
def _check_prompts(prompts) -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError("prompts must be a non-empty str or list of str")
    out = []
    for p in prompts:
        if not isinstance(p, str):
            raise TypeError(f"every prompt must be a str, got {type(p).__name__}")
        if not p.strip():
            raise ValueError("empty prompt: describe the image, e.g. 'a red circle left of a blue square'")
        out.append(" ".join(p.split()))
    return out


def _check_pos_int(v, name):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    return v


class ImagenCascade:
    """The text-to-image cascade: a frozen text encoder, a base stage and 1 or 2 SR stages.

    ``sample(prompts, n=4, guidance=3.0, steps=25, seed=0)`` returns ``(len(prompts) * n, 3, R, R)``
    images in [-1, 1] at the final resolution, prompt-major (the ``n`` samples of prompt 0 first).

    Derived in chapter 5 (Section "The cascade").
    """

    def __init__(self, encoder, stages: Sequence[ImagenStage]):
        stages = list(stages)
        if not stages or stages[0].config.is_sr:
            raise ValueError("a cascade starts with a base stage (no lowres input)")
        if not 2 <= len(stages) <= 3:
            raise ValueError(f"a cascade has a base stage and 1 or 2 super-resolution stages, got {len(stages)} stages")
        for a, b in zip(stages, stages[1:]):
            if not b.config.is_sr or b.config.lowres_resolution != a.config.resolution:
                raise ValueError(f"stage {b.config.name!r} must take {a.config.resolution} px input from "
                                 f"{a.config.name!r}, got lowres_resolution={b.config.lowres_resolution}")
        for s in stages:
            if s.config.text_dim != encoder.dim:
                raise ValueError(f"stage {s.config.name!r} expects {s.config.text_dim}-d text, the encoder "
                                 f"gives {encoder.dim}-d")
        self.encoder, self.stages = encoder, stages

    @property
    def resolution(self) -> int:
        return self.stages[-1].config.resolution

    @property
    def resolutions(self) -> list[int]:
        return [s.config.resolution for s in self.stages]

    @classmethod
    def from_dir(cls, checkpoint_dir=None, device="cpu", encoder=None, profile: str = "cpu") -> "ImagenCascade":
        """Load ``imagen_base``, ``imagen_sr1`` (and ``imagen_sr2`` if present) from a folder.

        Every file is checked against the sha256 in ``checkpoint_dir/manifest.json``. Default
        folder: the shipped ``data/checkpoints``. A missing stage raises
        :class:`MissingCheckpointError` naming the file and the command that makes it.
        """
        d = Path(checkpoint_dir) if checkpoint_dir is not None else checkpoints.checkpoint_dir()
        manifest = d / "manifest.json"
        data = checkpoints.read_manifest(manifest)
        stages = []
        for name in STAGES:
            key = f"imagen_{name}"
            f = stage_file(d, name)
            if key not in data or not f.is_file():
                if name == "sr2":
                    break
                what = (f"{f} is missing" if not f.is_file() else
                        f"{manifest} has no entry {key!r} for {f}")
                raise MissingCheckpointError(
                    f"no Imagen cascade in {d}: {what}. Train it with: {train_command(name, profile, d)}"
                    + (" (after the base stage)" if name != "base" else "")
                    + ", or pass --checkpoint-dir / checkpoint_dir to a folder that holds one")
            stages.append(load_stage(f, device, verify_name=key, manifest=manifest))
        if encoder is None:
            encoder = get_text_encoder(stages[0].config.text_encoder, device=str(device))
        return cls(encoder, stages)

    def encode(self, prompts: Sequence[str]):
        """Prompts -> ``(emb (B, T, D), mask (B, T))``; unknown words give a warning naming them."""
        tok = getattr(self.encoder, "tokenizer", None)
        stoi = getattr(tok, "stoi", None)
        if stoi is not None:
            unknown = sorted({w for p in prompts for w in p.lower().split() if w not in stoi})
            if unknown:
                warnings.warn(f"unknown word(s) {unknown} are outside the text encoder's vocabulary: they "
                              "are read as <unk>, generation goes on", UserWarning, stacklevel=3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            emb, mask = self.encoder.encode([p.lower() for p in prompts])
        return emb.float(), mask

    @torch.no_grad()
    def sample(self, prompts, n: int = 1, guidance=None, steps=None, seed: int = 0, sampler: str = "ddim",
               threshold: str | None = None, aug_level=None, batch_size: int = 256, progress: bool = True,
               return_stages: bool = False, eta: float | None = None):
        """Generate ``n`` images per prompt at the final resolution: ``(P * n, 3, R, R)`` in [-1, 1].

        Args:
            prompts: a str or a list of P str (batched together).
            n: samples per prompt (>= 1).
            guidance: ``w >= 0`` for the base stage (SR stages keep their config's ``guidance``),
                or a sequence with one ``w`` per stage; ``None``: each stage's default.
            steps: DDIM steps (>= 1) for every stage, a sequence per stage, or ``None`` (defaults).
            seed: seeds all noise: the same call gives the same images.
            sampler: ``"ddim"`` (eta 0) or ``"ddpm"``.
            threshold: ``"dynamic"``, ``"static"`` or ``"none"`` for every stage, or ``None`` (each
                stage's ``config.threshold``).
            aug_level: SR augmentation level at sampling (default: each stage's ``aug_sample_level``).
            eta: DDIM noise scale for every stage (default: each stage's ``eta``).
            batch_size: images generated at once.
            return_stages: also return the list of every stage's output.
        """
        prompts = _check_prompts(prompts)
        _check_pos_int(n, "n")
        _check_pos_int(batch_size, "batch_size")
        k = len(self.stages)
        ws = self._per_stage(guidance, "guidance", default=[s.config.guidance for s in self.stages], base_only=True)
        for w in ws:
            if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
                raise ValueError(f"guidance must be a number >= 0, got {w!r}")
        ks = self._per_stage(steps, "steps", default=[s.config.sample_steps for s in self.stages])
        for s in ks:
            _check_pos_int(s, "steps")
        texts = [p for p in prompts for _ in range(n)]
        emb, mask = self.encode(prompts)
        ids = torch.arange(len(prompts)).repeat_interleave(n)
        g = torch.Generator().manual_seed(int(seed))
        outs = [[] for _ in range(k)]
        chunks = range(0, len(texts), batch_size)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(texts) * k, desc="sampling cascade", leave=False)
        for c0 in chunks:
            sel = ids[c0:c0 + batch_size]
            e, m = emb[sel], mask[sel]
            x = None
            for i, st in enumerate(self.stages):
                x = st.sample(e, m, guidance=float(ws[i]), steps=int(ks[i]), lowres=x, aug_level=aug_level,
                              sampler=sampler, threshold=threshold, eta=eta, generator=g)
                outs[i].append(x.cpu())
                if bar is not None:
                    bar.update(len(sel))
        if bar is not None:
            bar.close()
        stages = [torch.cat(o) for o in outs]
        return (stages[-1], stages) if return_stages else stages[-1]

    def _per_stage(self, value, what, default, base_only=False):
        k = len(self.stages)
        if value is None:
            return list(default)
        if isinstance(value, (list, tuple)):
            if len(value) != k:
                raise ValueError(f"{what} must be one value or {k} values (one per stage), got {len(value)}")
            return list(value)
        if base_only:
            return [value] + list(default[1:])
        return [value] * k


# ---------------------------------------------------------------------------------------------
# Evaluation with the analytic judge
# ---------------------------------------------------------------------------------------------
def eval_captions(split: str, n: int, seed: int = 0) -> list[str]:
    """``n`` captions of ``split`` (``"test"`` or ``"heldout"``): one- and two-object half and half."""
    from .data.shapes import scene_at

    if split not in ("test", "heldout"):
        raise ValueError(f"split must be 'test' or 'heldout', got {split!r}")
    _check_pos_int(n, "n")
    h = n // 2
    one = [scene_at(split, seed, i, two_object_fraction=0.0).caption for i in range(n - h)]
    two = [scene_at(split, seed, 100_000 + i, two_object_fraction=1.0).caption for i in range(h)]
    return one + two


def evaluate_cascade(cascade: ImagenCascade, n: int = 200, *, guidance=None, steps=None, seed: int = 0,
                     splits=("test", "heldout"), batch_size: int = 256, progress: bool = True, **sample_kw) -> dict:
    """The judge's accuracies of the cascade's samples, one image per caption, per split.

    Returns ``{split: {"all", "colour", "shape", "relation", "count", "all_one_object",
    "all_two_object", "n"}, "seconds_per_image": ..., "resolution": ...}``.
    """
    from .evaluate import attribute_accuracy

    out: dict = {}
    total_t, total_n = 0.0, 0
    for split in splits:
        caps = eval_captions(split, n, seed)
        t0 = time.perf_counter()
        imgs = cascade.sample(caps, n=1, guidance=guidance, steps=steps, seed=seed, batch_size=batch_size,
                              progress=progress, **sample_kw)
        total_t += time.perf_counter() - t0
        total_n += len(caps)
        r = attribute_accuracy(imgs, caps)
        one = [v["all"] for v in r["verdicts"] if v["relation"] is None]
        two = [v["all"] for v in r["verdicts"] if v["relation"] is not None]
        out[split] = {k: round(r[k], 4) for k in ("all", "colour", "shape", "relation", "count")}
        out[split].update({"all_one_object": round(sum(one) / max(1, len(one)), 4),
                           "all_two_object": round(sum(two) / max(1, len(two)), 4), "n": len(caps)})
    out["seconds_per_image"] = round(total_t / max(1, total_n), 4)
    out["resolution"] = cascade.resolution
    out["threads"] = torch.get_num_threads()
    return out


@torch.no_grad()
def relation_loss_test(stage: ImagenStage, encoder=None, n: int = 256, *, seed: int = 0, bins: int = 4) -> dict:
    """Does a base stage read which side each object goes? Its loss with the true and the converse caption.

    Renders ``n`` two-object ``train`` scenes at the stage's resolution and computes the diffusion
    loss (:meth:`ImagenStage.training_loss`, no text dropout) three times with the *same* time
    steps and noise: with the true captions, with the relation flipped (:func:`converse_caption`,
    which describes the mirrored scene, so a model that places objects by the caption must do
    worse), and with the null text. ``bins`` equal ranges of ``t`` are reported separately
    (sides are decided at large ``t``). ``encoder`` defaults to the stage's own.

    Returns ``{"t_ranges": [(lo, hi), ...], "true": [...], "flipped": [...], "null": [...]}``.
    """
    from .data.shapes import render_batch, scene_at

    _check_pos_int(n, "n")
    _check_pos_int(bins, "bins")
    cfg = stage.config
    if cfg.is_sr:
        raise ValueError("relation_loss_test takes a base stage (no lowres input)")
    encoder = get_text_encoder(cfg.text_encoder, device=str(stage.device)) if encoder is None else encoder
    scenes = [scene_at("train", seed, i, two_object_fraction=1.0) for i in range(n)]
    x0 = render_batch(scenes, cfg.resolution).to(stage.device)
    caps = [s.caption for s in scenes]
    emb, mask = encoder.encode(caps)
    femb, fmask = encoder.encode([converse_caption(c) for c in caps])
    T = cfg.timesteps
    edges = [round(T * k / bins) for k in range(bins + 1)]
    out = {"t_ranges": [], "true": [], "flipped": [], "null": []}
    keep, drop = torch.zeros(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)
    for lo, hi in zip(edges[:-1], edges[1:]):
        g = torch.Generator().manual_seed(seed + lo)
        t = torch.randint(lo, hi, (n,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        common = dict(t=t, noise=noise)
        out["t_ranges"].append((lo, hi))
        out["true"].append(float(stage.training_loss(x0, emb, mask, drop=keep, **common)))
        out["flipped"].append(float(stage.training_loss(x0, femb, fmask, drop=keep, **common)))
        out["null"].append(float(stage.training_loss(x0, emb, mask, drop=drop, **common)))
    return out
