"""Pretrain a toy T5 by span corruption plus a paraphrase-contrastive loss (text only), save it, print the probe.

usage: python experiments/text_encoder/paraphrase.py OUT.safetensors '{"corpus": "described", "steps": 3000, ...}' [WEIGHT] [TAU] [INIT.safetensors]

The contrastive term (imagen_edu.t5_pretraining.paraphrase_loss): for each two-object fact, its caption and its converse say the same thing in
two ways ("A right of B", "B left of A"); each object's encoder states (colour and shape words,
LayerNormed, averaged, unit length) in one phrasing must pick the same object in the other phrasing
out of every object of the batch's other phrasings (InfoNCE at temperature TAU, both ways). The
batch holds each fact with its mirrored fact ("A left of B"), whose objects have the same words but
the other sides: telling them apart needs each object's side in its states, since neither the
word order nor the relation word is shared by the two phrasings of one fact.
"""
import json, sys, time

import torch
import torch.nn.functional as F

from imagen_edu import probe, t5, t5_pretraining as P, text_encoders
from imagen_edu.data.text_corpus import text_corpus
from imagen_edu.train import Trainer
from imagen_edu.profiles import torch_threads

out = sys.argv[1]
kw = json.loads(sys.argv[2])      # PretrainConfig fields (paraphrase_facts, paraphrase_negatives, ...)
weight = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
tau = float(sys.argv[4]) if len(sys.argv) > 4 else 0.1

cfg = P.PretrainConfig(**kw)
docs = text_corpus(cfg.corpus)
tok = P.t5_tokenizer(docs, cfg.n_sentinels)
torch.manual_seed(cfg.seed)
model = t5.T5(t5.T5Config(vocab_size=tok.vocab_size, pad_id=tok.pad_id, **cfg.model))
if len(sys.argv) > 5:                                     # continue from a pretrained checkpoint
    model, tok, _ = t5.load_t5(sys.argv[5])
    model.train()
groups = P.paraphrase_groups(docs)


def loss_fn(m, batch):
    span, para = batch
    return m.loss(*span) + weight * P.paraphrase_loss(m, para, tau, cfg.paraphrase_negatives)


def batches(step, rank, world_size, generator):
    return P.span_batch(docs, tok, cfg, generator), P.paraphrase_batch(groups, tok, cfg, generator)


t0 = time.time()
trainer = Trainer(model, loss_fn, batches, cfg.train_config(), progress=False)
with torch_threads(1, "cpu"):
    trainer.train()
model.eval()
t5.save_t5(out, model, tok, {**cfg.to_dict(), "paraphrase_weight": weight, "paraphrase_tau": tau})
enc = text_encoders.ToyT5Encoder(model, tok)
print(json.dumps({"out": out, "weight": weight, "tau": tau, "seconds": round(time.time() - t0),
                  "final_loss": round(sum(trainer.losses[-50:]) / 50, 4),
                  "probe": probe.side_probe(enc, 0), "share": probe.variance_share(enc, 0)}), flush=True)
