"""Tests of imagen_edu.clip and imagen_edu.clip_eval: the contrastive loss of chapter 4, the encoders, the
uses of the model (zero-shot, retrieval, CLIP score), the shipped model and its command line."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from imagen_edu import REPO_ROOT, checkpoints, clip, clip_eval, evaluate, profiles
from imagen_edu.data.shapes import make_batch, render_captions
from imagen_edu.exercises import ch04
from imagen_edu.optim import lr_at


def reference_clip_loss(u, v, s):
    """The symmetric InfoNCE loss written with explicit loops (Eq. ch4-eq-infonce)."""
    b = u.shape[0]
    u = [x / math.sqrt(sum(float(y) ** 2 for y in x)) for x in u]
    v = [x / math.sqrt(sum(float(y) ** 2 for y in x)) for x in v]
    sim = [[s * sum(float(a) * float(c) for a, c in zip(u[i], v[j])) for j in range(b)] for i in range(b)]
    i2t = t2i = 0.0
    for i in range(b):
        i2t += -(sim[i][i] - math.log(sum(math.exp(sim[i][j]) for j in range(b))))   # row i: image -> captions
        t2i += -(sim[i][i] - math.log(sum(math.exp(sim[j][i]) for j in range(b))))   # column i: caption -> images
    return (i2t / b + t2i / b) / 2


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return clip.CLIPModel(clip.CLIPConfig(vocab_size=19, image_size=16, width=16, embed_dim=8, text_layers=1,
                                          text_heads=2)).eval()


@pytest.fixture(scope="module")
def shipped():
    return clip.load_shipped()


# ----------------------------------------------------------------------------------- the loss
@pytest.mark.parametrize("b,d,s", [(2, 3, 1.0), (5, 4, 14.3), (7, 8, 100.0)])
def test_clip_loss_matches_loop_reference(b, d, s):
    g = torch.Generator().manual_seed(b)
    u, v = torch.randn(b, d, generator=g, dtype=torch.float64), torch.randn(b, d, generator=g, dtype=torch.float64)
    got = clip.clip_loss(u, v, s)
    assert got.dim() == 0
    assert float(got) == pytest.approx(reference_clip_loss(u, v, s), rel=1e-9, abs=1e-9)


def test_clip_loss_matches_cross_entropy_of_logits_and_tensor_scale():
    """Eq. (ch4-eq-infonce): the mean of the two directions, (CE(rows) + CE(columns)) / 2, of the
    logits s * normalize(U) normalize(V)^T."""
    g = torch.Generator().manual_seed(1)
    u, v = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    s = torch.tensor(7.0)
    logits = clip.clip_logits(u, v, s)
    torch.testing.assert_close(logits, s * F.normalize(u, dim=1) @ F.normalize(v, dim=1).T)
    t = torch.arange(6)
    want = (F.cross_entropy(logits, t) + F.cross_entropy(logits.T, t)) / 2
    torch.testing.assert_close(clip.clip_loss(u, v, s), want)


def test_clip_loss_symmetric_in_its_two_directions():
    """InfoNCE symmetry: swapping images and captions leaves the loss unchanged, although each
    direction alone is not symmetric (a loss of one direction only fails here)."""
    g = torch.Generator().manual_seed(2)
    u, v = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    torch.testing.assert_close(clip.clip_loss(u, v, 10.0), clip.clip_loss(v, u, 10.0))
    # but each direction alone is not symmetric: the rows and columns give different cross-entropies
    logits = clip.clip_logits(u, v, 10.0)
    t = torch.arange(8)
    assert not torch.isclose(F.cross_entropy(logits, t), F.cross_entropy(logits.T, t))


def test_clip_loss_invariant_to_rescaling_embeddings():
    g = torch.Generator().manual_seed(3)
    u, v = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    a, c = torch.rand(6, 1, generator=g) * 10 + 0.1, torch.rand(6, 1, generator=g) * 10 + 0.1
    torch.testing.assert_close(clip.clip_loss(a * u, c * v, 5.0), clip.clip_loss(u, v, 5.0))
    # the logit scale itself is not a rescaling of the embeddings: it changes the loss
    assert not torch.isclose(clip.clip_loss(u, v, 5.0), clip.clip_loss(u, v, 50.0))


def test_clip_loss_tends_to_zero_for_aligned_batch_as_scale_grows():
    b = 6
    u = torch.eye(b, dtype=torch.float64)
    losses = [float(clip.clip_loss(u, 3 * u, s)) for s in (1.0, 10.0, 30.0, 100.0)]
    assert all(x > y for x, y in zip(losses, losses[1:])), losses
    assert losses[-1] < 1e-10
    # exact: each row is -log(e^s / (e^s + (B-1))) = log(1 + (B-1) e^{-s})
    assert losses[1] == pytest.approx(math.log(1 + (b - 1) * math.exp(-10.0)), rel=1e-9)


@pytest.mark.parametrize("b", [1, 2, 7, 32])
def test_clip_loss_is_log_b_for_identical_embeddings(b):
    """InfoNCE is the mean, not the sum, of its two directions: identical embeddings give log B
    (chance among B), where a sum would give 2 log B."""
    u = torch.randn(1, 5).expand(b, 5)
    assert float(clip.clip_loss(u, u.clone(), 37.0)) == pytest.approx(math.log(b), abs=1e-5)


def test_clip_loss_bad_inputs():
    u = torch.randn(4, 3)
    with pytest.raises(ValueError, match="same shape"):
        clip.clip_loss(u, torch.randn(5, 3), 1.0)
    with pytest.raises(ValueError, match="same shape"):
        clip.clip_loss(u, torch.randn(4, 2), 1.0)
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        clip.clip_loss(torch.randn(4), torch.randn(4), 1.0)
    with pytest.raises(TypeError, match="floating"):
        clip.clip_loss(torch.ones(4, 3, dtype=torch.long), torch.ones(4, 3, dtype=torch.long), 1.0)
    with pytest.raises(TypeError, match="torch.Tensor"):
        clip.clip_loss([[1.0]], torch.randn(1, 1), 1.0)


# ---------------------------------------------------------------------------------- the model
def test_config_validation():
    with pytest.raises(ValueError, match="multiple of 8"):
        clip.CLIPConfig(vocab_size=19, image_size=20)
    with pytest.raises(ValueError, match="positive int"):
        clip.CLIPConfig(vocab_size=0)
    with pytest.raises(TypeError, match="CLIPConfig"):
        clip.CLIPModel({"vocab_size": 19})


def test_shapes_and_normalisation(tiny):
    x, caps = make_batch(4, "train", 16, seed=0)
    u, v = tiny.encode_image(x), tiny.encode_text(caps)
    assert u.shape == v.shape == (4, 8)
    torch.testing.assert_close(u.norm(dim=1), torch.ones(4))
    logits = tiny(x, caps)
    assert logits.shape == (4, 4)
    torch.testing.assert_close(logits, tiny.logit_scale() * u @ v.T)
    torch.testing.assert_close(tiny.loss(x, caps), clip.clip_loss(u, v, tiny.logit_scale()))


def test_text_encoder_honours_the_mask(tiny):
    ids, mask = tiny.tokenize(["a red circle", "a blue square left of a green circle"])
    ref = tiny.encode_text(ids, mask)
    # pad further with arbitrary (non-pad) tokens that the mask marks as padding: nothing changes
    extra = torch.randint(4, 19, (2, 5), generator=torch.Generator().manual_seed(0))
    ids2 = torch.cat([ids, extra], dim=1)
    mask2 = torch.cat([mask, torch.zeros(2, 5, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(tiny.encode_text(ids2, mask2), ref)
    # ... and the first caption alone (no padding at all) has the same embedding as in the batch
    torch.testing.assert_close(tiny.encode_text(["a red circle"]), ref[:1])
    # while changing a real token does change it
    ids3 = ids.clone()
    ids3[0, 2] = tiny.tokenizer.stoi["green"]
    assert not torch.allclose(tiny.encode_text(ids3, mask)[0], ref[0])


def test_text_encoder_bad_inputs(tiny):
    ids, mask = tiny.tokenize(["a red circle"])
    with pytest.raises(TypeError, match="mask"):
        tiny.encode_text(ids, mask.long())
    with pytest.raises(ValueError, match="right padding"):
        tiny.encode_text(ids, torch.zeros_like(mask))
    with pytest.raises(ValueError, match=r"\[0, 19\)"):
        tiny.encode_text(ids + 100, mask)
    with pytest.raises(TypeError, match="single str"):
        tiny.encode_text("a red circle")
    with pytest.raises(ValueError, match="images"):
        tiny(torch.randn(2, 3, 16, 16), ["a red circle"])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tiny.encode_image(torch.randn(2, 1, 16, 16))


def test_logit_scale_init_and_clamp():
    """The learned temperature (CLIP, Section 2.5): t = log(1 / tau) starts at log(1 / 0.07) and the
    logit scale exp(t) is clamped at 100; the stored t is clamped to [0, log 100]."""
    m = clip.CLIPModel(clip.CLIPConfig(vocab_size=19, image_size=16, width=16, text_heads=2))
    assert float(m.logit_scale().detach()) == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        m.log_logit_scale.fill_(10.0)
    assert float(m.logit_scale().detach()) == pytest.approx(100.0, rel=1e-5)
    # beyond the clamp the scale gets no gradient (it cannot be pushed further)
    m.logit_scale().backward()
    assert float(m.log_logit_scale.grad) == 0.0
    m.clamp_logit_scale_()
    assert float(m.log_logit_scale.detach()) == pytest.approx(math.log(100.0), rel=1e-6)
    with torch.no_grad():
        m.log_logit_scale.fill_(-3.0)
    m.clamp_logit_scale_()
    assert float(m.log_logit_scale.detach()) == 0.0


def test_flip_caption():
    assert clip.flip_caption("a red circle left of a blue square") == "a red circle right of a blue square"
    assert clip.flip_caption("a red circle right of a blue square") == "a red circle left of a blue square"
    assert clip.flip_caption("a red circle above a blue square") == "a red circle above a blue square"
    assert clip.flip_caption("a cyan triangle") == "a cyan triangle"


# ------------------------------------------------------------------------------- training
def test_train_runs_the_chapter_recipe_bit_for_bit():
    """The chapter-4 recipe, now run by train.Trainer, step for step: a permutation slice of distinct
    pairs and a coin flip per pair for mirroring (both from ``Generator().manual_seed(seed)``), AdamW
    (betas (0.9, 0.98), weight decay 0.01 on every parameter), warm-up then cosine to 10% as
    ``LambdaLR`` computes it, gradient norm clipped to 1, the clamp of t after each step, no EMA.
    The hand-written loop gives the same losses and weights bit for bit."""
    cfg = clip.CLIPConfig(vocab_size=19, image_size=16, width=16, embed_dim=8, text_layers=1, text_heads=2)
    x, caps = make_batch(24, "train", 16, seed=0, two_object_fraction=1.0)
    steps, batch, lr, warm = 8, 8, 1e-2, 3

    def build():
        torch.manual_seed(0)
        return clip.CLIPModel(cfg)

    ref = build()
    tok = ref.tokenizer
    ids, mask = tok.batch_encode(caps)
    fids, fmask = tok.batch_encode([clip.flip_caption(c) for c in caps], max_len=ids.shape[1])
    gen = torch.Generator().manual_seed(5)
    opt = torch.optim.AdamW(ref.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_at(s, base_lr=1.0, warmup_steps=warm, total_steps=steps, min_lr_ratio=0.1))
    ref_losses = []
    with profiles.torch_threads(1):  # the recipe's default: one thread, as clip/lm.train use
        for _ in range(steps):
            idx = torch.randperm(len(caps), generator=gen)[:batch]
            f = torch.rand(batch, generator=gen) < 0.5
            xb = torch.where(f[:, None, None, None], x[idx].flip(-1), x[idx])
            b_ids, b_mask = torch.where(f[:, None], fids[idx], ids[idx]), torch.where(f[:, None], fmask[idx], mask[idx])
            value = ref.loss(xb, b_ids, b_mask)
            opt.zero_grad(set_to_none=True)
            value.backward()
            torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
            opt.step()
            sched.step()
            ref.clamp_logit_scale_()
            ref_losses.append(value.item())
    model = build()
    losses = clip.train(model, x, caps, steps=steps, batch_size=batch, lr=lr, seed=5, warmup=warm, progress=False)
    assert losses == ref_losses
    for (name, a), b in zip(ref.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    assert not model.training


def test_training_clamps_the_temperature_after_every_step(tiny):
    """The clamp of the learned temperature during training: a stored t beyond log 100 is brought
    back to log 100 after the optimizer step (the logit scale never exceeds 100)."""
    m = clip.CLIPModel(tiny.config)
    with torch.no_grad():
        m.log_logit_scale.fill_(10.0)
    x, caps = make_batch(8, "train", 16, seed=0)
    clip.train(m, x, caps, steps=1, batch_size=4, lr=1e-3, progress=False)
    assert float(m.log_logit_scale.detach()) == pytest.approx(math.log(100.0), rel=1e-6)


def test_training_reduces_loss_under_ci_profile():
    res = clip.train_clip(profiles.current().clip, seed=0, progress=False)
    assert len(res.losses) == profiles.current().clip.steps
    assert all(math.isfinite(x) for x in res.losses)
    first, last = sum(res.losses[:5]) / 5, sum(res.losses[-5:]) / 5
    assert last < first


def test_training_stops_on_nan_naming_the_step(tiny, monkeypatch):
    m = clip.CLIPModel(tiny.config)
    calls = {"n": 0}
    real = m.loss

    def loss(*a, **k):
        calls["n"] += 1
        out = real(*a, **k)
        return out * float("nan") if calls["n"] == 3 else out

    monkeypatch.setattr(m, "loss", loss)
    x, caps = make_batch(8, "train", 16, seed=0)
    with pytest.raises(FloatingPointError, match="step 2"):
        clip.train(m, x, caps, steps=5, batch_size=4, lr=1e-3, progress=False)
    with pytest.raises(ValueError, match="negatives"):
        clip.train(m, x, caps, steps=5, batch_size=1, lr=1e-3, progress=False)


# ------------------------------------------------------------------------- uses of the model
def test_zero_shot_and_retrieval_definitions(tiny):
    x, caps = make_batch(6, "test", 16, seed=0, two_object_fraction=0.0)
    classes = clip_eval.class_captions()
    assert len(classes) == 18 and len(set(classes)) == 18
    pred, probs = clip_eval.zero_shot_classify(tiny, x, classes, return_probs=True)
    want = (tiny.encode_image(x) @ tiny.encode_text(classes).T).argmax(1)
    assert torch.equal(pred, want)
    torch.testing.assert_close(probs.sum(1), torch.ones(6))
    with pytest.raises(ValueError, match="at least 2"):
        clip_eval.zero_shot_classify(tiny, x, ["a red circle"])
    x2, caps2 = make_batch(10, "test", 16, seed=0, two_object_fraction=1.0)
    r = [clip_eval.retrieval_recall_at_k(tiny, x2, caps2, k=k) for k in range(1, 11)]
    assert all(a <= b for a, b in zip(r, r[1:])) and r[-1] == 1.0
    with pytest.raises(ValueError, match="k must be"):
        clip_eval.retrieval_recall_at_k(tiny, x2, caps2, k=11)
    with pytest.raises(ValueError, match="captions"):
        clip_eval.retrieval_recall_at_k(tiny, x2, caps2[:3])


def test_clip_score_and_rerank(tiny):
    x, caps = make_batch(5, "test", 16, seed=1)
    score = clip_eval.clip_score(x, caps, model=tiny)
    cos = (tiny.encode_image(x) * tiny.encode_text(caps)).sum(1)
    torch.testing.assert_close(score, 100 * cos.clamp(min=0))
    assert score.shape == (5,) and bool((score >= 0).all()) and bool((score <= 100).all())
    order = clip_eval.rerank(x, caps[0], model=tiny)
    s0 = clip_eval.clip_score(x, [caps[0]] * 5, model=tiny)
    assert sorted(order.tolist()) == list(range(5))
    assert bool((s0[order][:-1] >= s0[order][1:]).all())
    # other resolutions are resized to the model's: a 32 px render of the same scenes works
    x32, _ = make_batch(5, "test", 32, seed=1)
    assert clip_eval.clip_score(x32, caps, model=tiny).shape == (5,)
    with pytest.raises(ValueError, match="one caption per image"):
        clip_eval.clip_score(x, caps[:2], model=tiny)
    with pytest.raises(TypeError, match="one string"):
        clip_eval.rerank(x, caps, model=tiny)


# ------------------------------------------------------------------------ the shipped model
def test_shipped_checkpoint_hash_and_remeasured_zero_shot(shipped):
    checkpoints.verify(clip.SHIPPED_NAME)                # sha256 matches the manifest
    rec = checkpoints.entry(clip.SHIPPED_NAME)["metrics"]
    x, caps = clip_eval.eval_data("test", rec["n_zero_shot"], False, shipped.config.image_size)
    acc = clip_eval.zero_shot_accuracy(shipped, x, caps)
    assert acc == pytest.approx(rec["zero_shot_test"], abs=0.02)
    assert acc >= 0.95                                   # the chapter's target


def test_shipped_model_as_a_judge(shipped):
    x, caps = make_batch(24, "test", 32, seed=3)
    right = clip_eval.clip_score(x, caps)                     # model=None: the shipped checkpoint
    wrong = clip_eval.clip_score(x, caps[1:] + caps[:1])
    assert float(right.mean()) > float(wrong.mean()) + 5
    torch.testing.assert_close(right, clip_eval.clip_score(x, caps, model=shipped))


def test_cli_train_under_ci(tmp_path, capsys):
    out = tmp_path / "c.safetensors"
    assert clip_eval.main(["train", "--profile", "ci", "--seed", "1", "--out", str(out), "--no-manifest"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["sha256"] == checkpoints.sha256(out) and 0 <= printed["zero_shot_test"] <= 1
    model, meta = clip.load_model(out)
    assert meta["seed"] == 1 and model.config.image_size == 16
    state, meta2 = checkpoints.load(out)
    meta2["kind"] = "something else"
    with pytest.raises(ValueError, match="not an imagen_edu.clip"):
        clip._model_from(state, meta2, "cpu")


def test_module_command_line_remeasures_the_shipped_model():
    """``python -m imagen_edu.clip eval``, the command next to the manifest's recorded ``train``
    command, still runs (imagen_edu.clip hands its command line to imagen_edu.clip_eval) and
    re-measures the recorded figures of the shipped checkpoint."""
    done = subprocess.run([sys.executable, "-m", "imagen_edu.clip", "eval"], capture_output=True, text=True,
                          cwd=REPO_ROOT, env=os.environ | {"OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    printed = json.loads(done.stdout)
    rec = checkpoints.entry(clip.SHIPPED_NAME)["metrics"]
    for key in ("zero_shot_test", "r1_test", "relation_test", "swap_colours_test"):
        assert printed[key] == pytest.approx(rec[key], abs=0.02), key


# ---------------------------------------------------------------------------------- exercises
def test_exercise_checks_pass_right_answers_and_fail_wrong_ones():
    assert ch04.check_clip_loss(clip.clip_loss, verbose=False)
    assert not ch04.check_clip_loss(lambda u, v, s: F.cross_entropy(s * u @ v.T, torch.arange(len(u))),
                                    verbose=False)

    def recall(sim, k):
        return (sim.topk(k, dim=1).indices == torch.arange(len(sim))[:, None]).any(1).float().mean()

    assert ch04.check_recall_at_k(recall, verbose=False)
    assert not ch04.check_recall_at_k(lambda sim, k: recall(sim.T.contiguous() * 0 + sim.T, 1), verbose=False)
    assert ch04.check_zero_shot(lambda u, v: (u @ F.normalize(v, dim=1).T).argmax(1), verbose=False)
    assert not ch04.check_zero_shot(lambda u, v: (u @ v.T).argmax(1), verbose=False)


def test_evaluate_reexports_clip_metrics():
    """evaluate.clip_score / evaluate.rerank are the chapter-4 functions, reached from the judge module."""
    caps = ["a red circle", "a blue square", "a green triangle left of a red square"]
    imgs = render_captions(caps, resolution=32)
    torch.testing.assert_close(evaluate.clip_score(imgs, caps), clip_eval.clip_score(imgs, caps))
    assert torch.equal(evaluate.rerank(imgs, caps[1]), clip_eval.rerank(imgs, caps[1]))
