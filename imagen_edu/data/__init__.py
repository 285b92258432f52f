"""Data: the shapes benchmark (``shapes``), its caption grammar (``captions``) and real data sets."""

from .captions import (  # noqa: F401
    COLOURS,
    HELDOUT_PAIRS,
    RELATIONS,
    SHAPES,
    ParsedCaption,
    all_captions,
    caption_corpus,
    make_caption,
    parse_caption,
)
