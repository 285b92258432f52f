"""A Sphinx hook that puts the slide decks into the built book (``_build/html/slides/``).

Listed under ``sphinx.extra_extensions`` in ``_config.yml``. When an HTML build finishes it
builds a deck (:func:`.slides.build`) for every chapter whose executed notebook the build has
(its execution cache, see :func:`.slides.executed_notebook`), so the decks show the outputs that
the pages show; the instructor's guide links to them. The decks use the book's own
``_static/reveal.js`` and ``_static/mathjax``, which the build has just copied.

Being the book's one extension, it also makes the notebooks the build executes itself (myst-nb,
through jupyter-cache, in this process) wait for their kernel's replies in short slices
(:mod:`imagen_edu.kernel_polling`), as ``python -m imagen_edu.book_build`` does.
"""

from __future__ import annotations

from pathlib import Path

from sphinx.util import logging

from .. import kernel_polling
from . import slides

LOG = logging.getLogger(__name__)


def build_decks(app, exception) -> None:
    """``build-finished`` handler: the decks of every executed chapter, into ``outdir/slides``."""
    if exception is not None or app.builder.format != "html":
        return
    executed = Path(app.outdir).parent / "jupyter_execute" / "book"
    cache = Path(app.env.mystnb_config.execution_cache_path)
    notebooks = slides.executed_notebooks(None, executed, cache, missing="skip")
    if notebooks:
        decks = slides.write_decks(Path(app.outdir), notebooks)
        LOG.info(f"[classroom] {len(decks)} slide decks in {Path(app.outdir) / 'slides'}")


def setup(app):
    kernel_polling.install()
    app.connect("build-finished", build_decks)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
