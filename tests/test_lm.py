"""Tests of imagen_edu.lm: the equations of chapter 2, sampling, training and the shipped model."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from imagen_edu import checkpoints, lm, profiles
from imagen_edu.data.captions import caption_corpus, parse_caption
from imagen_edu.exercises import ch02
from imagen_edu.optim import lr_at
from imagen_edu.rnn import RNNConfig, RNNLM
from imagen_edu.rnn import train_rnn as rnn_train
from imagen_edu.tokenizer import default_tokenizer


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


@pytest.fixture
def model(tok):
    torch.manual_seed(0)
    return lm.GPTLM(lm.LMConfig(vocab_size=tok.vocab_size, d_model=32, n_heads=4, n_layers=2)).eval()


# ----------------------------------------------------------------------------------- the model
def test_shapes_and_config_validation(model, tok):
    ids, mask = tok.batch_encode(["a red circle", "a blue square left of a green circle"])
    assert model(ids, mask).shape == (2, ids.shape[1], tok.vocab_size)
    assert model.hidden(ids, mask).shape == (2, ids.shape[1], 32)
    with pytest.raises(ValueError, match="divisible"):
        lm.LMConfig(vocab_size=10, d_model=30, n_heads=4)
    with pytest.raises(ValueError):
        lm.LMConfig(vocab_size=0)
    with pytest.raises(TypeError):
        model(ids.float())
    with pytest.raises(ValueError, match="max_len"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_causal_property(model, tok):
    """The causal mask of the GPT, Eq. (ch2-eq-chain): changing tokens t, t+1, ... never changes the
    logits at positions < t (a future token must not change a past logit), and does change position t."""
    ids, _ = tok.batch_encode(["a red circle left of a blue square"])
    out = model(ids)
    for t in range(1, ids.shape[1]):
        changed = ids.clone()
        changed[0, t:] = torch.randint(4, tok.vocab_size, (ids.shape[1] - t,))
        changed[0, t] = (ids[0, t] - 4 + 1) % (tok.vocab_size - 4) + 4  # surely different
        out2 = model(changed)
        torch.testing.assert_close(out2[:, :t], out[:, :t])
        assert not torch.allclose(out2[:, t], out[:, t])


def test_padding_does_not_change_real_positions(model, tok):
    ids, mask = tok.batch_encode(["a red circle"])
    ids_p, mask_p = tok.batch_encode(["a red circle"], max_len=12)
    torch.testing.assert_close(model(ids_p, mask_p)[:, :ids.shape[1]], model(ids, mask))


# ------------------------------------------------------------------------------------ the loss
def test_loss_equals_hand_computed_cross_entropy(model, tok):
    """Eq. (ch2-eq-nll): mean over real targets of -log softmax(logits)[next token]."""
    texts = ["a red circle", "a blue square left of a green circle"]
    ids, mask = tok.batch_encode(texts)
    total, count = 0.0, 0
    for text in texts:  # one caption at a time, no padding, explicit softmax
        seq = torch.tensor([tok.encode(text)])
        with torch.no_grad():
            logits = model(seq[:, :-1])[0]
        for t in range(seq.shape[1] - 1):
            p = torch.exp(logits[t]) / torch.exp(logits[t]).sum()
            total += -math.log(p[seq[0, t + 1]].item())
            count += 1
    assert count == int(mask[:, 1:].sum())
    assert lm.loss(model, ids, mask).item() == pytest.approx(total / count, rel=1e-5)


def test_token_nll_ignores_padding_and_perplexity_is_exp_mean(model, tok):
    """Eq. (ch2-eq-ppl): perplexity = exp(mean NLL over every predicted token of the corpus), padding
    excluded; captions of different lengths make it differ from the mean of per-caption perplexities."""
    texts = ["a red circle", "a blue square left of a green circle"]
    ids, mask = tok.batch_encode(texts)
    nll = lm.token_nll(model, ids, mask)
    assert nll.shape == (2, ids.shape[1] - 1)
    assert (nll[0, 4:] == 0).all() and (nll[0, :4] > 0).all()
    ppl = lm.perplexity(model, tok, texts)
    assert ppl == pytest.approx(math.exp(float(nll.detach().sum()) / int(mask[:, 1:].sum())), rel=1e-5)


def test_uniform_model_has_perplexity_vocab_size(tok):
    """Eq. (ch2-eq-ppl): a model that guesses uniformly over V tokens has perplexity V."""
    uniform = lm.BigramLM(torch.zeros(tok.vocab_size, tok.vocab_size), alpha=1.0)
    assert lm.perplexity(uniform, tok, caption_corpus("train")[:50]) == pytest.approx(tok.vocab_size, rel=1e-5)


# --------------------------------------------------------------------------------- the bigram
def test_bigram_is_normalised_counts(tok):
    """Eq. (ch2-eq-bigram) with alpha=0: p(b|a) = N(a,b) / N(a)."""
    texts = ["a red circle", "a red square", "a blue square"]
    big = lm.BigramLM.fit(tok, texts, alpha=0.0)
    s = tok.stoi
    assert big.counts[s["a"], s["red"]] == 2 and big.counts[s["a"], s["blue"]] == 1
    assert big.probs[s["a"], s["red"]].item() == pytest.approx(2 / 3)
    assert big.probs[s["red"], s["circle"]].item() == pytest.approx(1 / 2)
    assert big.probs[s["square"], tok.eos_id].item() == pytest.approx(1.0)
    torch.testing.assert_close(big.probs.sum(-1), torch.ones(tok.vocab_size))
    # its loss on a caption is the sum of -log table entries
    ids, mask = tok.batch_encode(["a red circle"])
    want = -(math.log(1.0) + math.log(2 / 3) + math.log(1 / 2) + math.log(1.0)) / 4
    assert lm.loss(big, ids, mask).item() == pytest.approx(want, rel=1e-5)


def test_bigram_smoothing_gives_heldout_captions_finite_perplexity(tok):
    big = lm.BigramLM.fit(tok, caption_corpus("train"), alpha=0.01)
    ppl_train = lm.perplexity(big, tok, caption_corpus("train"))
    ppl_held = lm.perplexity(big, tok, caption_corpus("heldout"))
    assert math.isfinite(ppl_held) and ppl_held > ppl_train > 1


# ---------------------------------------------------------------------------------- sampling
def test_sampling_with_a_seed_is_deterministic(model, tok):
    a = lm.sample(model, tok, n=16, seed=123)
    b = lm.sample(model, tok, n=16, seed=123)
    c = lm.sample(model, tok, n=16, seed=124)
    assert a == b and a != c
    torch.manual_seed(0)
    x = torch.rand(1)
    lm.sample(model, tok, n=4, seed=5)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(1), x)  # the global RNG is untouched (private generator)


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    k2 = lm.filter_logits(logits, top_k=2)
    assert torch.isfinite(k2).tolist() == [[True, True, False, False, False]]
    # nucleus: the smallest set with mass >= 0.8 is {0.5, 0.2, 0.15}
    p = lm.filter_logits(logits, top_p=0.8)
    assert torch.isfinite(p).tolist() == [[True, True, True, False, False]]
    assert torch.isfinite(lm.filter_logits(logits, top_p=0.01)).sum() == 1  # argmax always kept
    assert torch.isfinite(lm.filter_logits(logits, top_p=1.0)).all()
    with pytest.raises(ValueError):
        lm.filter_logits(logits, top_k=0)
    with pytest.raises(ValueError):
        lm.filter_logits(logits, top_p=1.5)


def test_top_k_and_top_p_never_emit_excluded_tokens():
    torch.manual_seed(0)
    logits = torch.randn(64, 30)
    gen = torch.Generator().manual_seed(0)
    for kw in ({"top_k": 3}, {"top_p": 0.5}, {"top_k": 5, "top_p": 0.7}):
        # temperature first, then filtering: the nucleus depends on the temperature
        allowed = torch.isfinite(lm.filter_logits(logits / 1.5, **kw))
        for _ in range(50):
            ids = lm.sample_next(logits, gen, temperature=1.5, **kw)
            assert allowed[torch.arange(64), ids].all(), kw


def test_temperature_zero_is_greedy_and_low_temperature_sharpens():
    logits = torch.tensor([[1.0, 2.0, 0.5]])
    assert lm.sample_next(logits, temperature=0).item() == 1
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([lm.sample_next(logits.expand(200, 3), gen, temperature=0.1) for _ in range(5)])
    assert (draws == 1).float().mean() > 0.99


def test_sampled_model_never_emits_pad_bos_unk(model, tok):
    _, ids = lm.sample(model, tok, n=32, seed=0, return_ids=True)
    assert not (ids[:, 1:] == tok.bos_id).any() and not (ids == tok.unk_id).any()
    # after <eos> only padding follows
    for row in ids.tolist():
        if tok.eos_id in row:
            assert all(t == tok.pad_id for t in row[row.index(tok.eos_id) + 1:])


# ---------------------------------------------------------------------------------- training
def test_train_runs_the_chapter_recipe_bit_for_bit(tok):
    """The chapter-2 recipe, now run by train.Trainer, step for step: batches drawn by ``torch.randint``
    from ``Generator().manual_seed(seed)``, AdamW (betas (0.9, 0.98), weight decay 0.01 on every
    parameter), warm-up then cosine to 10% as ``LambdaLR`` computes it, gradient norm clipped to 1,
    no EMA. The hand-written loop gives the same losses and weights bit for bit (what keeps the shipped
    model reproducible by its manifest command)."""
    texts = caption_corpus("train")
    steps, batch, lr, warm = 12, 16, 3e-2, 4

    def build():
        torch.manual_seed(0)
        return lm.GPTLM(lm.LMConfig(tok.vocab_size, d_model=32, n_heads=4, n_layers=2))

    ref = build()
    ids, mask = tok.batch_encode(texts)
    gen = torch.Generator().manual_seed(3)
    opt = torch.optim.AdamW(ref.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_at(s, base_lr=1.0, warmup_steps=warm, total_steps=steps, min_lr_ratio=0.1))
    ref_losses, norms = [], []
    with profiles.torch_threads(1):  # the recipe's default: one thread, as clip/lm.train use
        for _ in range(steps):
            idx = torch.randint(0, ids.shape[0], (batch,), generator=gen)
            value = lm.loss(ref, ids[idx], mask[idx])
            opt.zero_grad(set_to_none=True)
            value.backward()
            norms.append(float(torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)))
            opt.step()
            sched.step()
            ref_losses.append(value.item())
    assert max(norms) > 1.0  # the clipping binds, so a change of it shows
    model = build()
    losses = lm.train(model, tok, texts, steps=steps, batch_size=batch, lr=lr, seed=3, warmup=warm, progress=False)
    assert losses == ref_losses
    for (name, a), b in zip(ref.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    assert not model.training


def test_training_lowers_the_loss_under_ci(tok):
    s = profiles.get("ci").lm
    torch.manual_seed(0)
    model = lm.GPTLM(lm.LMConfig(tok.vocab_size, s.d_model, s.n_heads, s.n_layers))
    losses = lm.train(model, tok, caption_corpus("train"), steps=s.max_steps, batch_size=s.batch_size,
                      lr=s.lr, progress=False)
    assert len(losses) == s.max_steps
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5


def test_training_stops_on_nan_naming_the_step(model, tok):
    with torch.no_grad():
        model.head.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="step 0"):
        lm.train(model, tok, caption_corpus("train"), steps=3, batch_size=4, lr=1e-3, progress=False)


def test_save_load_model_round_trip(model, tok, tmp_path):
    path = lm.save_model(tmp_path / "lm.safetensors", model, tok, {"seed": 0})
    again, tok2, meta = lm.load_model(path)
    assert tok2 == tok and meta["seed"] == 0 and again.config == model.config
    ids, mask = tok.batch_encode(["a red circle"])
    torch.testing.assert_close(again(ids, mask), model(ids, mask))


# ------------------------------------------------------------------------- the shipped model
def test_shipped_checkpoint_hash_and_remeasured_metrics():
    ent = checkpoints.entry(lm.SHIPPED_NAME)
    checkpoints.verify(lm.SHIPPED_NAME)  # sha256 matches the manifest
    model, tok = lm.load_shipped()
    m = ent["metrics"]
    assert m["grammar_rate"] >= 0.95 and m["n_samples"] >= 200
    rate = lm.grammar_rate(model, tok, n=m["n_samples"], seed=m["sample_seed"], verbose=False)
    assert rate == pytest.approx(m["grammar_rate"], abs=0.02)
    assert rate >= 0.95
    assert lm.perplexity(model, tok, caption_corpus("train")) == pytest.approx(m["ppl_train"], rel=1e-3)
    assert lm.perplexity(model, tok, caption_corpus("heldout")) == pytest.approx(m["ppl_heldout"], rel=1e-3)
    assert m["ppl_heldout"] > m["ppl_train"]
    assert m["train_seconds"] <= 120  # the limit for the cpu profile
    for cap in lm.sample(model, tok, n=5, seed=1):
        parse_caption(cap)


def test_cli_train_and_eval(tmp_path, capsys):
    out = tmp_path / "lm_ci.safetensors"
    assert lm.main(["train", "--profile", "ci", "--seed", "1", "--out", str(out), "--no-manifest"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["sha256"] == checkpoints.sha256(out) and 0 <= printed["grammar_rate"] <= 1
    assert lm.main(["eval", "--ckpt", str(out), "--n", "20"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["ppl_train"] == pytest.approx(printed["ppl_train"], rel=1e-4)


# ------------------------------------------------------------------------- exercise checks
def test_chapter2_exercise_checks_pass_right_and_fail_wrong_answers():
    def counts(tok, texts):
        return lm.BigramLM.fit(tok, texts, alpha=0.0).counts

    def nll(logits, targets, mask):
        return F.cross_entropy(logits[mask], targets[mask])

    def top_p(logits, p):
        return lm.filter_logits(logits, top_p=p)

    assert ch02.check_bigram_counts(counts, verbose=False)
    assert ch02.check_next_token_loss(nll, verbose=False)
    assert ch02.check_top_p(top_p, verbose=False)
    assert not ch02.check_bigram_counts(lambda tok, texts: counts(tok, texts).T, verbose=False)
    assert not ch02.check_next_token_loss(  # forgets the mask
        lambda l, t, m: F.cross_entropy(l.flatten(0, 1), t.flatten()), verbose=False)
    assert not ch02.check_top_p(lambda logits, p: logits, verbose=False)
    assert not ch02.check_top_p(lambda logits, p: lm.filter_logits(logits, top_k=1), verbose=False)


def test_rnn_step_check_passes_the_model_and_fails_wrong_answers():
    """The check of Eq. (ch2-eq-rnn)'s step accepts the step of imagen_edu.rnn.RNNLM and rejects a
    step without tanh, one with W_hh untransposed and one without the bias."""
    def model_step(h, e, W_hh, W_he, b):
        m = RNNLM(RNNConfig(vocab_size=4, d_embed=e.shape[1], d_hidden=h.shape[1]))
        with torch.no_grad():
            m.W_hh.weight.copy_(W_hh)
            m.W_he.weight.copy_(W_he)
            m.W_he.bias.copy_(b)
        return torch.tanh(m.W_hh(h) + m.W_he(e))

    assert ch02.check_rnn_step(model_step, verbose=False)
    assert not ch02.check_rnn_step(lambda h, e, W_hh, W_he, b: h @ W_hh.T + e @ W_he.T + b, verbose=False)
    assert not ch02.check_rnn_step(lambda h, e, W_hh, W_he, b: torch.tanh(h @ W_hh + e @ W_he.T + b),
                                   verbose=False)
    assert not ch02.check_rnn_step(lambda h, e, W_hh, W_he, b: torch.tanh(h @ W_hh.T + e @ W_he.T),
                                   verbose=False)

    def stub(h, e, W_hh, W_he, b):
        raise NotImplementedError

    res = ch02.check_rnn_step(stub, verbose=False)
    assert not res and res.verdict == "NOT ATTEMPTED YET"


def test_train_lm_and_train_rnn_share_one_budget(tok):
    """The chapter's comparison at one budget: lm.train_lm (the shipped model's recipe: seed, then
    build, then lm.train on the train split) and rnn.train_rnn both go through lm.train_model with
    the profile's steps, batch and learning rate, and a ``texts`` subset is all they train on."""
    s = profiles.get("ci").lm
    torch.manual_seed(0)
    ref = lm.GPTLM(lm.LMConfig(tok.vocab_size, d_model=s.d_model, n_heads=s.n_heads, n_layers=s.n_layers))
    ref_losses = lm.train(ref, tok, caption_corpus("train"), steps=s.max_steps, batch_size=s.batch_size,
                          lr=s.lr, seed=0, progress=False)
    res = lm.train_lm(s, seed=0, device="cpu", progress=False)
    assert res.losses == ref_losses
    for a, b in zip(ref.state_dict().values(), res.model.state_dict().values()):
        assert torch.equal(a, b)
    one = ["a red circle"]
    for train_fn in (lm.train_lm, rnn_train):
        out = train_fn(s, seed=0, device="cpu", progress=False, texts=one)
        assert len(out.losses) == s.max_steps and out.settings == res.settings
        # it saw nothing else: its one caption is far less surprising than any other
        other = ["a blue square below a green triangle"]
        assert 2 * lm.perplexity(out.model, tok, one) < lm.perplexity(out.model, tok, other)
