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


def test_relation_flip_tables():
    """One table per flip: ``CONVERSE`` (``A rel B`` says ``B CONVERSE[rel] A``) swaps left/right
    and above/below; ``MIRROR`` (the relation in the horizontally mirrored scene) swaps left/right
    only. ``converse_caption`` and ``mirror_caption`` apply them and keep the objects in place."""
    from imagen_edu.data.captions import CONVERSE, MIRROR, converse_caption, mirror_caption

    assert CONVERSE == {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
    assert MIRROR == {"left of": "right of", "right of": "left of", "above": "above", "below": "below"}
    assert converse_caption("a red circle below a blue square") == "a red circle above a blue square"
    assert mirror_caption("a red circle left of a blue square") == "a red circle right of a blue square"
    assert mirror_caption("a red circle below a blue square") == "a red circle below a blue square"
    assert mirror_caption("a red circle") == "a red circle"
    with pytest.raises(ValueError, match="grammar"):
        mirror_caption("a photo of a cat")
    with pytest.raises(ValueError, match="two-object"):
        converse_caption("a red circle")


def test_mirror_caption_describes_the_mirrored_scene():
    """Mirroring a scene left to right (``x -> 1 - x``) makes it a scene of ``mirror_caption``:
    the augmentation that chapter 4's CLIP trains with is label-correct."""
    import numpy as np

    from imagen_edu.data.captions import mirror_caption
    from imagen_edu.data.shapes import SceneObject, place_objects, relation_gap

    rng = np.random.default_rng(0)
    for p in all_captions()[18::7]:                       # two-object captions, every relation
        scene = place_objects(rng, p)
        a, b = (SceneObject(o.colour, o.shape, (1 - o.centre[0], o.centre[1]), o.size) for o in scene.objects)
        assert relation_gap(a, b, parse_caption(mirror_caption(p.text)).relation) > 0


def test_read_jsonl_and_read_captions(tmp_path):
    """The one reader of caption files: JSON lines (records with their line numbers, blank lines
    skipped, a bad line named) and plain text (one caption a line)."""
    import json

    from imagen_edu.data.captions import read_captions, read_jsonl
    from imagen_edu.embcache import read_captions as embcache_read_captions

    assert embcache_read_captions is read_captions
    f = tmp_path / "c.txt"
    f.write_text("a red circle\n\na blue square\n")
    assert read_captions(f) == ["a red circle", "a blue square"]
    j = tmp_path / "captions.jsonl"
    j.write_text(json.dumps({"file": "a.png", "caption": "a dog"}) + "\n\n" + json.dumps({"caption": "a cat"}) + "\n")
    assert read_jsonl(j) == [(1, {"file": "a.png", "caption": "a dog"}), (3, {"caption": "a cat"})]
    assert read_captions(j) == ["a dog", "a cat"]
    with pytest.raises(ValueError, match=r"line 3: expected an object with string field\(s\) 'file' and 'caption'"):
        read_jsonl(j, ("file", "caption"))
    j.write_text('{"caption": "a dog"}\n{not json\n')
    with pytest.raises(ValueError, match="line 2: not valid JSON"):
        read_captions(j)
    with pytest.raises(FileNotFoundError):
        read_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="does not exist"):
        read_captions(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="no caption"):
        read_captions(tmp_path / "empty.txt")
