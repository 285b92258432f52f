"""One stage of the Imagen cascade: its configuration, the text-conditioned model, saving and loading.

A stage (Saharia et al. 2022, ``saharia2022imagen``) is a :class:`~imagen_edu.unet.UNet` that
reads the text tokens by cross-attention and a masked-mean pooled text vector added to its
timestep embedding (Section 2.1 and Appendix B), with its diffusion process and a learned
*null* text for classifier-free guidance (Section 2.2). A super-resolution stage also reads the
previous stage's image, upsampled, as extra input channels, noised by noise-conditioning
augmentation (Section 2.4).

* :class:`StageConfig`: the U-Net, diffusion process, guidance and training recipe of a stage
  (the named recipes are in :mod:`imagen_edu.configs`);
* :class:`ImagenStage`: the model: text conditioning with the null text, the training loss,
  sampling with guidance and thresholding;
* :func:`save_stage`, :func:`load_stage`: safetensors checkpoints with the config as metadata.

Derived in chapter 5 (``book/05_guidance.ipynb``, Section "Conditioning the U-Net on text").
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from einops import rearrange, repeat
from torch import nn

from . import checkpoints
from .diffusion import GaussianDiffusion
from .guidance import GuidedDenoiser, masked_mean
from .noise_augmentation import augment_lowres
from .thresholding import THRESHOLDS, dynamic_threshold
from .unet import UNet, UNetConfig

__all__ = ["STAGES", "StageConfig", "ImagenStage", "save_stage", "load_stage", "MissingCheckpointError"]

#: the stage names of a cascade, in order: a base model and up to two super-resolution stages
STAGES: tuple[str, ...] = ("base", "sr1", "sr2")

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
                                          "metadata): write it with imagen_edu.stage.save_stage")
    stage = ImagenStage(StageConfig.from_dict(meta["stage_config"]))
    stage.load_state_dict(tensors)
    return stage.to(device).eval()


class MissingCheckpointError(FileNotFoundError):
    """A cascade stage's checkpoint is not there: the message names the file and the train command."""

