"""Batch helpers shared by ``predict`` and ``extract``: one line per failed slide, and output names that
cannot collide."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def slide_name(path: str | Path) -> str:
    """The name a slide goes by in stores, labels and outputs: its file name without the extension."""
    path = Path(path)
    return path.name if path.is_dir() else path.stem


def describe_failure(exc: BaseException) -> str:
    """One line for a per-slide failure: the message of a ValueError (ours name the file and the problem);
    for anything else (OSError, ZeroDivisionError, MemoryError, ...) also the exception's type."""
    lines = str(exc).strip().splitlines()
    text = lines[0].strip() if lines else ""
    if isinstance(exc, ValueError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def slide_failure(path: str | Path, exc: BaseException) -> str:
    """``PATH: message`` for a slide that failed (the path only once, when the message names it already)."""
    text = describe_failure(exc)
    return text if str(path) in text else f"{path}: {text}"


def check_unique_names(paths: Sequence[str | Path], what: str = "outputs") -> None:
    """``ValueError`` (one line) when two slides share a name (``a/x.tif`` and ``b/x.tif``): their ``what``
    would overwrite each other."""
    seen: dict[str, Path] = {}
    for path in paths:
        name = slide_name(path)
        if name in seen:
            raise ValueError(
                f"{seen[name]} and {path} share the name {name!r}: their {what} would overwrite each other "
                "(rename one, or run them separately with different --out folders)"
            )
        seen[name] = Path(path)
