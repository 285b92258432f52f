"""Text-only corpora for pretraining the toy T5 encoder (chapter 2b).

Imagen's text encoder (T5-XXL) was pretrained on text alone (C4, about 750 GB of web text) and
then frozen: no image, layout or judge ever shaped it. The toy does the same with a corpus built
from the caption grammar (:mod:`imagen_edu.data.captions`) and nothing else. Two designs:

* ``"captions"``: every caption of the grammar once, one per document. A sentence in which
  nothing needs the meaning of ``left``: the words of one caption never depend on another's.
* ``"restated"``: each two-object caption followed by its converse, the same fact said the other
  way round (``a red circle left of a blue square . a blue square right of a red circle``), in
  both orders; one-object captions alone. Real text says one thing in many ways; here, to fill a
  dropped ``right`` the model must know what ``left`` meant and which object came first.
* ``"described"``: the restated pair and a third sentence that names where each object is, in
  the caption's own order (``a red circle right of a blue square . a blue square left of a red
  circle . on the right a red circle , on the left a blue square``), as a description in prose
  would. To fill a dropped ``right`` there the model must combine the object's order with the
  relation word: exactly the product a picture of the caption needs (chapter 5).

**Held-out pairs.** Both corpora contain every colour-shape pair, the four held out of the image
training split included: a large text corpus such as C4 mentions green triangles too, and Imagen
withholds nothing from its text encoder. The held-out compositions are withheld from the *image*
training (:data:`~imagen_edu.data.captions.HELDOUT_PAIRS`), which is where the toy measures
whether the cascade composes what it never saw drawn.
"""

from __future__ import annotations

from .captions import CONVERSE, all_captions, make_caption

__all__ = ["CORPORA", "SEPARATOR", "SIDE_WORDS", "side_sentence", "text_corpus"]

#: the corpus designs :func:`text_corpus` knows
CORPORA: tuple[str, ...] = ("captions", "restated", "described")
#: the word naming each side (first object's side on the relation's axis, the other's)
SIDE_WORDS: dict[str, tuple[str, str]] = {"left of": ("left", "right"), "right of": ("right", "left"),
                                          "above": ("top", "bottom"), "below": ("bottom", "top")}
#: the token between two sentences of one document
SEPARATOR = "."


def side_sentence(objects, relation: str) -> str:
    """``on the right a red circle , on the left a blue square`` for ``a red circle right of a blue
    square``: each object's side, in the caption's order."""
    (c1, s1), (c2, s2) = objects
    w1, w2 = SIDE_WORDS[relation]
    return f"on the {w1} a {c1} {s1} , on the {w2} a {c2} {s2}"


def text_corpus(name: str) -> list[str]:
    """The documents of corpus ``name`` (see the module docstring), in a fixed order.

    ``"captions"``: 1,098 documents (18 one-object, 1,080 two-object). ``"restated"``: also 1,098:
    the 18 one-object captions, and for each of the 540 two-object facts its two phrasings
    joined, once in each order, so every caption opens exactly one document. ``"described"``:
    1,098 too, each two-object caption followed by its converse and its side sentence.
    """
    if name not in CORPORA:
        raise ValueError(f"unknown text corpus {name!r}: expected one of {CORPORA}")
    docs = []
    for cap in all_captions():
        if name == "captions" or cap.relation is None:
            docs.append(cap.text)
            continue
        a, b = cap.objects
        converse = make_caption((b, a), CONVERSE[cap.relation])
        if name == "described":
            docs.append(f"{cap.text} {SEPARATOR} {converse} {SEPARATOR} {side_sentence(cap.objects, cap.relation)}")
            continue
        docs.append(f"{cap.text} {SEPARATOR} {converse}")
        docs.append(f"{converse} {SEPARATOR} {cap.text}")
    return list(dict.fromkeys(docs))
