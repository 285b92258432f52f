"""The caption grammar of the shapes benchmark, its relation flips, and caption files (page "The shapes benchmark").

A caption is ``a COLOUR SHAPE`` or ``a COLOUR SHAPE RELATION a COLOUR SHAPE``. The relation
reads left to right: in ``a red circle left of a blue square`` the red circle is the one on the
left. The two objects of a two-object caption always have different colours.

Relation flips, one table each: :data:`CONVERSE` (``A left of B`` says ``B right of A``; used by
:func:`converse_caption` and :func:`canonical_caption`) and :data:`MIRROR` (the relation of the
horizontally mirrored scene, :func:`mirror_caption`).

Caption files: :func:`read_jsonl` reads JSON-lines files such as a captioned image folder's
``captions.jsonl``; :func:`read_captions` reads the captions of such a file or of a plain text
file.

This module is pure Python (no torch) so that the tokenizer, the language model and the
renderer all share one definition of the language.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

# hue in degrees for each colour name (fully saturated, full value)
COLOURS: dict[str, int] = {
    "red": 0,
    "yellow": 60,
    "green": 120,
    "cyan": 180,
    "blue": 240,
    "magenta": 300,
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")

#: (colour, shape) objects that never appear in the ``train`` split.
HELDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("green", "triangle"), ("blue", "circle"), ("yellow", "square"), ("magenta", "triangle")}
)

GRAMMAR = ("'a COLOUR SHAPE' or 'a COLOUR SHAPE RELATION a COLOUR SHAPE' with COLOUR in "
           f"{list(COLOURS)}, SHAPE in {list(SHAPES)}, RELATION in {list(RELATIONS)}, "
           "and two different colours")

Obj = tuple[str, str]


@dataclass(frozen=True)
class ParsedCaption:
    """A caption split into its objects (one or two ``(colour, shape)`` tuples) and relation.

    ``relation`` is ``None`` for one-object captions. For two objects, the relation says where
    ``objects[0]`` is relative to ``objects[1]``.
    """

    objects: tuple[Obj, ...]
    relation: str | None = None

    @property
    def text(self) -> str:
        return make_caption(self.objects, self.relation)

    @property
    def heldout(self) -> bool:
        """True when any object is one of :data:`HELDOUT_PAIRS`."""
        return any(o in HELDOUT_PAIRS for o in self.objects)


def make_caption(objects, relation: str | None = None) -> str:
    """Build a caption from one or two ``(colour, shape)`` objects (and a relation for two)."""
    objects = tuple(tuple(o) for o in objects)
    for colour, shape in objects:
        if colour not in COLOURS or shape not in SHAPES:
            raise ValueError(f"unknown object ({colour!r}, {shape!r}); the grammar is {GRAMMAR}")
    if len(objects) == 1 and relation is None:
        return f"a {objects[0][0]} {objects[0][1]}"
    if len(objects) == 2 and relation in RELATIONS:
        if objects[0][0] == objects[1][0]:
            raise ValueError(f"the two objects must have different colours; the grammar is {GRAMMAR}")
        return f"a {objects[0][0]} {objects[0][1]} {relation} a {objects[1][0]} {objects[1][1]}"
    raise ValueError(f"expected one object without a relation or two objects with one of "
                     f"{list(RELATIONS)}, got {len(objects)} object(s) and relation {relation!r}")


def parse_caption(text: str) -> ParsedCaption:
    """Parse ``text`` in the benchmark grammar; raise ``ValueError`` naming the grammar otherwise.

    Case and surrounding/multiple spaces are forgiven; anything else is not.
    """
    if not isinstance(text, str):
        raise TypeError(f"caption must be a str, got {type(text).__name__}")
    words = text.lower().split()

    def obj(ws: list[str]) -> Obj | None:
        if len(ws) == 3 and ws[0] == "a" and ws[1] in COLOURS and ws[2] in SHAPES:
            return (ws[1], ws[2])
        return None

    if len(words) == 3 and (o := obj(words)):
        return ParsedCaption((o,), None)
    for rel in RELATIONS:
        n = len(rel.split())
        if len(words) == 6 + n and " ".join(words[3:3 + n]) == rel:
            a, b = obj(words[:3]), obj(words[3 + n:])
            if a and b and a[0] != b[0]:
                return ParsedCaption((a, b), rel)
    raise ValueError(f"caption {text!r} is not in the shapes grammar: expected {GRAMMAR}")


#: each relation's converse: ``A left of B`` says the same as ``B right of A``
CONVERSE: dict[str, str] = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
#: each relation in the horizontally mirrored scene: left and right swap, above and below stay
MIRROR: dict[str, str] = {r: CONVERSE[r] if r in ("left of", "right of") else r for r in RELATIONS}


def converse_caption(caption: str) -> str:
    """``caption`` with its relation replaced by the converse (``left of`` <-> ``right of``,
    ``above`` <-> ``below``): the caption of the mirrored scene. One-object captions raise ``ValueError``."""
    p = parse_caption(caption)
    if p.relation is None:
        raise ValueError(f"converse_caption needs a two-object caption, got {caption!r}")
    return make_caption(p.objects, CONVERSE[p.relation])


def mirror_caption(caption: str) -> str:
    """The caption of the horizontally mirrored scene: ``left of`` <-> ``right of`` (:data:`MIRROR`),
    everything else unchanged (one-object captions too). Circles, squares and apex-up triangles
    are mirror-symmetric, so the mirrored scene is again a scene of the grammar. Text outside
    the grammar raises ``ValueError``."""
    p = parse_caption(caption)
    return p.text if p.relation is None else make_caption(p.objects, MIRROR[p.relation])


def canonical_caption(text: str) -> str:
    """The caption that says the same with the relation ``left of`` or ``above``; other text unchanged.

    ``a red circle right of a blue square`` becomes ``a blue square left of a red circle`` (the
    two objects swap, the relation becomes its converse); captions with ``left of`` or ``above``,
    one-object captions and text outside the grammar come back as they are. In the canonical form
    the object named first is always the one on the left (or on top), so word order alone says
    where each object goes (chapter 5, "Left of, right of").
    """
    if not isinstance(text, str):
        raise TypeError(f"caption must be a str, got {type(text).__name__}")
    try:
        p = parse_caption(text)
    except ValueError:
        return text
    if p.relation in ("right of", "below"):
        return make_caption(p.objects[::-1], CONVERSE[p.relation])
    return text


def all_objects() -> list[Obj]:
    """All 18 (colour, shape) objects, colours in hue order."""
    return [(c, s) for c in COLOURS for s in SHAPES]


def all_captions() -> list[ParsedCaption]:
    """Every caption the grammar can produce (18 one-object + 1080 two-object), in a fixed order."""
    out = [ParsedCaption((o,), None) for o in all_objects()]
    for a, b in itertools.product(all_objects(), repeat=2):
        if a[0] != b[0]:
            out.extend(ParsedCaption((a, b), rel) for rel in RELATIONS)
    return out


def caption_corpus(split: str = "train") -> list[str]:
    """Caption texts for a split of the corpus.

    ``"train"``: captions with no held-out object; ``"heldout"``: captions with at least one;
    ``"all"``: every caption. The chapter-2 language model trains on ``"train"``.
    """
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"unknown corpus split {split!r}: expected 'train', 'heldout' or 'all'")
    caps = all_captions()
    if split == "train":
        caps = [c for c in caps if not c.heldout]
    elif split == "heldout":
        caps = [c for c in caps if c.heldout]
    return [c.text for c in caps]


# ---------------------------------------------------------------------------------------------
# Caption files
# ---------------------------------------------------------------------------------------------
def _text_lines(path: Path, what: str):
    """``(line number, text)`` of each line of the UTF-8 text file ``path`` (a leading BOM dropped).

    ``ValueError`` naming the file (and the line) for a folder or for a file that is not UTF-8
    text (a binary file: bytes that are not UTF-8, or a NUL byte); ``FileNotFoundError`` for a
    missing file. ``what`` names the file in the messages (e.g. ``"captions file"``).
    """
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; expected a text file")
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError:
                line = "\x00"
            if "\x00" in line:
                raise ValueError(f"{what} {path} line {n}: not UTF-8 text (a binary file?); expected one "
                                 "caption per line")
            yield n, line


def read_jsonl(path, fields: tuple[str, ...] = ("caption",)) -> list[tuple[int, dict]]:
    """The records of a JSON-lines file: ``[(line number, object), ...]``, blank lines skipped.

    Every line must be a JSON object whose ``fields`` are strings, as in a captioned image
    folder's ``captions.jsonl`` (``{"file": "img001.jpg", "caption": "a dog on a beach"}``).
    A missing file raises ``FileNotFoundError``; a folder, a binary file or a malformed line
    ``ValueError`` naming the file and the line number.
    """
    path = Path(path)
    want = " and ".join(repr(f) for f in fields)
    out = []
    for n, line in _text_lines(path, "JSON-lines file"):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} line {n}: not valid JSON ({err.msg}); expected an object with "
                             f"string field(s) {want}") from None
        if not isinstance(rec, dict) or not all(isinstance(rec.get(f), str) for f in fields):
            raise ValueError(f"{path} line {n}: expected an object with string field(s) {want}, "
                             f"got {line.strip()[:80]!r}")
        out.append((n, rec))
    return out


def read_captions(path) -> list[str]:
    """Captions from a file: a ``.jsonl`` file (the ``caption`` field of every line, :func:`read_jsonl`)
    or a text file with one caption per line. Blank lines are skipped. A missing, empty or binary
    file, a folder, or a malformed JSON line raises ``ValueError`` naming it (and the line)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"captions file {path} does not exist")
    if path.suffix == ".jsonl" and not path.is_dir():
        out = [rec["caption"] for _, rec in read_jsonl(path, ("caption",))]
    else:
        out = [line.rstrip("\r\n") for _, line in _text_lines(path, "captions file") if line.strip()]
    if not out:
        raise ValueError(f"captions file {path} holds no caption (it is empty or blank)")
    return out
