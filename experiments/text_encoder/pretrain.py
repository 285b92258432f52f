"""Pretrain a toy T5 variant (PretrainConfig fields as JSON; optional AdamW weight decay), save it, print probe figures."""
import json, sys, time, torch
torch.set_num_threads(1)
import dataclasses
from imagen_edu import probe, t5, t5_pretraining as P, text_encoders
tag = sys.argv[1]; kw = json.loads(sys.argv[2]); wd = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
orig = P.PretrainConfig.train_config
def tc(self):
    return dataclasses.replace(orig(self), weight_decay=wd)
P.PretrainConfig.train_config = tc
cfg = P.PretrainConfig(**kw)
t0 = time.time()
model, tok, tr = P.pretrain(cfg, progress=False)
path = tag
t5.save_t5(path, model, tok, cfg.to_dict())
enc = text_encoders.ToyT5Encoder(model, tok)
print(json.dumps({"tag": tag, "wd": wd, "seconds": round(time.time() - t0), "final_loss": round(sum(tr.losses[-50:]) / 50, 4),
                  "probe": probe.side_probe(enc, 0), "share": probe.variance_share(enc, 0)}), flush=True)
