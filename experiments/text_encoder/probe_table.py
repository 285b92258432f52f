"""The linear-probe table of chapter 2b: what each frozen text encoder's states say about sides, read without any image.

usage: python experiments/text_encoder/probe_table.py OUT.json [--jobs 2]

For every encoder: `probe.side_probe` (test / held-out accuracy per axis, first-object accuracy)
and `probe.variance_share` (share of the object words' spread that the order and the side
explain). The encoders are the rows of the paper's encoder comparison (Saharia et al. 2022,
Fig. 4a and A.5) at toy scale: word embeddings alone (a bag of words), chapter 2's causal LM,
`lm+words`, chapter 4's CLIP text tower, the toy T5 at random initialisation (the control), the
toy T5 pretrained by span corruption alone and with the paraphrase term at three widths, and the
oracle rewrite. The T5 variants are pretrained here (`--jobs` at a time, one thread each, about
1-6 minutes each on a free core). Writes OUT.json and prints one line per encoder.
"""
import argparse, concurrent.futures as cf, dataclasses, json, sys, time

import torch


def t5_model(d):
    return dict(d_model=d, n_heads=max(2, d // 16), d_kv=16, d_ff=2 * d, n_layers=2, n_decoder_layers=2,
                num_buckets=16, max_distance=32)


def pretrain_job(args):
    label, kw = args
    torch.set_num_threads(1)
    from imagen_edu import t5_pretraining as P
    start = time.perf_counter()
    model, tok, _ = P.pretrain(P.PretrainConfig(**kw), progress=False)
    return label, kw, model, tok, time.perf_counter() - start


class WordsOnly:
    """A bag of words: each token's embedding in chapter 2's LM, no position, no context."""

    def __init__(self, lm_encoder):
        self.lm = lm_encoder

    @torch.no_grad()
    def encode(self, texts):
        ids, mask = self.lm.tokenizer.batch_encode(texts)
        return self.lm.model.tok_emb(ids) * mask[..., None], mask


class ClipTokens:
    """Chapter 4's CLIP text tower, read per token (its states before the <eos> read-out)."""

    def __init__(self, model):
        self.model = model.eval()

    @torch.no_grad()
    def encode(self, texts):
        ids, mask = self.model.tokenize(texts)
        t = self.model.text_encoder
        return t.transformer(t.pos(t.tok_emb(ids)), key_mask=mask) * mask[..., None], mask


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    from imagen_edu import clip, probe, t5, t5_pretraining as P, text_encoders

    recipe = dict(P.CASCADE_ENCODER)
    span_only = {**recipe, "paraphrase_weight": 0.0}
    jobs = []
    for d in (32, 64, 128):
        jobs.append((f"toy T5 {d}-wide, span corruption only", {**span_only, "model": t5_model(d)}))
        if d != 64:   # the 64-wide one with the paraphrase term is the shipped encoder
            jobs.append((f"toy T5 {d}-wide, span corruption + paraphrase", {**recipe, "model": t5_model(d)}))
    rows = {}

    def measure(label, enc, offset, extra=None):
        with torch.no_grad():
            r, s = probe.side_probe(enc, offset), probe.variance_share(enc, offset)
        rows[label] = {"probe": r, "share": s, **(extra or {})}
        print(f"{label:<50} probe h {r['horizontal']['test']:.2f} v {r['vertical']['test']:.2f} "
              f"first {r['first_object']:.2f} | side share h {s['horizontal']['side']:.4f} "
              f"v {s['vertical']['side']:.4f} order h {s['horizontal']['order']:.4f}", flush=True)

    torch.set_num_threads(1)
    lm = text_encoders.get("lm")
    measure("word embeddings only (bag of words)", WordsOnly(lm), 1)
    measure("chapter 2's causal LM (lm)", lm, 1)
    measure("lm+words", text_encoders.get("lm+words"), 1)
    measure("chapter 4's CLIP text tower, per token", ClipTokens(clip.load_shipped()), 1)
    ship = t5.load_t5(P.checkpoints.verify(P.SHIPPED_NAME))
    torch.manual_seed(0)
    rand = t5.T5(dataclasses.replace(ship[0].config))
    measure("toy T5 64-wide, random initialisation (control)", text_encoders.ToyT5Encoder(rand, ship[1]), 0)
    measure("toy T5 64-wide, span corruption + paraphrase (shipped)", text_encoders.get("toyt5"), 0,
            {"config": ship[2]["pretrain"]})
    measure("oracle: canonical:lm+words", text_encoders.get("canonical:lm+words"), 1)
    with cf.ProcessPoolExecutor(args.jobs) as pool:
        for label, kw, model, tok, seconds in pool.map(pretrain_job, jobs):
            measure(label, text_encoders.ToyT5Encoder(model, tok), 0,
                    {"config": P.PretrainConfig(**kw).to_dict(), "pretrain_seconds": round(seconds, 1),
                     "n_params": model.num_params()})
    with open(args.out, "w") as f:
        json.dump({"command": "python experiments/text_encoder/probe_table.py " + " ".join(sys.argv[1:]),
                   "rows": rows}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
