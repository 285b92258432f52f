"""Base stage with a gated feed-forward (GEGLU) after every cross-attention (a U-Net text-path lever)."""
import json, sys, time, torch
import torch.nn as nn, torch.nn.functional as F
torch.set_num_threads(1)
from imagen_edu import configs, evaluate, text_encoders, unet
from imagen_edu.stage_training import train_stage

class GEGLU(nn.Module):
    def __init__(self, c, groups, mult=2):
        super().__init__()
        self.norm = nn.GroupNorm(groups, c)
        self.proj = nn.Conv2d(c, 2 * mult * c, 1)
        self.out = nn.Conv2d(mult * c, c, 1)
        nn.init.zeros_(self.out.weight); nn.init.zeros_(self.out.bias)
    def forward(self, x):
        a, g = self.proj(self.norm(x)).chunk(2, dim=1)
        return x + self.out(a * F.gelu(g))

orig_init, orig_fwd = unet._Level.__init__, unet._Level.forward
def init(self, res, attn, cross):
    orig_init(self, res, attn, cross)
    if cross is not None:
        c = cross.norm.num_channels
        self.ff = GEGLU(c, cross.norm.num_groups)
def fwd(self, h, emb, context, context_mask):
    h = orig_fwd(self, h, emb, context, context_mask)
    return self.ff(h) if hasattr(self, "ff") else h
unet._Level.__init__, unet._Level.forward = init, fwd

enc_name, out, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
enc = text_encoders.get(enc_name)
cfg = configs.stage_config("base", "cpu")
D = enc.dim
cfg = cfg.replace(text_encoder=enc_name, text_dim=D, unet={"cond_dim": D, "context_dim": D}, max_seconds=seconds)
t0 = time.time()
res = train_stage(cfg, enc, out_dir=out, progress=False, overwrite=True)
r = evaluate.relation_loss_test(res["stage"], enc, n=256)
print(json.dumps({"steps": res["steps"], "seconds": round(time.time() - t0), "params": sum(p.numel() for p in res["stage"].parameters()),
                  **{k: [round(x, 4) for x in v] for k, v in r.items() if k != "t_ranges"}}), flush=True)
