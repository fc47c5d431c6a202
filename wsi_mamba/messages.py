"""How wsi-mamba shows warnings and per-slide failures: one line each (they are for users, not a source listing).

The CLI installs the warning format in its process; a cohort's worker processes install it too, since they start with
Python's default format (``FILE:LINE: Category: message`` and the source line).
"""

from __future__ import annotations

import warnings
from pathlib import Path

__all__ = ["describe_failure", "one_line_warning", "slide_failure", "use_one_line_warnings"]


def one_line_warning(message: Warning | str, *_: object, **__: object) -> str:
    """A warning as a ``warning: message`` line (a replacement for :func:`warnings.formatwarning`)."""
    return f"warning: {message}\n"


def use_one_line_warnings() -> None:
    """Show this process's warnings as :func:`one_line_warning` lines."""
    warnings.formatwarning = one_line_warning


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
