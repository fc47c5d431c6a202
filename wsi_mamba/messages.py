"""How wsi-mamba shows warnings: one ``warning: message`` line (they are for users, not a source listing).

The CLI installs it in its process; a cohort's worker processes install it too, since they start with
Python's default format (``FILE:LINE: Category: message`` and the source line).
"""

from __future__ import annotations

import warnings

__all__ = ["one_line_warning", "use_one_line_warnings"]


def one_line_warning(message: Warning | str, *_: object, **__: object) -> str:
    """A warning as a ``warning: message`` line (a replacement for :func:`warnings.formatwarning`)."""
    return f"warning: {message}\n"


def use_one_line_warnings() -> None:
    """Show this process's warnings as :func:`one_line_warning` lines."""
    warnings.formatwarning = one_line_warning
