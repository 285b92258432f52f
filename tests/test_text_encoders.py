"""Tests of imagen_edu.text_encoders: one interface, every frozen encoder (LM, lm+words, canonical, T5), one registry."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from imagen_edu import lm, profiles, text_encoders
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
    """Wrapping a model freezes it (Imagen's encoder is frozen, Section 2.1): a model handed over
    in training mode with trainable weights comes out in eval mode with ``requires_grad`` False."""
    tok = default_tokenizer()
    torch.manual_seed(0)
    model = lm.GPTLM(lm.LMConfig(tok.vocab_size, d_model=16, n_heads=2, n_layers=1)).train()
    assert model.training and all(p.requires_grad for p in model.parameters())
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
    """Golden test: our wrapper returns T5EncoderModel's last_hidden_state on real tokens and its attention mask."""
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
    for bad in ("gpt", "t5:", "clip", "canonical:", "canonical:nope", "lm:x"):
        with pytest.raises(ValueError, match="unknown text encoder.*'lm'.*'lm\\+words'.*'canonical:NAME'.*t5:NAME_OR_PATH"):
            text_encoders.get(bad)
    with pytest.raises(TypeError):
        text_encoders.get(3)
    enc = text_encoders.get(f"t5:{tmp_path / 'nothing_here'}")
    with pytest.raises(ValueError, match="could not load"):
        enc.encode(["a red circle"])


# ---------------------------------------------------------------------------------------------
# The chapter-5 encoders (lm+words, canonical:NAME) and the one registry
# ---------------------------------------------------------------------------------------------
FIXTURE = Path(__file__).parent / "fixtures" / "lm_words_encoders.safetensors"


@pytest.fixture(scope="module")
def old_outputs():
    """What ``imagen.get_text_encoder(...)`` returned before the encoders moved (commit 4c3c1b9)."""
    with safe_open(str(FIXTURE), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


@pytest.mark.parametrize("key, name", [("plain", "lm+words"), ("canonical", "canonical:lm+words")])
def test_moved_encoders_give_the_old_embeddings(old_outputs, key, name):
    """Moving ``LMWordsAndStates`` / ``CanonicalCaptions`` out of the cascade changed no output.

    Masks must be identical. Embeddings are compared to 1e-5: the fixture was written with the
    chapter-1 attention of that commit, and a CPU attention kernel (the explicit path or
    ``scaled_dot_product_attention``) may round the last bits differently; any change of the
    features themselves (order, normalisation, rewrite) moves them by far more."""
    tensors, meta = old_outputs
    captions = meta["captions"].split("\n")
    emb, mask = text_encoders.get(name).encode(captions)
    assert torch.equal(mask, tensors[f"{key}.mask"])
    torch.testing.assert_close(emb, tensors[f"{key}.emb"], atol=1e-5, rtol=0)


def test_lm_words_is_layernormed_words_then_states(lm_encoder):
    """``lm+words`` (chapter 5, "Which text features?") is, per token, ``[LN(pos(tok_emb(ids))),
    LN(h_t)]``: the LM's frozen input layer first, its final hidden states second, each
    layer-normalised without a learned scale, zeros on padding; width 2 D."""
    enc = text_encoders.get("lm+words")
    assert isinstance(enc, text_encoders.LMWordsAndStates) and enc.name == "lm+words"
    assert enc.model is lm_encoder.model and enc.dim == 2 * lm_encoder.dim
    emb, mask = enc.encode(TEXTS)
    model, D = lm_encoder.model, lm_encoder.dim
    ids, m = lm_encoder.tokenizer.batch_encode(TEXTS)
    with torch.no_grad():
        words = F.layer_norm(model.pos(model.tok_emb(ids)), (D,))
        states = F.layer_norm(model.hidden(ids, m), (D,))
    assert torch.equal(mask, m)
    assert torch.equal(emb[..., :D], words * m[..., None])
    assert torch.equal(emb[..., D:], states * m[..., None])
    _check_interface(enc)


def test_toy_t5_words_is_its_shared_embedding_then_its_states():
    """``toyt5+words`` reads the toy T5 the same way: ``[LN(shared(ids)), LN(h_t)]`` per token, the
    caption's words and ``<eos>`` with no ``<bos>``, zeros on padding; ``toyt5+words:PATH`` loads a file."""
    base = text_encoders.get("toyt5")
    enc = text_encoders.get("toyt5+words")
    assert isinstance(enc, text_encoders.LMWordsAndStates) and enc.name == "toyt5+words"
    assert enc.model is base.model and enc.dim == 2 * base.dim
    emb, mask = enc.encode(TEXTS)
    ids, m = base.tokenizer.batch_encode(TEXTS, add_bos=False, add_eos=True)
    D = base.dim
    with torch.no_grad():
        words = F.layer_norm(base.model.shared(ids), (D,))
        states = F.layer_norm(base.model.hidden(ids, m), (D,))
    assert torch.equal(mask, m) and int(ids[0, 0]) != base.tokenizer.bos_id
    assert torch.equal(emb[..., :D], words * m[..., None])
    torch.testing.assert_close(emb[..., D:], states * m[..., None])
    from imagen_edu import checkpoints
    path = checkpoints.verify("t5")
    again = text_encoders.get(f"toyt5+words:{path}")
    assert again.name == f"toyt5+words:{path}"
    torch.testing.assert_close(again.encode(TEXTS)[0], emb)
    _check_interface(enc)


class _Recorder(text_encoders.TextEncoder):
    """A stand-in encoder that records the texts it is given."""

    name, dim = "recorder", 1

    def __init__(self):
        self.seen = []

    def encode(self, texts):
        texts = self._check_texts(texts)
        self.seen.extend(texts)
        return torch.ones(len(texts), 1, 1), torch.ones(len(texts), 1, dtype=torch.bool)


def test_canonical_encoder_rewrites_right_of_and_below_only():
    """``canonical:NAME`` (chapter 5, "Left of, right of") hands its encoder "B left of A" for
    "A right of B" and "B above A" for "A below B", and every other text unchanged."""
    rec = _Recorder()
    enc = text_encoders.CanonicalCaptions(rec)
    assert enc.name == "canonical:recorder" and enc.dim == 1 and isinstance(enc, text_encoders.TextEncoder)
    given = ["a red circle right of a blue square", "a red circle below a green triangle",
             "a red circle left of a blue square", "a cyan square above a red triangle", "a yellow circle",
             "a red square right of a red circle", "a dog on a beach"]
    enc.encode(given)
    assert rec.seen == ["a blue square left of a red circle", "a green triangle above a red circle"] + given[2:]
    with pytest.raises(TypeError, match="single str"):
        enc.encode("a red circle")


def test_canonical_lm_words_reads_meaning_not_wording():
    """The profiles' default encoder gives "A right of B" exactly the embedding of "B left of A"
    and still tells "A left of B" from "B left of A"."""
    enc, plain = text_encoders.get("canonical:lm+words"), text_encoders.get("lm+words")
    assert enc.base is plain and enc.tokenizer is plain.tokenizer and enc.dim == plain.dim
    e, _ = enc.encode(["a red circle right of a blue square", "a blue square left of a red circle",
                       "a red circle left of a blue square"])
    assert torch.equal(e[0], e[1])
    assert (e[0] - e[2]).abs().max() > 0.1


@pytest.mark.parametrize("name", ["lm", "lm+words", "canonical:lm+words"])
def test_every_encoder_is_frozen(name):
    """Imagen's text encoder is frozen (Section 2.1): every parameter has ``requires_grad`` False,
    the network is in eval mode (no dropout), and its output carries no gradient even when
    gradients are on."""
    enc = text_encoders.get(name)
    model = enc.base.model if isinstance(enc, text_encoders.CanonicalCaptions) else enc.model
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    with torch.enable_grad():
        emb, _ = enc.encode(TEXTS)
    assert not emb.requires_grad and emb.grad_fn is None


@pytest.mark.parametrize("name", ["lm", "lm+words", "canonical:lm+words"])
def test_masks_mark_padding(name):
    """The mask is True exactly on the caption's own tokens (``<bos>``, its words, ``<eos>``) and
    False on the padding after them; embeddings are zero on padding."""
    enc = text_encoders.get(name)
    emb, mask = enc.encode(TEXTS)
    lengths = [len(t.split()) + 2 for t in TEXTS]
    assert mask.shape[1] == max(lengths)
    for i, n in enumerate(lengths):
        assert mask[i, :n].all() and not mask[i, n:].any()
    assert (emb[~mask] == 0).all()


def test_get_resolves_every_name_the_package_uses(tiny_t5_dir):
    """``text_encoders.get`` resolves every encoder name a profile, the paper configs or a stage
    checkpoint stores, gives it back as ``enc.name``, and keeps one instance per name."""
    used = {profiles.get(p).imagen.text_encoder for p in profiles.names()}
    used |= {"lm", "lm+words", "canonical:lm+words", "canonical:lm", f"t5:{tiny_t5_dir}",
             f"canonical:t5:{tiny_t5_dir}", "t5:google/t5-v1_1-xxl"}       # the last one is never loaded
    for name in sorted(used):
        enc = text_encoders.get(name)
        assert isinstance(enc, text_encoders.TextEncoder) and enc.name == name
        assert text_encoders.get(name) is enc
    assert text_encoders.get_text_encoder is text_encoders.get
    assert isinstance(text_encoders.get("canonical:lm+words"), text_encoders.CanonicalCaptions)
    assert text_encoders.get(f"canonical:t5:{tiny_t5_dir}").dim == 32


def test_get_does_not_import_the_cascade():
    """The encoders are chapter 2's: resolving the cascade's default encoder imports no cascade module."""
    code = ("import sys, imagen_edu.text_encoders as t; t.get('canonical:lm+words'); "
            "bad = [m for m in sys.modules if m in ('imagen_edu.imagen', 'imagen_edu.unet', 'imagen_edu.diffusion')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_register_adds_a_name_and_the_error_lists_it(monkeypatch):
    """A registered name resolves through ``get`` (built once per name and device) and appears in
    the unknown-name error beside the built-in forms."""
    monkeypatch.setattr(text_encoders, "_FORMS", dict(text_encoders._FORMS))     # restored afterwards
    monkeypatch.setattr(text_encoders, "_INSTANCES", {})
    made = []
    text_encoders.register("h5-test-encoder", lambda device: made.append(device) or _Recorder(), "a test encoder")
    text_encoders.register("h5test:WHAT", lambda rest, device: _Recorder(), "a test family")
    enc = text_encoders.get("h5-test-encoder", device="meta")
    assert isinstance(enc, _Recorder) and text_encoders.get("h5-test-encoder", device="meta") is enc and made == ["meta"]
    assert isinstance(text_encoders.get("h5test:x"), _Recorder)
    with pytest.raises(ValueError, match="'h5-test-encoder' \\(a test encoder\\)") as err:
        text_encoders.get("h5test:")
    for form in ("'lm'", "'lm+words'", "'canonical:NAME'", "'t5:NAME_OR_PATH'", "'h5test:WHAT'"):
        assert form in str(err.value)
    with pytest.raises(ValueError, match="PREFIX:WHAT"):
        text_encoders.register("bad:", lambda rest, device: None, "x")
