"""A small U-Net for diffusion on images (chapter 3), built to grow into Imagen's (chapter 5).

The network ``eps_theta(x_t, t)`` of Ho et al. 2020 (their Appendix B): a U-Net of ResBlocks
with GroupNorm, a sinusoidal timestep embedding fed through an MLP into every ResBlock, and
self-attention at the low resolutions. Two details follow Imagen's Efficient U-Net
(Saharia et al. 2022, Appendix B.1): skip connections are scaled by ``1/sqrt(2)``, and the
output convolution starts at zero (so the untrained model predicts 0). The text tokens pass a
LayerNorm before cross-attention (chapter 5).

Optional inputs, all off by default so the unconditional model stays simple:

* ``cond_dim``: a pooled text embedding ``cond (B, cond_dim)`` added to the time embedding;
* ``context_dim``: cross-attention from the image to text tokens ``context (B, L, context_dim)``
  with ``context_mask (B, L)`` (True = a real token) at ``cross_attention_resolutions``;
* ``lowres_channels``: a super-resolution stage: ``lowres (B, lowres_channels, h, w)`` is
  upsampled to the output size and concatenated to ``x_t``; its noise-augmentation level
  ``lowres_noise_level (B,)`` in [0, 1] is embedded like a timestep and added to the time embedding.

Derived in chapter 3 (unconditional) and chapter 5 (conditioning).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from . import checkpoints
from .attention import MultiHeadAttention, sinusoidal_embedding, sinusoidal_positions

__all__ = ["UNetConfig", "UNet", "timestep_embedding", "heads_and_groups", "NOISE_LEVEL_SCALE", "ResBlock",
           "SpatialAttention", "save_unet", "load_unet"]

#: The noise-conditioning augmentation level ``s`` in [0, 1] is embedded as the timestep
#: ``NOISE_LEVEL_SCALE * s`` (chapter 5), so its sinusoids turn at the same speeds as those of a
#: 1000-step schedule's ``t``.
NOISE_LEVEL_SCALE = 1000.0


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``(B, dim)`` of timesteps ``t (B,)`` (ints or floats), chapter 3.

    The Transformer's positional encoding (chapter 1, Eq. ch1-eq-sinusoid) applied to the step
    number: :func:`imagen_edu.attention.sinusoidal_embedding` in the DDPM layout
    ``[cos(t w_0), ..., cos(t w_{d/2-1}), sin(t w_0), ...]`` with ``w_i = max_period^(-2i/d)``.
    By design the cosines come first and are not interleaved with the sines, as in DDPM and
    diffusers' ``get_timestep_embedding(t, dim, flip_sin_to_cos=True, downscale_freq_shift=0)``
    (the shipped U-Nets' time MLPs read this order).
    """
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t)
    if t.dim() == 0:
        t = t[None]
    if t.dim() != 1:
        raise ValueError(f"t must be (B,), got shape {tuple(t.shape)}")
    if not isinstance(dim, int) or dim < 2 or dim % 2:
        raise ValueError(f"dim must be an even int >= 2, got {dim!r}")
    return sinusoidal_embedding(t, dim, max_period, interleave=False)


def heads_and_groups(width: int) -> tuple[int, int]:
    """The attention heads and GroupNorm groups of a U-Net of base width ``width``: 4 heads when
    ``width`` is a multiple of 4, else 1; ``min(8, width)`` groups. The default of
    :class:`UNetConfig` (4 and 8 at its default width 32)."""
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive int, got {width!r}")
    return (4 if width % 4 == 0 else 1), min(8, width)


@dataclass
class UNetConfig:
    """Sizes and options of :class:`UNet`.

    Attributes:
        image_size: side of the square input (must be divisible by ``2**(len(channel_mults)-1)``).
        in_channels: channels of ``x_t`` (3 for RGB).
        out_channels: channels predicted (default ``in_channels``).
        channels: base width; level ``i`` has ``channels * channel_mults[i]``.
        channel_mults: one multiplier per resolution level (32 -> 16 -> 8 for ``(1, 2, 2)``).
        num_res_blocks: ResBlocks per level: an int, or one int per level (Imagen puts more at
            low resolution).
        attention_resolutions: resolutions (feature-map sides) with self-attention.
        num_heads: attention heads (default: :func:`heads_and_groups` of ``channels``).
        dropout: dropout inside ResBlocks.
        groups: GroupNorm groups, must divide every width (default: :func:`heads_and_groups`).
        scale_shift: time embedding as FiLM ``h * (1 + scale) + shift`` (True) or added (False).
        cond_dim: width of an optional pooled conditioning vector (chapter 5).
        context_dim: width of optional text tokens for cross-attention (chapter 5).
        cross_attention_resolutions: where cross-attention sits (default: attention_resolutions).
        lowres_channels: channels of an optional low-resolution conditioning image (super-resolution).
        context_positions: if > 0, a learned position embedding (initialised to sinusoids) is
            added to the first ``context_positions`` text tokens before cross-attention, so that
            *where* a word sits in the caption (which object comes first) is as easy to read as
            *which* word it is (0: off; chapter 5).
    """

    image_size: int = 32
    in_channels: int = 3
    out_channels: int | None = None
    channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int | tuple[int, ...] = 1
    attention_resolutions: tuple[int, ...] = (8,)
    num_heads: int | None = None
    dropout: float = 0.0
    groups: int | None = None
    scale_shift: bool = True
    cond_dim: int | None = None
    context_dim: int | None = None
    cross_attention_resolutions: tuple[int, ...] | None = None
    lowres_channels: int | None = None
    context_positions: int = 0

    def __post_init__(self):
        if self.num_heads is None or self.groups is None:
            heads, groups = heads_and_groups(self.channels)
            self.num_heads = heads if self.num_heads is None else self.num_heads
            self.groups = groups if self.groups is None else self.groups
        self.channel_mults = tuple(int(m) for m in self.channel_mults)
        self.attention_resolutions = tuple(int(r) for r in self.attention_resolutions)
        if self.cross_attention_resolutions is not None:
            self.cross_attention_resolutions = tuple(int(r) for r in self.cross_attention_resolutions)
        if isinstance(self.num_res_blocks, (list, tuple)):
            self.num_res_blocks = tuple(int(n) for n in self.num_res_blocks)
        for name in ("image_size", "in_channels", "channels", "num_heads", "groups"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"UNetConfig.{name} must be a positive int, got {v!r}")
        if not self.channel_mults or min(self.channel_mults) < 1:
            raise ValueError(f"channel_mults must be positive ints, got {self.channel_mults}")
        n_levels = len(self.channel_mults)
        if self.image_size % (2 ** (n_levels - 1)):
            raise ValueError(f"image_size={self.image_size} must be divisible by 2**(levels-1)="
                             f"{2 ** (n_levels - 1)} for channel_mults={self.channel_mults}")
        if self.res_blocks_per_level() and len(self.res_blocks_per_level()) != n_levels:
            raise ValueError(f"num_res_blocks {self.num_res_blocks} needs one entry per level ({n_levels})")
        for m in self.channel_mults:
            if (self.channels * m) % self.groups or (self.channels * m) % self.num_heads:
                raise ValueError(f"width {self.channels * m} must be divisible by groups={self.groups} "
                                 f"and num_heads={self.num_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not isinstance(self.context_positions, int) or self.context_positions < 0:
            raise ValueError(f"context_positions must be an int >= 0, got {self.context_positions!r}")
        if self.context_positions and self.context_dim is None:
            raise ValueError("context_positions needs context_dim (text tokens to add positions to)")

    def res_blocks_per_level(self) -> tuple[int, ...]:
        n = self.num_res_blocks
        return tuple(n) if isinstance(n, tuple) else (int(n),) * len(self.channel_mults)

    def cross_resolutions(self) -> tuple[int, ...]:
        if self.context_dim is None:
            return ()
        r = self.cross_attention_resolutions
        return self.attention_resolutions if r is None else r


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv, time embedding (FiLM or add), GroupNorm-SiLU-Dropout-Conv, residual."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float = 0.0,
                 scale_shift: bool = True):
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out if scale_shift else c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """``x (B, c_in, H, W)``, ``emb (B, emb_dim)`` -> ``(B, c_out, H, W)``."""
        h = self.conv1(F.silu(self.norm1(x)))
        e = rearrange(self.emb(F.silu(emb)), "b c -> b c 1 1")
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SpatialAttention(nn.Module):
    """Self-attention over the ``H*W`` positions (or cross-attention to a context), residual.

    ``x + Attn(GroupNorm(x))``; for cross-attention the text tokens pass a LayerNorm before they
    become keys and values (Saharia et al. 2022 found Layer Normalization of the text embeddings in
    the attention layers helped considerably; chapter 5).
    Built on :class:`imagen_edu.attention.MultiHeadAttention` (chapter 1); no weights are
    requested, so it runs on torch's fused kernel.
    """

    def __init__(self, channels: int, num_heads: int, groups: int, context_dim: int | None = None):
        super().__init__()
        self.is_cross = context_dim is not None
        self.norm = nn.GroupNorm(groups, channels)
        self.attn = MultiHeadAttention(channels, num_heads, d_context=context_dim)
        self.context_norm = nn.LayerNorm(context_dim) if self.is_cross else None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x (B, C, H, W)`` [``context (B, L, D)``, ``context_mask (B, L)``] -> ``(B, C, H, W)``."""
        _, _, h, w = x.shape
        q = rearrange(self.norm(x), "b c h w -> b (h w) c")
        if self.is_cross:
            out, _ = self.attn(q, self.context_norm(context), key_mask=context_mask, need_weights=False)
        else:
            out, _ = self.attn(q, need_weights=False)
        return x + rearrange(out, "b (h w) c -> b c h w", h=h, w=w)


class _Downsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class _Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One ResBlock with its optional self- and cross-attention."""

    def __init__(self, res: ResBlock, attn: SpatialAttention | None, cross: SpatialAttention | None):
        super().__init__()
        self.res, self.attn, self.cross = res, attn, cross

    def forward(self, h, emb, context, context_mask):
        h = self.res(h, emb)
        if self.attn is not None:
            h = self.attn(h)
        if self.cross is not None:
            h = self.cross(h, context, context_mask)
        return h


class UNet(nn.Module):
    """The denoiser ``f(x_t, t, **cond) -> (B, out_channels, H, W)`` (predicts eps, x0 or v).

    Derived in chapter 3 (Section "A U-Net for images"); chapter 5 adds text conditioning.
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        if not isinstance(config, UNetConfig):
            raise TypeError(f"config must be a UNetConfig, got {type(config).__name__}")
        self.config = c = config
        ch, g = c.channels, c.groups
        emb_dim = 4 * ch
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.cond_proj = nn.Linear(c.cond_dim, emb_dim) if c.cond_dim else None
        self.context_pos = None
        if c.context_positions:
            self.context_pos = nn.Parameter(sinusoidal_positions(c.context_positions, c.context_dim))
        self.noise_level_mlp = (nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
                                if c.lowres_channels else None)
        in_ch = c.in_channels + (c.lowres_channels or 0)
        self.input_conv = nn.Conv2d(in_ch, ch, 3, padding=1)

        cross_res = c.cross_resolutions()

        def level(c_in, c_out, res):
            attn = SpatialAttention(c_out, c.num_heads, g) if res in c.attention_resolutions else None
            cross = SpatialAttention(c_out, c.num_heads, g, c.context_dim) if res in cross_res else None
            return _Level(ResBlock(c_in, c_out, emb_dim, g, c.dropout, c.scale_shift), attn, cross)

        blocks = c.res_blocks_per_level()
        self.down = nn.ModuleList()
        skip_ch, cur, res = [ch], ch, c.image_size
        for i, mult in enumerate(c.channel_mults):
            for _ in range(blocks[i]):
                self.down.append(level(cur, ch * mult, res))
                cur = ch * mult
                skip_ch.append(cur)
            if i < len(c.channel_mults) - 1:
                self.down.append(_Downsample(cur))
                skip_ch.append(cur)
                res //= 2
        self.mid = nn.ModuleList([level(cur, cur, res), level(cur, cur, -1)])
        if res not in c.attention_resolutions:  # the middle always has self-attention
            self.mid[0].attn = SpatialAttention(cur, c.num_heads, g)
        self.up = nn.ModuleList()
        for i, mult in reversed(list(enumerate(c.channel_mults))):
            for _ in range(blocks[i] + 1):
                self.up.append(level(cur + skip_ch.pop(), ch * mult, res))
                cur = ch * mult
            if i > 0:
                self.up.append(_Upsample(cur))
                res *= 2
        self.out_norm = nn.GroupNorm(g, cur)
        self.out_conv = nn.Conv2d(cur, c.out_channels or c.in_channels, 3, padding=1)
        nn.init.zeros_(self.out_conv.weight)  # zero-initialised output: the untrained net predicts 0
        nn.init.zeros_(self.out_conv.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, *, cond: torch.Tensor | None = None,
                context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
                lowres: torch.Tensor | None = None,
                lowres_noise_level: torch.Tensor | None = None) -> torch.Tensor:
        """Predict from ``x (B, C, H, W)`` at timesteps ``t (B,)``.

        Args:
            cond: ``(B, cond_dim)`` pooled conditioning (needed iff ``config.cond_dim``).
            context: ``(B, L, context_dim)`` text tokens (needed iff ``config.context_dim``).
            context_mask: ``(B, L)`` bool, True = real token (default all True).
            lowres: ``(B, lowres_channels, h, w)`` low-resolution image (needed iff
                ``config.lowres_channels``), in [-1, 1]; upsampled bilinearly to ``(H, W)``.
            lowres_noise_level: ``(B,)`` augmentation level in [0, 1] (default 0).

        Returns:
            ``(B, out_channels, H, W)``.
        """
        c = self.config
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"x must be a tensor (B, C, H, W), got {getattr(x, 'shape', type(x).__name__)}")
        b, ch_in, h, w = x.shape
        if ch_in != c.in_channels or h != c.image_size or w != c.image_size:
            raise ValueError(f"x must be (B, {c.in_channels}, {c.image_size}, {c.image_size}) for this "
                             f"UNet, got {tuple(x.shape)}")
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(b)
        if t.shape != (b,):
            raise ValueError(f"t must be (B,) = ({b},), got {tuple(t.shape)}")
        emb = self.time_mlp(timestep_embedding(t, c.channels))

        if self.cond_proj is not None:
            if cond is None or cond.shape != (b, c.cond_dim):
                raise ValueError(f"this UNet needs cond of shape (B, cond_dim) = {(b, c.cond_dim)}, got "
                                 f"{None if cond is None else tuple(cond.shape)}")
            emb = emb + self.cond_proj(cond)
        elif cond is not None:
            raise ValueError("this UNet has no cond_dim: build it with UNetConfig(cond_dim=...) to pass cond")

        if c.context_dim is not None:
            if context is None or context.dim() != 3 or context.shape[0] != b or context.shape[2] != c.context_dim:
                raise ValueError(f"this UNet needs context of shape (B, L, context_dim) = ({b}, L, "
                                 f"{c.context_dim}), got {None if context is None else tuple(context.shape)}")
            if context_mask is None:
                context_mask = torch.ones(context.shape[:2], dtype=torch.bool, device=x.device)
            if context_mask.dtype != torch.bool or context_mask.shape != context.shape[:2]:
                raise ValueError(f"context_mask must be bool (B, L) = {tuple(context.shape[:2])}, got "
                                 f"{context_mask.dtype} {tuple(context_mask.shape)}")
            if self.context_pos is not None:
                if context.shape[1] > c.context_positions:
                    raise ValueError(f"context has {context.shape[1]} tokens but the U-Net has position embeddings "
                                     f"for {c.context_positions} (UNetConfig.context_positions)")
                context = context + self.context_pos[: context.shape[1]].to(context.dtype)
        elif context is not None or context_mask is not None:
            raise ValueError("this UNet has no cross-attention: build it with UNetConfig(context_dim=...)")

        if c.lowres_channels:
            if lowres is None or lowres.dim() != 4 or lowres.shape[:2] != (b, c.lowres_channels):
                raise ValueError(f"this super-resolution UNet needs lowres (B, {c.lowres_channels}, h, w), got "
                                 f"{None if lowres is None else tuple(lowres.shape)}")
            up = F.interpolate(lowres, size=(h, w), mode="bilinear", align_corners=False)
            x = torch.cat([x, up.to(x.dtype)], dim=1)
            if lowres_noise_level is None:
                lowres_noise_level = torch.zeros(b, device=x.device)
            lowres_noise_level = torch.as_tensor(lowres_noise_level, device=x.device, dtype=torch.float32)
            if lowres_noise_level.dim() == 0:
                lowres_noise_level = lowres_noise_level.expand(b)
            if lowres_noise_level.shape != (b,):
                raise ValueError(f"lowres_noise_level must be (B,) = ({b},), got {tuple(lowres_noise_level.shape)}")
            emb = emb + self.noise_level_mlp(timestep_embedding(lowres_noise_level * NOISE_LEVEL_SCALE,
                                                                         c.channels))
        elif lowres is not None:
            raise ValueError("this UNet has no lowres input: build it with UNetConfig(lowres_channels=...)")

        h_ = self.input_conv(x)
        skips = [h_]
        for mod in self.down:
            h_ = mod(h_) if isinstance(mod, _Downsample) else mod(h_, emb, context, context_mask)
            skips.append(h_)
        for mod in self.mid:
            h_ = mod(h_, emb, context, context_mask)
        for mod in self.up:
            if isinstance(mod, _Upsample):
                h_ = mod(h_)
            else:  # Efficient U-Net: skip connections scaled by 1/sqrt(2)
                h_ = mod(torch.cat([h_, skips.pop() * 2 ** -0.5], dim=1), emb, context, context_mask)
        return self.out_conv(F.silu(self.out_norm(h_)))


# ---------------------------------------------------------------------------------------------
# Saving and loading (safetensors, atomic)
# ---------------------------------------------------------------------------------------------
def save_unet(model: UNet, path, extra: dict | None = None) -> Path:
    """Write ``model``'s weights and config to ``path`` (safetensors, atomically: see
    :func:`imagen_edu.checkpoints.save`). ``extra`` is any JSON-ready dict stored beside them."""
    return checkpoints.save(path, model.state_dict(),
                            {"unet_config": asdict(model.config), "extra": extra or {}})


def load_unet(path, device="cpu") -> tuple[UNet, dict]:
    """Load a :func:`save_unet` file: returns ``(model in eval mode, extra dict)``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no checkpoint at {path}")
    state, meta = checkpoints.load(path)
    if "unet_config" not in meta:
        raise ValueError(f"{path} is not a UNet checkpoint written by save_unet (no unet_config metadata)")
    cfg = dict(meta["unet_config"])
    for k in ("channel_mults", "attention_resolutions", "cross_attention_resolutions", "num_res_blocks"):
        if isinstance(cfg.get(k), list):
            cfg[k] = tuple(cfg[k])
    model = UNet(UNetConfig(**cfg))
    model.load_state_dict(state)
    return model.to(device).eval(), meta.get("extra", {})
