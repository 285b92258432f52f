"""Base stage with one of Imagen's U-Net text-path variants patched in (not yet package options).

usage: python experiments/text_encoder/unet_text_path.py VARIANT ENCODER OUT SECONDS [STAGE_FIELDS_JSON]

VARIANT:
  selfkv    the text tokens (LayerNorm, then a linear map to the block's width) are concatenated
            to the keys and values of every self-attention layer (8 and 4 px in the cpu base), as
            in Imagen's low-resolution blocks (Saharia et al. 2022, Appendix B), besides the
            cross-attention layers the U-Net already has;
  coords    two coordinate channels (x, y in [-1, 1]) concatenated to the U-Net's input, so that
            every pixel knows where it is from the first layer (a control: is the position the
            bottleneck?);
  posq      a learned absolute position embedding (one vector per pixel, per cross-attention
            layer) added to the normalised image features that become the cross-attention
            queries, so that a pixel can ask for "the object on my side" from the first step;
  plain     the package's U-Net unchanged (the same script, for a like-for-like budget).

STAGE_FIELDS_JSON (optional): StageConfig fields changed on top, e.g. '{"batch_size": 16}'.

Trains the cpu base stage for SECONDS (one thread), then prints JSON with the steps and
``evaluate.relation_loss_test`` (true / relation-flipped / null caption loss per range of t).
"""
import json
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(1)
from imagen_edu import configs, evaluate, text_encoders, unet  # noqa: E402
from imagen_edu.stage_training import train_stage  # noqa: E402

variant, enc_name, out, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
changes = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
if variant not in ("selfkv", "coords", "posq", "plain"):
    sys.exit(f"unet_text_path.py: error: VARIANT must be selfkv, coords, posq or plain, got {variant!r}")

orig_unet_init = unet.UNet.__init__
orig_level_fwd = unet._Level.forward


def selfkv_init(self, config):
    orig_unet_init(self, config)
    D = config.context_dim
    for mod in self.modules():
        if isinstance(mod, unet._Level) and mod.attn is not None:
            c = mod.attn.norm.num_channels
            mod.attn.text_kv = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, c))


def selfkv_level_fwd(self, h, emb, context, context_mask):
    if self.attn is None or not hasattr(self.attn, "text_kv"):
        return orig_level_fwd(self, h, emb, context, context_mask)
    h = self.res(h, emb)
    a = self.attn
    b, c, hh, ww = h.shape
    q = a.norm(h).flatten(2).transpose(1, 2)  # (B, HW, C)
    kv = torch.cat([q, a.text_kv(context)], dim=1)  # image tokens, then text tokens
    km = torch.cat([torch.ones(b, hh * ww, dtype=torch.bool, device=h.device), context_mask], dim=1)
    out, _ = a.attn(q, kv, key_mask=km, need_weights=False)
    h = h + out.transpose(1, 2).reshape(b, c, hh, ww)
    if self.cross is not None:
        h = self.cross(h, context, context_mask)
    return h


class CoordConv(nn.Module):
    """The input convolution with two coordinate channels appended to its input."""

    def __init__(self, old: nn.Conv2d):
        super().__init__()
        self.conv = nn.Conv2d(old.in_channels + 2, old.out_channels, 3, padding=1)

    def forward(self, x):
        b, _, h, w = x.shape
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        grid = torch.stack([xs, ys])[None].expand(b, 2, h, w).to(x)
        return self.conv(torch.cat([x, grid], dim=1))


def coords_init(self, config):
    orig_unet_init(self, config)
    self.input_conv = CoordConv(self.input_conv)


orig_attn_fwd = unet.SpatialAttention.forward


def posq_init(self, config):
    orig_unet_init(self, config)
    crosses = [m for m in self.modules() if isinstance(m, unet.SpatialAttention) and m.is_cross]
    sizes = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args: sizes.setdefault(mod, args[0].shape[-2:]) and None)
             for m in crosses]
    with torch.no_grad():  # one dummy pass to learn each cross-attention layer's resolution
        c = config
        x = torch.zeros(1, c.in_channels, c.image_size, c.image_size)
        kw = dict(context=torch.zeros(1, 2, c.context_dim))
        if c.cond_dim:
            kw["cond"] = torch.zeros(1, c.cond_dim)
        if c.lowres_channels:
            kw["lowres"] = torch.zeros(1, c.lowres_channels, c.image_size, c.image_size)
        self(x, torch.zeros(1, dtype=torch.long), **kw)
    for h in hooks:
        h.remove()
    g = torch.Generator().manual_seed(1234)
    for m in crosses:
        hh, ww = sizes[m]
        m.query_pos = nn.Parameter(0.3 * torch.randn(hh * ww, m.norm.num_channels, generator=g))


def posq_attn_fwd(self, x, context=None, context_mask=None):
    if not hasattr(self, "query_pos"):
        return orig_attn_fwd(self, x, context, context_mask)
    _, _, h, w = x.shape
    q = self.norm(x).flatten(2).transpose(1, 2) + self.query_pos  # (B, HW, C)
    out, _ = self.attn(q, self.context_norm(context), key_mask=context_mask, need_weights=False)
    return x + out.transpose(1, 2).reshape(x.shape)


if variant == "posq":
    unet.UNet.__init__, unet.SpatialAttention.forward = posq_init, posq_attn_fwd
elif variant == "selfkv":
    unet.UNet.__init__, unet._Level.forward = selfkv_init, selfkv_level_fwd
elif variant == "coords":
    unet.UNet.__init__ = coords_init

enc = text_encoders.get(enc_name)
cfg = configs.stage_config("base", "cpu")
D = enc.dim
cfg = cfg.replace(text_encoder=enc_name, text_dim=D, unet={"cond_dim": D, "context_dim": D}, max_seconds=seconds, **changes)
t0 = time.time()
res = train_stage(cfg, enc, out_dir=out, progress=False, overwrite=True)
r = evaluate.relation_loss_test(res["stage"], enc, n=256)
ratio = r["flipped"][-1] / r["true"][-1]
print(json.dumps({"variant": variant, "encoder": enc_name, "changes": changes, "steps": res["steps"], "seconds": round(time.time() - t0),
                  "params": sum(p.numel() for p in res["stage"].parameters()), "ratio_large_t": round(ratio, 4),
                  **{k: [round(x, 4) for x in v] for k, v in r.items() if k != "t_ranges"}}), flush=True)
