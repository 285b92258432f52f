"""Tests of the caption grammar and corpus (imagen_edu.data.captions)."""

import pytest

from imagen_edu.data import (
    COLOURS, HELDOUT_PAIRS, RELATIONS, SHAPES, ParsedCaption, all_captions, caption_corpus, make_caption,
    parse_caption,
)
from imagen_edu.data.captions import all_objects


def test_vocabulary_matches_design():
    assert COLOURS == {"red": 0, "yellow": 60, "green": 120, "cyan": 180, "blue": 240, "magenta": 300}
    assert set(SHAPES) == {"circle", "square", "triangle"}
    assert set(RELATIONS) == {"left of", "right of", "above", "below"}
    assert HELDOUT_PAIRS == {("green", "triangle"), ("blue", "circle"), ("yellow", "square"), ("magenta", "triangle")}


def test_corpus_counts():
    caps = all_captions()
    one = [c for c in caps if len(c.objects) == 1]
    two = [c for c in caps if len(c.objects) == 2]
    assert len(one) == 18 and len(two) == 18 * 15 * 4 == 1080
    texts = [c.text for c in caps]
    assert len(set(texts)) == len(texts) == 1098
    # held-out marking: counts from first principles
    n_free = 18 - len(HELDOUT_PAIRS)
    # ordered pairs of different colours with neither object held out
    free = [o for o in all_objects() if o not in HELDOUT_PAIRS]
    n_free_pairs = sum(1 for a in free for b in free if a[0] != b[0])
    train = caption_corpus("train")
    assert len(train) == n_free + 4 * n_free_pairs
    assert len(caption_corpus("heldout")) == 1098 - len(train)
    assert sorted(caption_corpus("all")) == sorted(texts)
    assert caption_corpus("train") == train  # reproducible, fixed order


def test_heldout_marking():
    for text in caption_corpus("train"):
        assert not any(o in HELDOUT_PAIRS for o in parse_caption(text).objects)
    for text in caption_corpus("heldout"):
        assert any(o in HELDOUT_PAIRS for o in parse_caption(text).objects)
    assert parse_caption("a blue circle").heldout
    assert parse_caption("a red square above a green triangle").heldout
    assert not parse_caption("a green circle above a blue triangle").heldout


def test_parse_round_trip():
    for c in all_captions():
        assert parse_caption(c.text) == c
        assert make_caption(c.objects, c.relation) == c.text
    assert parse_caption("  A Red   Circle left of a BLUE square ") == ParsedCaption(
        (("red", "circle"), ("blue", "square")), "left of")


@pytest.mark.parametrize("bad", ["a purple circle", "a red circle left of a red square", "red circle",
                                 "a red circle near a blue square", "", "a red circle left of",
                                 "a red circle and a blue square", "two red circles"])
def test_outside_grammar_raises_naming_grammar(bad):
    with pytest.raises(ValueError, match="grammar"):
        parse_caption(bad)


def test_bad_types_and_splits():
    with pytest.raises(TypeError, match="str"):
        parse_caption(3)
    with pytest.raises(ValueError, match="split"):
        caption_corpus("test")
    with pytest.raises(ValueError, match="grammar"):
        make_caption([("red", "hexagon")])
    with pytest.raises(ValueError):
        make_caption([("red", "circle")], "left of")


def test_canonical_caption_says_the_same_with_left_of_or_above():
    """Every two-object caption's canonical form uses ``left of``/``above``, is in the grammar, and
    any scene drawn for it satisfies the original caption (same objects, same geometry)."""
    import numpy as np

    from imagen_edu.data import CONVERSE, canonical_caption
    from imagen_edu.data.shapes import place_objects, relation_gap

    rng = np.random.default_rng(0)
    changed = 0
    for p in all_captions():
        c = canonical_caption(p.text)
        q = parse_caption(c)
        assert sorted(q.objects) == sorted(p.objects)
        if p.relation is None:
            assert c == p.text
            continue
        assert q.relation in ("left of", "above")
        assert canonical_caption(c) == c                       # idempotent
        changed += c != p.text
        if c != p.text:                                         # objects swapped, relation its converse
            assert q.objects == p.objects[::-1] and q.relation == CONVERSE[p.relation]
        scene = place_objects(rng, q)                           # a scene for the canonical caption ...
        by_obj = {(o.colour, o.shape): o for o in scene.objects}
        a, b = by_obj[p.objects[0]], by_obj[p.objects[1]]
        assert relation_gap(a, b, p.relation) > 0               # ... is a scene of the original one
    assert changed == 1080 // 2
    # one-object captions, text outside the grammar and case-forgiven input
    assert canonical_caption("a red circle") == "a red circle"
    assert canonical_caption("a photo of a cat") == "a photo of a cat"
    assert canonical_caption("A red circle  BELOW a blue square") == "a blue square above a red circle"
    with pytest.raises(TypeError, match="str"):
        canonical_caption(3)
