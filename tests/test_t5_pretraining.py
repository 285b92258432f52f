"""Chapter 2b: the text-only corpora and the toy T5's span-corruption pretraining."""

import pytest
import torch

from imagen_edu import t5_pretraining as P
from imagen_edu.data import captions
from imagen_edu.data.text_corpus import CORPORA, SEPARATOR, side_sentence, text_corpus
from imagen_edu.t5 import IGNORE_INDEX


def test_corpora_are_text_of_the_grammar_only():
    """Every sentence of every corpus is a caption of the grammar or (``described``) its side
    sentence (no layout, no judge output)."""
    for name in CORPORA:
        docs = text_corpus(name)
        assert len(docs) == len(set(docs)) == 1098
        for d in docs:
            sentences = d.split(f" {SEPARATOR} ")
            if name == "described" and len(sentences) == 3:
                cap = captions.parse_caption(sentences[0])
                assert sentences[2] == side_sentence(cap.objects, cap.relation)
                sentences = sentences[:2]
            for sentence in sentences:
                captions.parse_caption(sentence)


def test_side_sentence_names_each_objects_side_in_caption_order():
    """The side is the product of the object's order and the relation's sign (chapter 5)."""
    assert side_sentence((("red", "circle"), ("blue", "square")), "right of") == \
        "on the right a red circle , on the left a blue square"
    assert side_sentence((("red", "circle"), ("blue", "square")), "above") == \
        "on the top a red circle , on the bottom a blue square"
    docs = text_corpus("described")
    assert ("a red circle below a blue square . a blue square above a red circle . "
            "on the bottom a red circle , on the top a blue square") in docs


def test_restated_corpus_says_each_fact_both_ways():
    """'restated': a two-object caption is followed by its converse (same fact, other order), in both orders."""
    docs = set(text_corpus("restated"))
    a = "a red circle left of a blue square"
    b = "a blue square right of a red circle"
    assert f"{a} . {b}" in docs and f"{b} . {a}" in docs
    assert "a red circle" in docs


def test_corpora_contain_the_heldout_pairs():
    """The held-out colour-shape pairs are withheld from image training only; the text corpus has them."""
    for name in CORPORA:
        text = " ".join(text_corpus(name))
        for colour, shape in captions.HELDOUT_PAIRS:
            assert f"{colour} {shape}" in text


def test_span_batch_shapes_and_targets():
    cfg = P.PretrainConfig(batch_size=16)
    docs = text_corpus("captions")
    tok = P.t5_tokenizer(docs, cfg.n_sentinels)
    ids, mask, labels = P.span_batch(docs, tok, cfg, torch.Generator().manual_seed(0))
    assert ids.shape[0] == labels.shape[0] == 16 and mask.dtype == torch.bool
    sent = {tok.stoi[w] for w in P.sentinel_words(cfg.n_sentinels)}
    for row in range(16):
        inp = ids[row][mask[row]].tolist()
        tgt = [t for t in labels[row].tolist() if t != IGNORE_INDEX]
        assert inp[-1] == tok.eos_id and tgt[-1] == tok.eos_id
        assert sum(t in sent for t in inp) + 1 == sum(t in sent for t in tgt)


def test_config_is_checked_before_any_work():
    with pytest.raises(ValueError, match="corpus"):
        P.PretrainConfig(corpus="c4")
    with pytest.raises(ValueError, match="n_heads"):
        P.PretrainConfig(model=dict(n_heads=0))
    with pytest.raises(ValueError, match="noise_density"):
        P.PretrainConfig(noise_density=1.5)


def test_pretrain_learns_and_round_trips(tmp_path, one_thread):
    """A short run halves the span-corruption loss; the saved file loads to the same encoder."""
    cfg = P.PretrainConfig(steps=60, batch_size=32, model=dict(d_model=32, n_heads=2, d_kv=16, d_ff=64,
                                                               n_layers=1, n_decoder_layers=1))
    model, tok, trainer = P.pretrain(cfg, progress=False)
    losses = trainer.losses
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:5]) / 5
    P.save_t5(tmp_path / "t5.safetensors", model, tok, cfg.to_dict())
    again, tok2, meta = P.load_t5(tmp_path / "t5.safetensors")
    ids, mask = tok.batch_encode(["a red circle left of a blue square"])
    assert tok2 == tok and meta["pretrain"]["corpus"] == "restated"
    torch.testing.assert_close(again.encode(ids, mask), model.encode(ids, mask))


def test_toy_t5_encoder_reads_the_frozen_encoder(tmp_path):
    """text_encoders.get('toyt5:PATH'): the frozen encoder's final states of 'words <eos>', no <bos>,
    zeros on padding; bidirectional, so the first object's state depends on the relation word."""
    from imagen_edu import t5, text_encoders

    docs = text_corpus("captions")
    tok = P.t5_tokenizer(docs)
    torch.manual_seed(0)
    model = t5.T5(t5.T5Config(vocab_size=tok.vocab_size, d_model=16, n_heads=2, d_kv=8, d_ff=32, n_layers=1,
                              n_decoder_layers=1))
    path = tmp_path / "toy.safetensors"
    t5.save_t5(path, model, tok)
    enc = text_encoders.get(f"toyt5:{path}")
    assert enc.name == f"toyt5:{path}" and enc.dim == 16
    assert not any(p.requires_grad for p in enc.model.parameters()) and not enc.model.training
    emb, mask = enc.encode(["a red circle left of a blue square", "a red circle"])
    ids, _ = tok.batch_encode(["a red circle"], add_bos=False, add_eos=True)
    torch.testing.assert_close(emb[1, :4], model.eval().encode(ids)[0], atol=1e-5, rtol=1e-5)
    assert mask[1].sum() == 4 and emb[1, 4:].abs().sum() == 0
    right, _ = enc.encode(["a red circle right of a blue square"])
    assert not torch.allclose(emb[0, 2], right[0, 2]), "the first shape's state must read the relation"


# --- the paraphrase-contrastive term (chapter 2b, Eq. ch2b-eq-para) -------------------------------

def test_paraphrase_groups_pair_each_fact_with_its_converse_and_its_contradiction():
    """A group is (A rel B, B conv A, A conv B, B rel A): positives say one fact, the contradiction
    has the same words in the same order with the sides swapped; plain captions give no pairs."""
    for name in ("restated", "described"):
        groups = P.paraphrase_groups(text_corpus(name))
        assert len(groups) == 1080
        for x, y, xc, yc in groups:
            px, py, pxc, pyc = (captions.parse_caption(t) for t in (x, y, xc, yc))
            assert py.relation == captions.CONVERSE[px.relation] and tuple(py.objects) == tuple(px.objects)[::-1]
            assert tuple(pxc.objects) == tuple(px.objects) and pxc.relation == captions.CONVERSE[px.relation]
            assert pyc.text == captions.make_caption(px.objects[::-1], px.relation)
    assert P.paraphrase_groups(text_corpus("captions")) == []
    with pytest.raises(ValueError, match="paraphrase_weight"):
        P.PretrainConfig(corpus="captions", paraphrase_weight=1.0)
    with pytest.raises(ValueError, match="paraphrase_temperature"):
        P.PretrainConfig(corpus="described", paraphrase_weight=1.0, paraphrase_temperature=0.0)


def test_paraphrase_batch_holds_each_fact_beside_its_contradiction():
    """Rows 2k and 2k+1 of x are one fact and its contradiction: the same words, another relation."""
    cfg = P.PretrainConfig(corpus="described", paraphrase_weight=1.0, paraphrase_facts=5)
    docs = text_corpus("described")
    tok = P.t5_tokenizer(docs)
    x_ids, x_mask, y_ids, y_mask = P.paraphrase_batch(P.paraphrase_groups(docs), tok, cfg,
                                                      torch.Generator().manual_seed(0))
    assert x_ids.shape[0] == y_ids.shape[0] == 10
    words = [tok.decode(r[m].tolist()[:-1]).split() for r, m in zip(x_ids, x_mask)]
    for k in range(5):
        a, b = words[2 * k], words[2 * k + 1]
        assert sorted(a) != sorted(b) or a != b
        assert [w for w in a if w not in ("left", "right", "above", "below")] == \
            [w for w in b if w not in ("left", "right", "above", "below")]


def test_object_states_read_each_objects_colour_and_shape_words():
    """Object 1 = words 1-2, object 2 = the two words before <eos>, LayerNormed, averaged, unit length."""
    states = torch.randn(2, 9, 6)
    mask = torch.tensor([[True] * 9, [True] * 8 + [False]])     # 'a c s left of a c s <eos>', 'a c s above a c s <eos>'
    out = P.object_states(states, mask)
    ln = torch.nn.functional.layer_norm(states, (6,))
    expect = torch.nn.functional.normalize((ln[1, 5] + ln[1, 6]) / 2, dim=-1)
    torch.testing.assert_close(out[1, 1], expect)
    expect = torch.nn.functional.normalize((ln[0, 1] + ln[0, 2]) / 2, dim=-1)
    torch.testing.assert_close(out[0, 0], expect)
    assert torch.allclose(out.norm(dim=-1), torch.ones(2, 2))


def test_object_states_by_word_keep_each_words_state_apart():
    """words=True: (B, 2 objects, 2 words, D), each word's LayerNormed state at unit length; their
    mean, normalised, is the object's vector (LayerNorm gives every state nearly the same length)."""
    states = torch.randn(2, 9, 6, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[True] * 9, [True] * 8 + [False]])
    out = P.object_states(states, mask, words=True)
    assert out.shape == (2, 2, 2, 6)
    ln = torch.nn.functional.layer_norm(states, (6,))
    torch.testing.assert_close(out[1, 1, 0], torch.nn.functional.normalize(ln[1, 5], dim=-1))
    torch.testing.assert_close(out[1, 1, 1], torch.nn.functional.normalize(ln[1, 6], dim=-1))
    torch.testing.assert_close(out[0, 0, 1], torch.nn.functional.normalize(ln[0, 2], dim=-1))
    torch.testing.assert_close(torch.nn.functional.normalize(out.mean(2), dim=-1), P.object_states(states, mask),
                               atol=1e-4, rtol=1e-4)


def _tiny_paraphrase_case():
    """A 1-layer, 16-wide T5 at a fixed initialisation and one paraphrase batch of 3 facts: ``(tok, model, batch)``."""
    from imagen_edu import t5

    cfg = P.PretrainConfig(corpus="described", paraphrase_weight=1.0, paraphrase_facts=3)
    docs = text_corpus("described")
    tok = P.t5_tokenizer(docs)
    torch.manual_seed(0)
    model = t5.T5(t5.T5Config(vocab_size=tok.vocab_size, d_model=16, n_heads=2, d_kv=8, d_ff=32, n_layers=1,
                              n_decoder_layers=1)).eval()
    return tok, model, P.paraphrase_batch(P.paraphrase_groups(docs), tok, cfg, torch.Generator().manual_seed(1))


def test_paraphrase_loss_by_word_is_the_mean_of_the_colour_and_shape_words_losses():
    """states="word": the group InfoNCE of the colour words plus that of the shape words, halved.
    An encoder that writes the side into the shape word alone wins the object loss but not the
    word loss: the colour word cannot tell the fact from its contradiction."""
    from imagen_edu import clip

    tok, model, batch = _tiny_paraphrase_case()
    vx = P.object_states(model.encode(batch[0], batch[1]), batch[1], words=True)
    vy = P.object_states(model.encode(batch[2], batch[3]), batch[3], words=True)[:, [1, 0]]
    per_word = [torch.stack([clip.clip_loss(vx[2 * k:2 * k + 2, :, w].flatten(0, 1),
                                            vy[2 * k:2 * k + 2, :, w].flatten(0, 1), 5.0) for k in range(3)]).mean()
                for w in (0, 1)]
    torch.testing.assert_close(P.paraphrase_loss(model, batch, 0.2, states="word"), torch.stack(per_word).mean())
    assert not torch.allclose(P.paraphrase_loss(model, batch, 0.2, states="word"), P.paraphrase_loss(model, batch, 0.2))

    # a stand-in encoder: every word state holds its own word, the shape word also the object's side
    class SideInShapeWord(torch.nn.Module):
        def encode(self, ids, mask):
            g = torch.Generator().manual_seed(0)
            table = torch.randn(tok.vocab_size, 32, generator=g)
            h = table[ids].clone()
            h[..., 24:] = 0
            for b in range(len(ids)):
                words = tok.decode(ids[b][mask[b]].tolist()).split()
                side = {"left": 1, "right": -1, "above": 1, "below": -1}[words[3]]
                n = int(mask[b].sum()) - 1
                h[b, 2, 24:] = 8.0 * side
                h[b, n - 1, 24:] = -8.0 * side
            return h

    fake = SideInShapeWord()
    assert P.paraphrase_loss(fake, batch, 0.1) < 0.5 * P.paraphrase_loss(fake, batch, 0.1, states="word")
    with pytest.raises(ValueError, match="paraphrase_states"):
        P.PretrainConfig(corpus="described", paraphrase_weight=1.0, paraphrase_states="mean")
    with pytest.raises(ValueError, match="states must be"):
        P.paraphrase_loss(model, batch, 0.2, states="mean")


def test_paraphrase_loss_is_chapter_4s_infonce_over_objects():
    """The loss is clip_loss(objects of x, matching objects of y, 1/tau): object A of 'A rel B'
    against object A of 'B conv A' (the y objects are swapped into x's order)."""
    from imagen_edu import clip

    tok, model, batch = _tiny_paraphrase_case()
    vx = P.object_states(model.encode(batch[0], batch[1]), batch[1])
    vy = P.object_states(model.encode(batch[2], batch[3]), batch[3])
    vy = vy[:, [1, 0]]
    expect = clip.clip_loss(vx.flatten(0, 1), vy.flatten(0, 1), 5.0)
    torch.testing.assert_close(P.paraphrase_loss(model, batch, 0.2, "batch"), expect)
    groups = [clip.clip_loss(vx[2 * k:2 * k + 2].flatten(0, 1), vy[2 * k:2 * k + 2].flatten(0, 1), 5.0)
              for k in range(3)]
    torch.testing.assert_close(P.paraphrase_loss(model, batch, 0.2), torch.stack(groups).mean())
    unswapped = clip.clip_loss(vx.flatten(0, 1), vy[:, [1, 0]].flatten(0, 1), 5.0)
    assert not torch.allclose(unswapped, expect)
    with pytest.raises(ValueError, match="paraphrase_negatives"):
        P.PretrainConfig(corpus="described", paraphrase_weight=1.0, paraphrase_negatives="all")


def test_pretrain_with_the_paraphrase_term_lowers_it(one_thread):
    """paraphrase_weight > 0 adds the term to pretraining: the first step's loss is span corruption's
    plus about log 4 (four candidates per object, random states), and after a short run the term
    is well below that of the same run with span corruption alone."""
    import math

    docs = text_corpus("described")
    after, first = {}, {}
    for weight in (0.0, 1.0):
        cfg = P.PretrainConfig(corpus="described", steps=60, batch_size=16, paraphrase_weight=weight,
                               paraphrase_facts=8, noise_density=0.4, mean_span_length=2.0,
                               model=dict(d_model=32, n_heads=2, d_kv=16, d_ff=64, n_layers=2, n_decoder_layers=1))
        model, tok, trainer = P.pretrain(cfg, progress=False)
        first[weight] = trainer.losses[0]
        batch = P.paraphrase_batch(P.paraphrase_groups(docs), tok, cfg, torch.Generator().manual_seed(5))
        with torch.no_grad():
            after[weight] = P.paraphrase_loss(model, batch, cfg.paraphrase_temperature).item()
    assert 0.7 * math.log(4) < first[1.0] - first[0.0] < 1.2 * math.log(4), first
    assert after[1.0] < 0.8 * after[0.0], after


def test_shipped_toy_t5_is_the_cascade_recipe_and_says_the_side_loudly():
    """The shipped encoder (``toyt5``, sha256-checked) was pretrained with CASCADE_ENCODER under the
    cpu profile, on text alone; re-measured now, each object's side is a large share of its states'
    spread (the recorded figure) and the order of mention a tiny one."""
    from imagen_edu import checkpoints, probe, profiles, text_encoders

    entry = checkpoints.entry(P.SHIPPED_NAME)
    assert entry["command"].startswith("python -m imagen_edu.t5_pretraining train --profile cpu")
    _, _, meta = P.load_t5(checkpoints.verify(P.SHIPPED_NAME))
    assert meta["pretrain"] == P.cascade_encoder_config(profiles.get("cpu")).to_dict()
    assert meta["pretrain"]["paraphrase_weight"] > 0 and meta["pretrain"]["corpus"] == "described"
    enc = text_encoders.get("toyt5")
    assert isinstance(enc, text_encoders.ToyT5Encoder) and enc.name == "toyt5"
    share = probe.variance_share(enc, 0)
    for axis in ("horizontal", "vertical"):
        assert share[axis]["side"] == pytest.approx(entry["metrics"]["share"][axis]["side"], abs=1e-3)
        assert share[axis]["side"] > 0.2 and share[axis]["side"] > 50 * share[axis]["order"]
    # the side is at every word of an object (paraphrase_states="word"), the colour word included
    assert meta["pretrain"]["paraphrase_states"] == "word"
    from imagen_edu.data.captions import all_captions
    caps = [c for c in all_captions() if c.relation in ("left of", "right of")]
    with torch.no_grad():
        h, _ = enc.encode([c.text for c in caps])
    h = torch.nn.functional.layer_norm(h, h.shape[-1:])
    for word in (0, 1):                                   # colour word, shape word
        X = torch.cat([h[:, 1 + word], h[:, 6 + word]])   # 'a C S left of a C S': words 1-2 and 6-7
        left = torch.tensor([c.relation == "left of" for c in caps] + [c.relation == "right of" for c in caps])
        assert probe.between_share(X, left) > 0.2, word


def test_pretraining_command_line(tmp_path, one_thread, capsys):
    """``python -m imagen_edu.t5_pretraining train`` writes a loadable T5 with its recipe and prints
    its probe; a bad argument is one line and exit 2, before any work."""
    import json

    out = tmp_path / "t5.safetensors"
    assert P.main(["train", "--profile", "ci", "--out", str(out), "--no-manifest"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["steps"] == 60 and set(printed["share"]) == {"horizontal", "vertical"}
    model, tok, meta = P.load_t5(out)
    assert meta["pretrain"]["paraphrase_weight"] == P.CASCADE_ENCODER["paraphrase_weight"]
    assert P.main(["eval", "--ckpt", str(out)]) == 0 and "probe" in json.loads(capsys.readouterr().out)
    assert P.main(["train", "--profile", "nope", "--out", str(tmp_path / "x.safetensors"), "--no-manifest"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--profile" in err and not (tmp_path / "x.safetensors").exists()


def test_pretrain_many_in_processes_equals_one_after_another():
    """Chapter 2b pretrains its corpora two at a time: seeded single-thread runs in spawned
    processes give the same weights and histories as the runs one after another."""
    cfgs = [P.PretrainConfig(corpus=c, steps=3, batch_size=4, warmup_steps=1,
                                          model=dict(d_model=16, n_heads=2, d_kv=8, d_ff=32, n_layers=1,
                                                     n_decoder_layers=1, num_buckets=8, max_distance=16))
            for c in ("captions", "restated")]
    serial = P.pretrain_many(cfgs, jobs=1)
    parallel = P.pretrain_many(cfgs, jobs=2)
    for (m1, _, h1, _), (m2, _, h2, _) in zip(serial, parallel):
        assert [h["loss"] for h in h1] == [h["loss"] for h in h2]
        for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
            assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="jobs"):
        P.pretrain_many(cfgs, jobs=0)
