"""Data: the shapes benchmark (``shapes``), its caption grammar (``captions``) and real data sets (``real``).

The caption grammar is pure Python and imported eagerly; the torch-based parts are imported on
first use (``from imagen_edu.data import ShapesDataset`` works and loads ``shapes``).
"""

import importlib

from .captions import (  # noqa: F401
    COLOURS,
    CONVERSE,
    HELDOUT_PAIRS,
    MIRROR,
    RELATIONS,
    SHAPES,
    ParsedCaption,
    all_captions,
    canonical_caption,
    converse_caption,
    caption_corpus,
    make_caption,
    mirror_caption,
    parse_caption,
    read_captions,
    read_jsonl,
)

_LAZY = {
    "shapes": ("ShapesDataset", "Scene", "SceneObject", "make_batch", "render", "render_batch", "sample_scene",
               "scene_at", "SPLITS"),
    "real": ("CaptionedImageFolder", "torchvision_captioned"),
}


def __getattr__(name):
    for module, names in _LAZY.items():
        if name in names:
            return getattr(importlib.import_module(f"{__name__}.{module}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
