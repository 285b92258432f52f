"""The paper's text-encoder findings at toy scale (chapter 5c): one base stage per row, judged at 16 px.

usage: python experiments/text_encoder/findings.py TABLE OUT.json [--steps 1000] [--n 100] [--jobs 2]
           [--work runs/findings]

TABLE is one of
  encoder  which frozen encoder (Saharia et al. 2022, Fig. 4a and A.5): word embeddings alone, chapter 2's
           causal LM, lm+words, chapter 4's CLIP text tower, the toy T5 at random initialisation (the
           control) and pretrained at 32, 64 (shipped) and 128 wide, and the oracle rewrite;
  size     encoder size against U-Net size (Fig. 4b, A.13b): the toy T5 32, 64 (shipped) and 128 wide,
           each read by the cpu base U-Net at 16 and at 32 channels;
  pooling  how the U-Net reads the text (Fig. A.13a): a mean-pooled vector only, an attention-pooled
           vector only, and cross-attention (with the mean-pooled vector, the shipped path).

Every row trains the cpu profile's base stage from scratch for the same number of steps (the cosine
schedule's full length, no time cap: rows on a busy or a free machine train the same), seed 0, one
thread, `--jobs` rows side by side (`configs.comparison_stage`); then samples one image per caption
for `--n` test and `--n` held-out captions (`evaluate.evaluate_stage`, the stage's own sampling
defaults, seed 0) and judges them at the base stage's 16 px; and measures `evaluate.relation_loss_test`. The base stage
alone is judged so that no super-resolution stage (which reads the shipped encoder) can mend or
spoil what the row's encoder gave. The toy T5 variants are pretrained first with the cascade's
recipe (`t5_pretraining.CASCADE_ENCODER`, widths as in probe_table.py) into `--work`, and each
finished row is kept there (`rows/<key>.json`), so a row shared by two tables (same encoder, U-Net,
steps and n) is trained once and an interrupted table resumes. Writes OUT.json and prints one line
per row.
"""
import argparse, concurrent.futures as cf, dataclasses, hashlib, json, multiprocessing, sys, time
from pathlib import Path

import torch

from probe_table import ClipTokens, WordsOnly, t5_model

TABLES = {
    "encoder": [
        ("word embeddings only (bag of words)", {"encoder": "words"}),
        ("chapter 2's causal LM (lm)", {"encoder": "lm"}),
        ("lm+words", {"encoder": "lm+words"}),
        ("chapter 4's CLIP text tower, per token", {"encoder": "clip"}),
        ("toy T5 64-wide, random initialisation (control)", {"encoder": "t5-random"}),
        ("toy T5 32-wide", {"encoder": "t5-32"}),
        ("toy T5 64-wide (shipped)", {"encoder": "toyt5"}),
        ("toy T5 128-wide", {"encoder": "t5-128"}),
        ("oracle: canonical:toyt5 (rewritten captions)", {"encoder": "canonical:toyt5"}),
    ],
    "size": [
        (f"toy T5 {d}-wide{' (shipped)' if d == 64 else ''}, U-Net {c} channels",
         {"encoder": "toyt5" if d == 64 else f"t5-{d}", "channels": c})
        for d in (32, 64, 128) for c in (16, 32)
    ],
    "pooling": [
        ("mean-pooled vector only", {"encoder": "toyt5", "cross": False, "pooling": "mean"}),
        ("attention-pooled vector only", {"encoder": "toyt5", "cross": False, "pooling": "attention"}),
        ("cross-attention + mean-pooled vector (shipped)", {"encoder": "toyt5"}),
    ],
}
CHANNELS = 32  # the cpu base stage's width (profiles.CPU_STAGES)


def full_spec(spec):
    """A row's spec with every default filled in, so that equal rows of two tables have one key."""
    return {"encoder": spec["encoder"], "channels": spec.get("channels", CHANNELS),
            "cross": spec.get("cross", True), "pooling": spec.get("pooling", "mean")}


class Named:
    """An encoder object that is not in the registry, with the ``name`` and ``dim`` a stage needs."""

    def __init__(self, name, inner, dim):
        self.name, self.inner, self.dim = name, inner, dim

    def encode(self, texts):
        return self.inner.encode(texts)


def t5_path(work, d):
    return Path(work) / f"t5_{d}.safetensors"


def t5_recipe(d):
    from imagen_edu import t5_pretraining as P
    return {**P.CASCADE_ENCODER, "model": t5_model(d)}


def pretrain_t5(args):
    work, d = args
    torch.set_num_threads(1)
    from imagen_edu import t5, t5_pretraining as P
    start = time.perf_counter()
    cfg = P.PretrainConfig(**t5_recipe(d))
    model, tok, _ = P.pretrain(cfg, progress=False, threads=1)
    t5.save_t5(t5_path(work, d), model, tok, cfg.to_dict(), {"by": "experiments/text_encoder/findings.py"})
    return d, round(time.perf_counter() - start, 1)


def build_encoder(name, work):
    from imagen_edu import clip, t5, t5_pretraining as P, text_encoders
    if name == "words":
        lm = text_encoders.get("lm")
        return Named("words", WordsOnly(lm), lm.dim)
    if name == "clip":
        tower = ClipTokens(clip.load_shipped())
        dim = tower.model.text_encoder.tok_emb.weight.shape[1]
        return Named("clip", tower, dim)
    if name == "t5-random":
        model, tok, _ = t5.load_t5(P.checkpoints.verify(P.SHIPPED_NAME))
        torch.manual_seed(0)
        return text_encoders.ToyT5Encoder(t5.T5(dataclasses.replace(model.config)).eval(), tok)
    if name.startswith("t5-"):
        return text_encoders.get(f"toyt5:{t5_path(work, int(name[3:]))}")
    return text_encoders.get(name)


def run_row(args):
    label, spec, steps, n, work = args
    torch.set_num_threads(1)
    from imagen_edu import configs, evaluate
    from imagen_edu.stage_training import train_stage
    enc = build_encoder(spec["encoder"], work)
    cfg = configs.comparison_stage(spec["encoder"], enc.dim, channels=spec["channels"], cross=spec["cross"],
                                   pooling=spec["pooling"], steps=steps)
    res = train_stage(cfg, encoder=enc, progress=False)
    stage = res["stage"]
    ev = evaluate.evaluate_stage(stage, enc, n)
    rl = evaluate.relation_loss_test(stage, enc)
    return {"label": label, "spec": spec, "steps": res["steps"], "train_seconds": round(res["seconds"], 1),
            "images_per_s": round(res["images_per_s"], 1), "text_dim": enc.dim,
            "n_params": sum(p.numel() for p in stage.parameters()), "eval": ev, "relation_loss": rl,
            "flipped_over_true_large_t": round(rl["flipped"][-1] / rl["true"][-1], 3)}


def row_key(spec, steps, n):
    return hashlib.sha256(json.dumps([spec, steps, n], sort_keys=True).encode()).hexdigest()[:16]


def show(r):
    t, h = r["eval"]["test"], r["eval"]["heldout"]
    print(f"{r['label']:<50} steps {r['steps']} | test all {t['all']:.2f} colour {t['colour']:.2f} shape "
          f"{t['shape']:.2f} count {t['count']:.2f} relation {t['relation']:.2f} | held-out all {h['all']:.2f} "
          f"relation {h['relation']:.2f} | flipped/true {r['flipped_over_true_large_t']:.2f}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("table", choices=sorted(TABLES))
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--work", default="runs/findings")
    args = ap.parse_args()
    if args.steps < 1 or args.n < 2 or args.jobs < 1:
        ap.error("--steps and --jobs must be at least 1, --n at least 2")
    out = Path(args.out)
    if out.exists():
        ap.error(f"{out} exists: remove it or choose another OUT (nothing was run)")
    work = Path(args.work)
    (work / "rows").mkdir(parents=True, exist_ok=True)
    rows = [(label, full_spec(spec)) for label, spec in TABLES[args.table]]
    ctx = multiprocessing.get_context("spawn")
    need = sorted({int(s["encoder"][3:]) for _, s in rows if s["encoder"][3:].isdigit()})
    need = [d for d in need if not t5_path(work, d).is_file()]
    pretrain_seconds = {}
    if need:
        with cf.ProcessPoolExecutor(min(args.jobs, len(need)), mp_context=ctx) as pool:
            for d, sec in pool.map(pretrain_t5, [(str(work), d) for d in need]):
                pretrain_seconds[d] = sec
                print(f"pretrained the toy T5 {d}-wide in {sec} s", flush=True)
    results, todo = {}, []
    for label, spec in rows:
        f = work / "rows" / f"{row_key(spec, args.steps, args.n)}.json"
        if f.is_file():
            results[label] = {**json.loads(f.read_text()), "label": label}
            show(results[label])
        else:
            todo.append((label, spec, args.steps, args.n, str(work)))
    with cf.ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
        futures = {pool.submit(run_row, job): job for job in todo}
        for fut in cf.as_completed(futures):
            r = fut.result()
            key = row_key(r["spec"], args.steps, args.n)
            (work / "rows" / f"{key}.json").write_text(json.dumps(r, indent=1) + "\n")
            results[r["label"]] = r
            show(r)
    t5s = {d: {"recipe": t5_recipe(d), "file": str(t5_path(work, d))} for d in (32, 128)
           if any(s["encoder"] == f"t5-{d}" for _, s in rows)}
    doc = {"command": "python experiments/text_encoder/findings.py " + " ".join(sys.argv[1:]),
           "table": args.table, "steps": args.steps, "n": args.n, "seed": 0, "judged_at": 16,
           "toy_t5": t5s, "rows": [results[label] for label, _ in rows]}
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    tmp.replace(out)


if __name__ == "__main__":
    main()
