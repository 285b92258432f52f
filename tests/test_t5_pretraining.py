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
