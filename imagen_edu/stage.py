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
from .arguments import MAX_SEED, NumberTypeError, check_int, check_real  # re-exported: where stages check
from .diffusion import (OBJECTIVES, SAMPLERS, SCHEDULES, GaussianDiffusion, Generators, gaussian_noise,
                        random_uniform)
from .guidance import POOLINGS, AttentionPool, GuidedDenoiser, masked_mean
from .noise_augmentation import augment_lowres
from .thresholding import THRESHOLDS, dynamic_threshold
from .unet import UNet, UNetConfig

__all__ = ["STAGES", "MAX_SEED", "NumberTypeError", "check_int", "check_real", "StageConfig", "ImagenStage",
           "save_stage", "load_stage", "MissingCheckpointError"]

#: the stage names of a cascade, in order: a base model and up to two super-resolution stages
STAGES: tuple[str, ...] = ("base", "sr1", "sr2")


#: StageConfig's int fields and their ranges ``[low, high]`` (``None``: unbounded)
_INT_FIELDS = {"resolution": (1, None), "text_dim": (1, None), "timesteps": (1, None), "sample_steps": (1, None),
               "steps": (0, None), "batch_size": (1, None), "warmup": (0, None), "n_train_images": (1, None),
               "seed": (0, MAX_SEED - 1)}
#: StageConfig's real fields and their ranges (:func:`check_real`'s keywords); every one must be finite
_REAL_FIELDS = {"cond_drop_prob": dict(low=0.0, high=1.0, high_open=True),
                "aug_max_level": dict(low=0.0, high=1.0), "aug_sample_level": dict(low=0.0, high=1.0),
                "guidance": dict(low=0.0), "eta": dict(low=0.0, high=1.0), "lr": dict(low=0.0, low_open=True),
                "ema_decay": dict(low=0.0, high=1.0), "grad_clip": dict(low=0.0, low_open=True),
                "max_seconds": dict(low=0.0, low_open=True), "two_object_fraction": dict(low=0.0, high=1.0)}
#: the real fields that may also be ``None`` (no gradient clipping, no time cap)
_OPTIONAL_FIELDS = ("grad_clip", "max_seconds")


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
        pooling: how the text tokens become the pooled vector added to the timestep embedding:
            ``"mean"`` (the masked mean, the default) or ``"attention"`` (a learned query,
            :class:`~imagen_edu.guidance.AttentionPool`; Appendix A.13a).
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
    pooling: str = "mean"
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
        """Check every field: type, finiteness and range (a ``ValueError`` naming the field)."""
        if isinstance(self.unet, dict):
            self.unet = UNetConfig(**self.unet)
        if not isinstance(self.unet, UNetConfig):
            raise TypeError(f"StageConfig.unet must be a UNetConfig, got {type(self.unet).__name__}")
        if self.name not in STAGES:
            raise ValueError(f"stage name must be one of {STAGES}, got {self.name!r}")
        if not isinstance(self.text_encoder, str) or not self.text_encoder:
            raise ValueError(f"StageConfig.text_encoder must be an encoder's name, got {self.text_encoder!r}")
        for name, choices in (("schedule", SCHEDULES), ("objective", OBJECTIVES), ("threshold", THRESHOLDS),
                              ("loss_weighting", (None, "min_snr")),
                              ("pooling", POOLINGS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"StageConfig.{name} must be one of {choices}, got {getattr(self, name)!r}")
        for name, (low, high) in _INT_FIELDS.items():
            setattr(self, name, check_int(getattr(self, name), f"StageConfig.{name}", low=low, high=high))
        if self.sample_steps > self.timesteps:
            raise ValueError(f"StageConfig.sample_steps must be an int in [1, {self.timesteps}] (at most "
                             f"timesteps={self.timesteps}), got {self.sample_steps}")
        for name, rng in _REAL_FIELDS.items():
            v = getattr(self, name)
            if v is not None or name not in _OPTIONAL_FIELDS:
                setattr(self, name, check_real(v, f"StageConfig.{name}", **rng))
        if self.lowres_resolution is not None:
            self.lowres_resolution = check_int(self.lowres_resolution, "StageConfig.lowres_resolution", low=1,
                                               high=self.resolution - 1)
        if (self.name == "base") != (self.lowres_resolution is None):
            raise ValueError(f"stage {self.name!r}: only the base stage has no lowres_resolution")
        if self.unet.image_size != self.resolution:
            raise ValueError(f"unet.image_size={self.unet.image_size} must equal resolution={self.resolution}")
        if self.unet.cond_dim != self.text_dim or self.unet.context_dim != self.text_dim:
            raise ValueError(f"unet.cond_dim and unet.context_dim must equal text_dim={self.text_dim}, got "
                             f"{self.unet.cond_dim} and {self.unet.context_dim}")
        if (self.lowres_resolution is None) != (self.unet.lowres_channels is None):
            raise ValueError("a super-resolution stage needs both lowres_resolution and unet.lowres_channels; "
                             "a base stage neither")

    @property
    def is_sr(self) -> bool:
        return self.lowres_resolution is not None

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (the U-Net config nested)."""
        d = asdict(self)
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, d: dict) -> "StageConfig":
        """The config of :meth:`to_dict` (as read back from a checkpoint's metadata), every field checked.

        A missing or malformed ``unet`` and every nonsense value raise a ``ValueError`` naming the field.
        """
        if not isinstance(d, dict) or not isinstance(d.get("unet"), dict):
            raise ValueError(f"a stage config must be a dict with a 'unet' dict, got {type(d).__name__}"
                             + (f" with unet={d.get('unet')!r}" if isinstance(d, dict) else ""))
        d = dict(d)
        u = dict(d.pop("unet"))
        for k in ("channel_mults", "attention_resolutions", "cross_attention_resolutions", "num_res_blocks"):
            if isinstance(u.get(k), list):
                u[k] = tuple(u[k])
        known = {f.name for f in fields(cls)}
        try:
            unet = UNetConfig(**u)
        except TypeError as err:
            raise ValueError(f"StageConfig.unet: {err}") from err
        return cls(unet=unet, **{k: v for k, v in d.items() if k in known})

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
        # Appendix A.13a: the masked mean (no parameters) or a learned attention pool
        self.pool = AttentionPool(config.text_dim) if config.pooling == "attention" else None
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
        pooled = masked_mean(text_emb, text_mask) if self.pool is None else self.pool(text_emb, text_mask)
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
                      lowres: torch.Tensor | None = None, generator: Generators = None,
                      drop: torch.Tensor | None = None, aug_level: torch.Tensor | None = None,
                      t: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                      aug_noise: torch.Tensor | None = None) -> torch.Tensor:
        """The diffusion loss of a batch with text dropout and (for SR) noise-conditioning augmentation.

        ``drop`` (default: Bernoulli(``cond_drop_prob``)), ``aug_level`` (default: uniform in
        ``[0, aug_max_level]``), the time steps ``t``, the ``noise`` and the augmentation noise
        ``aug_noise`` are drawn from ``generator`` unless given (the trainer draws them itself);
        ``generator`` may be one per row (:mod:`imagen_edu.diffusion`, "Generators").
        """
        b, dev = x0.shape[0], x0.device
        cfg = self.config
        if drop is None:
            drop = (random_uniform(b, generator) < cfg.cond_drop_prob).to(dev)
        kw = {"text_emb": text_emb, "text_mask": text_mask, "drop": drop}
        if cfg.is_sr:
            if lowres is None:
                raise ValueError("a super-resolution stage needs the lowres image to train")
            if aug_level is None:
                aug_level = random_uniform(b, generator) * cfg.aug_max_level
            aug_level = aug_level.to(dev)
            if aug_noise is None:
                aug_noise = gaussian_noise(lowres.shape, generator, dtype=lowres.dtype)
            kw["lowres"] = augment_lowres(lowres, aug_level, noise=aug_noise.to(dev))
            kw["lowres_noise_level"] = aug_level
        return self.diffusion.loss(self, x0, t=None if t is None else t.to(dev),
                                   noise=None if noise is None else noise.to(dev), model_kwargs=kw, generator=generator)

    @torch.no_grad()
    def sample(self, text_emb: torch.Tensor, text_mask: torch.Tensor, *, guidance: float | None = None,
               steps: int | None = None, lowres: torch.Tensor | None = None, aug_level: float | None = None,
               sampler: str = "ddim", eta: float | None = None, threshold: str | None = None, percentile: float = 0.995,
               generator: Generators = None, progress: bool = False,
               return_trajectory: bool = False):
        """Generate ``(B, 3, R, R)`` images for the encoded text (and the lowres image, for SR).

        ``threshold``: ``"dynamic"`` (:func:`dynamic_threshold` at ``percentile``), ``"static"``
        (clip to [-1, 1]), ``"none"`` or ``None`` (``config.threshold``). ``eta``: DDIM's noise
        scale (``None``: ``config.eta``). For an SR stage, ``lowres`` is noised to ``aug_level``
        (default ``config.aug_sample_level``) before use, and the level is given to the network.
        ``generator``: one ``torch.Generator``, or a sequence of ``B`` (row ``r``'s ``x_T``, step
        noise and augmentation noise all from generator ``r``: a row's image does not depend on the
        other rows; :func:`imagen_edu.diffusion.gaussian_noise`). The augmentation noise is drawn
        first, then the sampler's.

        The numbers are checked before any work (:meth:`check_sampling`).
        """
        cfg = self.config
        w, k, eta, a, threshold = self.check_sampling(guidance=guidance, steps=steps, eta=eta, aug_level=aug_level,
                                                      threshold=threshold, sampler=sampler)
        b, dev = text_emb.shape[0], self.device
        extra = {}
        if cfg.is_sr:
            if lowres is None:
                raise ValueError(f"stage {cfg.name!r} needs the lowres image")
            level = torch.full((b,), a, device=dev)
            noise = gaussian_noise(lowres.shape, generator, dev, lowres.dtype)
            extra = {"lowres": augment_lowres(lowres.to(dev), level, noise=noise), "lowres_noise_level": level}
        model = GuidedDenoiser(self, text_emb.to(dev), text_mask.to(dev), w, **extra)
        transform = (lambda x0, t: dynamic_threshold(x0, percentile)) if threshold == "dynamic" else None
        return self.diffusion.sample(model, (b, self.config.unet.in_channels, cfg.resolution, cfg.resolution),
                                     sampler=sampler, steps=k, eta=eta,
                                     generator=generator, clip_denoised=threshold != "none",
                                     x0_transform=transform, progress=progress, device=dev,
                                     return_trajectory=return_trajectory)

    def check_sampling(self, *, guidance=None, steps=None, eta=None, aug_level=None, threshold=None,
                       sampler: str = "ddim"):
        """The sampling settings, checked, with ``None`` replaced by the config's default.

        Returns ``(guidance, steps, eta, aug_level, threshold)``: ``guidance`` a finite float >= 0,
        ``steps`` an int in ``[1, timesteps]`` (more is refused, not capped), ``eta`` finite in
        [0, 1], ``aug_level`` finite in [0, 1] (``config.aug_sample_level`` by default; used by an
        SR stage only), ``threshold`` one of :data:`~imagen_edu.thresholding.THRESHOLDS`. A wrong
        value raises a ``ValueError`` (a wrong type :class:`NumberTypeError`) naming the argument.
        """
        cfg = self.config
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        threshold = cfg.threshold if threshold is None else threshold
        if threshold not in THRESHOLDS:
            raise ValueError(f"threshold must be one of {THRESHOLDS}, got {threshold!r}")
        w = check_real(cfg.guidance if guidance is None else guidance, "guidance", low=0.0)
        k = cfg.sample_steps if steps is None else steps
        k = check_int(k, "steps", low=1, high=cfg.timesteps)
        eta = check_real(cfg.eta if eta is None else eta, "eta", low=0.0, high=1.0)
        a = check_real(cfg.aug_sample_level if aug_level is None else aug_level, "aug_level", low=0.0, high=1.0)
        return w, k, eta, a, threshold

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

