"""Tests of imagen_edu.embcache: both caches of text embeddings (in memory, memory-mapped) equal the encoder's output."""

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from imagen_edu import text_encoders
from imagen_edu.embcache import CachedTextEncoder, CaptionCache, EmbeddingCache, TextCache, build_cache

CAPS = ["a red circle", "a blue square left of a green circle", "a cyan triangle", "a red circle",
        "a magenta square above a yellow triangle"]


@pytest.fixture(scope="module")
def lm():
    return text_encoders.get("lm")


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    pytest.importorskip("transformers")
    return text_encoders.get(f"t5:{text_encoders.build_tiny_t5(tmp_path_factory.mktemp('t5'))}")


def _check_equals_encoder(cache, enc, caps, exact):
    emb, mask = cache.lookup(caps)
    want, wmask = enc.encode(caps)
    T = cache.max_len
    assert emb.shape == (len(caps), T, enc.dim) and mask.shape == (len(caps), T)
    assert emb.dtype == torch.float32 and mask.dtype == torch.bool
    assert T >= want.shape[1]
    assert torch.equal(mask[:, :want.shape[1]], wmask) and not mask[:, want.shape[1]:].any()
    assert (emb[~mask] == 0).all()
    if exact:
        assert torch.equal(emb[:, :want.shape[1]], want)
    else:  # float16 storage: within half precision
        torch.testing.assert_close(emb[:, :want.shape[1]], want, atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("dtype, exact", [("float32", True), ("float16", False)])
def test_lm_cache_equals_encoder(lm, tmp_path, dtype, exact):
    cache = build_cache(lm, CAPS, tmp_path / "c", batch_size=2, dtype=dtype)
    assert len(cache) == 4  # the duplicate is encoded once
    assert cache.dim == lm.dim and cache.encoder_name == "lm" and cache.dtype == dtype
    assert isinstance(cache.tokens, np.memmap)
    _check_equals_encoder(cache, lm, CAPS, exact)
    # reopened from disk, any order, any subset
    again = EmbeddingCache(tmp_path / "c", expected_dim=lm.dim, verify=True)
    _check_equals_encoder(again, lm, [CAPS[4], CAPS[0]], exact)
    # the file holds the real tokens only (no padding)
    n_tokens = int(lm.encode(list(dict.fromkeys(CAPS)))[1].sum())
    itemsize = 4 if dtype == "float32" else 2
    assert (tmp_path / "c" / "tokens.bin").stat().st_size == n_tokens * lm.dim * itemsize


def test_tiny_t5_cache_equals_encoder(tiny_t5, tmp_path):
    cache = build_cache(tiny_t5, CAPS, tmp_path / "t5", batch_size=3, dtype="float32")
    assert cache.dim == 32 and cache.encoder_name == tiny_t5.name
    _check_equals_encoder(cache, tiny_t5, CAPS, exact=False)  # batch padding changes float rounding only
    # the cache works as a text encoder
    enc = cache.as_encoder()
    assert isinstance(enc, CachedTextEncoder) and enc.dim == 32 and enc.name == tiny_t5.name
    e, m = enc.encode(CAPS[:2])
    assert torch.equal(e, cache.lookup(CAPS[:2])[0])


def test_unknown_caption_is_named(lm, tmp_path):
    cache = build_cache(lm, CAPS, tmp_path / "c")
    with pytest.raises(KeyError, match="a green blob"):
        cache.lookup(["a red circle", "a green blob"])
    with pytest.raises(TypeError):
        cache.lookup("a red circle")


def test_dimension_mismatch(lm, tmp_path):
    build_cache(lm, CAPS, tmp_path / "c")
    with pytest.raises(ValueError, match=rf"{lm.dim}-d.*128-d"):
        EmbeddingCache(tmp_path / "c", expected_dim=128)


def test_truncated_and_corrupt_files(lm, tmp_path):
    d = tmp_path / "c"
    build_cache(lm, CAPS, d)
    tok = d / "tokens.bin"
    good = tok.read_bytes()
    tok.write_bytes(good[:-7])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        EmbeddingCache(d)
    tok.write_bytes(good[:-2] + bytes([good[-2] ^ 0xFF, good[-1]]))  # same size, one byte flipped
    EmbeddingCache(d)  # sizes match: opening is cheap and does not hash
    with pytest.raises(ValueError, match="sha256"):
        EmbeddingCache(d, verify=True)
    tok.write_bytes(good)
    (d / "offsets.bin").write_bytes(np.array([0, 3, 2, 9, 12], dtype=np.int64).tobytes())
    with pytest.raises(ValueError, match="offsets"):
        EmbeddingCache(d)
    (d / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        EmbeddingCache(d)
    with pytest.raises(ValueError, match="no meta.json"):
        EmbeddingCache(tmp_path)


def test_build_errors(lm, tmp_path):
    build_cache(lm, CAPS, tmp_path / "c")
    with pytest.raises(ValueError, match="already holds"):
        build_cache(lm, CAPS, tmp_path / "c")
    build_cache(lm, CAPS[:2], tmp_path / "c", overwrite=True)
    assert len(EmbeddingCache(tmp_path / "c")) == 2
    with pytest.raises(ValueError, match="dtype"):
        build_cache(lm, CAPS, tmp_path / "d", dtype="int8")
    with pytest.raises(ValueError, match="non-empty"):
        build_cache(lm, ["a red circle", "  "], tmp_path / "d")
    with pytest.raises(TypeError):
        build_cache(lm, "a red circle", tmp_path / "d")

    class Huge:
        name, dim = "huge", 4

        def encode(self, texts):
            return torch.full((len(texts), 2, 4), 1e6), torch.ones(len(texts), 2, dtype=torch.bool)

    with pytest.raises(ValueError, match="float32"):
        build_cache(Huge(), ["x"], tmp_path / "e", dtype="float16")
    assert len(build_cache(Huge(), ["x"], tmp_path / "e", dtype="float32")) == 1


def test_text_cache_gives_the_old_training_tensors():
    """The in-memory cache that moved out of the cascade builds the same ``(N, T, D)`` table, masks
    and rows for the same calls as before (commit 4c3c1b9): a chunk of one-object captions first,
    then longer captions that pad the table, duplicates and known captions reusing their rows.
    Rows and masks exactly; embeddings to 1e-5 (the fixture's chapter-1 attention kernel may
    round the last bits differently from today's)."""
    with safe_open(str(Path(__file__).parent / "fixtures" / "lm_words_encoders.safetensors"), "pt") as f:
        want, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    cache = TextCache(text_encoders.get("canonical:lm+words"), meta["textcache_first"].split("\n"),
                      chunk=int(meta["textcache_chunk"]))
    ids = cache.ids(meta["textcache_then"].split("\n"))
    assert torch.equal(ids, want["textcache.ids"]) and ids.dtype == torch.long
    assert torch.equal(cache.mask, want["textcache.mask"])
    torch.testing.assert_close(cache.emb, want["textcache.emb"], atol=1e-5, rtol=0)


def test_text_cache_is_exactly_the_encoder_on_the_same_batch(lm):
    """A cache hit returns exactly what the encoder returned: the cache encodes the distinct
    captions in sorted order, ``chunk`` at a time, and stores the encoder's output unchanged."""
    distinct = sorted(set(CAPS))
    cache = TextCache(lm, CAPS, chunk=len(distinct))
    want, wmask = lm.encode(distinct)
    assert [cache.index[c] for c in distinct] == list(range(len(distinct)))
    assert torch.equal(cache.emb, want) and torch.equal(cache.mask, wmask)
    emb, mask = cache.lookup(CAPS)
    rows = [distinct.index(c) for c in CAPS]
    assert torch.equal(emb, want[rows]) and torch.equal(mask, wmask[rows])


def test_text_cache_pads_and_ignores_order_and_repeats(lm):
    """The table depends only on the captions asked for: order and repeats within a call change
    nothing; a longer caption added later pads the older rows with zeros and False."""
    a = TextCache(lm, CAPS, chunk=2)
    b = TextCache(lm, CAPS[::-1] + CAPS, chunk=2)
    assert a.index == b.index and torch.equal(a.emb, b.emb) and torch.equal(a.mask, b.mask)
    short = TextCache(lm, ["a red circle"])
    assert short.emb.shape == (1, 5, lm.dim)
    e, m = short.lookup(["a red circle left of a blue square", "a red circle"])
    assert short.emb.shape == (2, 10, lm.dim) and len(short) == 2
    assert m[1, :5].all() and not m[1, 5:].any() and (e[1, 5:] == 0).all()
    with pytest.raises(TypeError, match="single str"):
        short.lookup("a red circle")
    with pytest.raises(ValueError, match="chunk"):
        TextCache(lm, chunk=0)


def test_both_caches_share_one_interface(lm, tmp_path):
    """The memory-mapped and the in-memory cache answer the same lookup with the same masks and
    embeddings, and both read as a text encoder named after the encoder they cache. Embeddings
    to 1e-5, not exactly: the two encode different batches (first-occurrence order, 2 at a time,
    against sorted order, 256 at a time), and CPU kernels may round the last bits differently
    across batch shapes."""
    disk = build_cache(lm, CAPS, tmp_path / "c", batch_size=2, dtype="float32")
    memory = TextCache(lm, CAPS)
    for cache in (disk, memory):
        assert isinstance(cache, CaptionCache) and len(cache) == 4 and "a cyan triangle" in cache
        assert cache.dim == lm.dim and cache.encoder_name == "lm"
        enc = cache.as_encoder()
        assert isinstance(enc, CachedTextEncoder) and isinstance(enc, text_encoders.TextEncoder)
        assert enc.name == "lm" and enc.dim == lm.dim
    (de, dm), (me, mm) = disk.lookup(CAPS), memory.lookup(CAPS)
    assert torch.equal(dm, mm)
    torch.testing.assert_close(de, me, atol=1e-5, rtol=0)
    assert torch.equal(disk.ids(CAPS[:2]), torch.tensor(disk.rows(CAPS[:2])))
    assert CachedTextEncoder is text_encoders.CachedTextEncoder
