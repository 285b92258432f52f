"""Tests of imagen_edu.text_encoders: one interface, two frozen encoders (LM and T5), masks honoured."""

import pytest
import torch

from imagen_edu import lm, text_encoders
from imagen_edu.tokenizer import default_tokenizer

TEXTS = ["a red circle", "a blue square left of a green circle", "a cyan triangle above a red square"]


@pytest.fixture(scope="module")
def tiny_t5_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    return text_encoders.build_tiny_t5(tmp_path_factory.mktemp("t5"))


@pytest.fixture(scope="module")
def lm_encoder():
    return text_encoders.get("lm")


def _check_interface(enc):
    emb, mask = enc.encode(TEXTS)
    assert isinstance(enc.name, str) and isinstance(enc.dim, int) and enc.dim > 0
    assert emb.dtype == torch.float32 and mask.dtype == torch.bool
    assert emb.dim() == 3 and emb.shape[0] == len(TEXTS) and emb.shape[2] == enc.dim
    assert mask.shape == emb.shape[:2]
    # the shortest caption has padding, the longest none
    assert not mask[0].all() and mask[1].all()
    assert (emb[~mask] == 0).all()
    assert emb[mask].abs().sum(-1).gt(0).all()
    # real tokens do not depend on padding: encode alone (no padding) vs in a batch
    for i, text in enumerate(TEXTS):
        alone, m1 = enc.encode([text])
        n = int(m1.sum())
        assert int(mask[i].sum()) == n
        torch.testing.assert_close(emb[i, :n], alone[0, :n], atol=1e-5, rtol=1e-4)
    with pytest.raises(TypeError):
        enc.encode("a red circle")
    return emb, mask


def test_lm_encoder_interface_and_mask(lm_encoder):
    emb, mask = _check_interface(lm_encoder)
    assert lm_encoder.dim == lm_encoder.model.config.d_model


def test_lm_encoder_is_frozen_and_equals_final_hidden_states(lm_encoder):
    assert not lm_encoder.model.training
    assert all(not p.requires_grad for p in lm_encoder.model.parameters())
    emb, mask = lm_encoder.encode(TEXTS)
    assert not emb.requires_grad
    ids, m = lm_encoder.tokenizer.batch_encode(TEXTS)
    with torch.no_grad():
        h = lm_encoder.model.hidden(ids, m)
    torch.testing.assert_close(emb[mask], h[m])
    # different captions give different embeddings (the encoder reads the words)
    a, _ = lm_encoder.encode(["a red circle"])
    b, _ = lm_encoder.encode(["a red square"])
    assert not torch.allclose(a[0, -1], b[0, -1])


def test_lm_encoder_from_any_model():
    tok = default_tokenizer()
    torch.manual_seed(0)
    model = lm.GPTLM(lm.LMConfig(tok.vocab_size, d_model=16, n_heads=2, n_layers=1))
    enc = text_encoders.LMTextEncoder(model, tok, name="toy")
    assert enc.dim == 16 and enc.name == "toy"
    assert all(not p.requires_grad for p in model.parameters()) and not model.training
    _check_interface(enc)


def test_t5_encoder_interface_and_mask(tiny_t5_dir):
    enc = text_encoders.get(f"t5:{tiny_t5_dir}")
    assert isinstance(enc, text_encoders.T5TextEncoder) and enc._model is None  # lazy
    emb, mask = _check_interface(enc)
    assert enc.dim == 32
    assert not enc.model.training and all(not p.requires_grad for p in enc.model.parameters())


def test_t5_encoder_matches_transformers_directly(tiny_t5_dir):
    """Golden test: our wrapper returns T5EncoderModel's last_hidden_state on real tokens."""
    from transformers import AutoTokenizer, T5EncoderModel

    tok = AutoTokenizer.from_pretrained(tiny_t5_dir)
    model = T5EncoderModel.from_pretrained(tiny_t5_dir).eval()
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = model(**batch).last_hidden_state
    emb, mask = text_encoders.T5TextEncoder(str(tiny_t5_dir)).encode(TEXTS)
    assert torch.equal(mask, batch["attention_mask"].bool())
    torch.testing.assert_close(emb[mask], want[mask])


def test_get_rejects_unknown_names_listing_the_valid_forms(tmp_path):
    for bad in ("gpt", "t5:", "clip"):
        with pytest.raises(ValueError, match="t5:NAME_OR_PATH"):
            text_encoders.get(bad)
    with pytest.raises(TypeError):
        text_encoders.get(3)
    enc = text_encoders.get(f"t5:{tmp_path / 'nothing_here'}")
    with pytest.raises(ValueError, match="could not load"):
        enc.encode(["a red circle"])
