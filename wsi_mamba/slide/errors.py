"""Exception types of the slide layer: one per kind of input, each message names the file."""

from __future__ import annotations

from os import PathLike


class SlideError(ValueError):
    """A slide cannot be opened or read; the message names the file and the problem."""

    def __init__(self, path: str | PathLike[str], problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class TileDecodeError(SlideError):
    """The pixels of one region cannot be decoded (a damaged JPEG tile, say) though the slide itself opened:
    callers reading many tiles may leave that tile out with a warning instead of failing the slide."""


class AnnotationError(ValueError):
    """An annotation file cannot be read; the message names the file and the problem."""

    def __init__(self, path: str | PathLike[str], problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
