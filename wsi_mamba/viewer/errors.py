"""The viewer's error (its own module: the CLI imports it when building its parser, before anything heavy)."""

from __future__ import annotations


class ViewerError(ValueError):
    """A path given to the viewer holds nothing it can show, or the server cannot start; one line."""
