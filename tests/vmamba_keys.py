"""The official VMamba state-dict key lists (key and shape, in order), copied from the official model."""

from __future__ import annotations

from pathlib import Path

KEY_LISTS = Path(__file__).parent / "data" / "vmamba"


def official_keys(size: str) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) rows of ``official_{size}_keys.txt`` (size: tiny, small, base), in file order."""
    rows = []
    for line in (KEY_LISTS / f"official_{size}_keys.txt").read_text().splitlines():
        key, shape = line.split("\t")
        rows.append((key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip())))
    return rows
