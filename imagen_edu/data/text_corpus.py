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

**Held-out pairs.** Both corpora contain every colour-shape pair, the four held out of the image
training split included: a large text corpus such as C4 mentions green triangles too, and Imagen
withholds nothing from its text encoder. The held-out compositions are withheld from the *image*
training (:data:`~imagen_edu.data.captions.HELDOUT_PAIRS`), which is where the toy measures
whether the cascade composes what it never saw drawn.
"""

from __future__ import annotations

from .captions import CONVERSE, all_captions, make_caption

__all__ = ["CORPORA", "SEPARATOR", "text_corpus"]

#: the corpus designs :func:`text_corpus` knows
CORPORA: tuple[str, ...] = ("captions", "restated")
#: the token between two sentences of one document
SEPARATOR = "."


def text_corpus(name: str) -> list[str]:
    """The documents of corpus ``name`` (see the module docstring), in a fixed order.

    ``"captions"``: 1,098 documents (18 one-object, 1,080 two-object). ``"restated"``: also 1,098:
    the 18 one-object captions, and for each of the 540 two-object facts its two phrasings
    joined, once in each order, so every caption opens exactly one document.
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
        docs.append(f"{cap.text} {SEPARATOR} {converse}")
        docs.append(f"{converse} {SEPARATOR} {cap.text}")
    return list(dict.fromkeys(docs))
