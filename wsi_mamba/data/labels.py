"""Label words: what counts as tumour (1) and as normal (0) in folder names, CSV cells and reference files."""

from __future__ import annotations

POSITIVE = {"tumor", "tumour", "1", "true", "yes", "positive", "metastasis"}
NEGATIVE = {"normal", "0", "false", "no", "negative"}


def parse_label(value: str) -> int | None:
    """1 for tumour, 0 for normal, None when the text is neither."""
    text = value.strip().lower()
    return 1 if text in POSITIVE else 0 if text in NEGATIVE else None
