"""Tests of imagen_edu.tokenizer (chapter 2, section "Tokens")."""

import warnings

import pytest
import torch

from imagen_edu.data.captions import caption_corpus
from imagen_edu.tokenizer import SPECIALS, WordTokenizer, default_tokenizer


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


def test_vocabulary_is_specials_then_every_caption_word(tok):
    assert tok.vocab[:4] == list(SPECIALS)
    words = {w for c in caption_corpus("all") for w in c.split()}
    assert set(tok.vocab[4:]) == words
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)


def test_round_trip_every_caption(tok):
    for text in caption_corpus("all"):
        ids = tok.encode(text)
        assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
        assert tok.unk_id not in ids
        assert tok.decode(ids) == text


def test_encode_normalises_case_and_spaces(tok):
    assert tok.encode("  A RED   circle ") == tok.encode("a red circle")


def test_unknown_words_warn_and_map_to_unk(tok):
    with pytest.warns(UserWarning, match="purple"):
        ids = tok.encode("a purple circle")
    assert ids[2] == tok.unk_id
    assert tok.decode(ids) == "a <unk> circle"
    with pytest.warns(UserWarning, match="hexagon"):
        ids, mask = tok.batch_encode(["a red hexagon", "a blue square"])
    assert ids[0, 3] == tok.unk_id


def test_batch_encode_pads_and_masks(tok):
    texts = ["a red circle", "a red circle left of a blue square"]
    ids, mask = tok.batch_encode(texts)
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    assert ids.shape == mask.shape == (2, 10)
    assert mask.sum(1).tolist() == [5, 10]
    assert (ids[0, 5:] == tok.pad_id).all() and not mask[0, 5:].any()
    assert tok.batch_decode(ids) == texts
    ids2, mask2 = tok.batch_encode(texts, max_len=12)
    assert ids2.shape == (2, 12) and torch.equal(ids2[:, :10], ids)
    with pytest.raises(ValueError, match="max_len"):
        tok.batch_encode(texts, max_len=4)


def test_bad_inputs_raise_clear_errors(tok):
    with pytest.raises(TypeError):
        tok.batch_encode("a red circle")
    with pytest.raises(TypeError):
        tok.encode(3)
    with pytest.raises(ValueError, match="outside"):
        tok.decode([99])
    with pytest.raises(ValueError):
        WordTokenizer(["a", "a"])
    with pytest.raises(ValueError):
        WordTokenizer(["<pad>"])


def test_save_load_round_trip(tok, tmp_path):
    tok.save(tmp_path / "vocab.json")
    again = WordTokenizer.load(tmp_path / "vocab.json")
    assert again == tok and again.vocab == tok.vocab
    with pytest.raises(ValueError):
        WordTokenizer.from_json('{"vocab": ["a", "b"]}')


def test_known_text_gives_no_warning(tok):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok.batch_encode(["a red circle", "a blue square below a red triangle"])
