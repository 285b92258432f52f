"""Pictures shared by the chapters: package source display, image grids, heatmaps."""

from __future__ import annotations

import inspect


def show_source(obj) -> None:
    """Display the source of a package function or class, syntax-highlighted in a notebook.

    The book never pastes package code twice: it renders it from the package with this.
    """
    src = inspect.getsource(obj)
    try:
        from IPython.display import Code, display

        display(Code(src, language="python"))
    except ImportError:  # plain Python
        print(src)
