"""A cohort's manifest: the slides to score, from a CSV of slide paths or a folder of slides."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ...outputs.capped import read_csv_rows
from ...outputs.names import slide_name
from ..inputs import SLIDE_SUFFIXES, find_slides

__all__ = ["PATH_COLUMNS", "ManifestEntry", "read_manifest"]

PATH_COLUMNS = ("path", "slide", "image")  # the first of these in a manifest's header holds the slide paths


@dataclass(frozen=True)
class ManifestEntry:
    """One slide of a cohort: its name, its path (absolute, for the workers) and the path as the CSV shows it."""

    name: str
    path: Path
    shown: str


def _pick_path_column(header: list[str]) -> int | None:
    """Index of the column of slide paths: ``path`` if present, else ``slide``, else ``image``."""
    lowered = [cell.strip().lower() for cell in header]
    for key in PATH_COLUMNS:
        if key in lowered:
            return lowered.index(key)
    return None


def _read_csv_manifest(path: Path) -> list[ManifestEntry]:
    try:
        rows = read_csv_rows(path)  # capped, regular files only, CSV errors named
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text CSV file") from None
    numbered = [(line, row) for line, row in rows if any(cell.strip() for cell in row)]
    if not numbered:
        raise ValueError(f"{path}: empty manifest (expected a header with a 'slide' column and one row per slide)")
    header = numbered[0][1]
    column = _pick_path_column(header)
    if column is None:
        found = ", ".join(repr(cell.strip()) for cell in header)
        raise ValueError(f"{path}: no 'slide' (or 'path'/'image') column of slide paths in the header ({found})")
    base = path.parent
    entries = []
    for line, row in numbered[1:]:
        text = row[column].strip() if column < len(row) else ""
        if not text:
            raise ValueError(f"{path}:{line}: empty slide path")
        slide = Path(text).expanduser()
        entries.append(ManifestEntry(slide_name(slide), (base / slide).absolute(), text))
    if not entries:
        raise ValueError(f"{path}: the manifest lists no slides")
    return entries


def read_manifest(manifest: str | os.PathLike[str]) -> list[ManifestEntry]:
    """The slides of a cohort, sorted by name: a CSV with a ``slide`` (or ``path``/``image``) column of paths
    (relative ones resolve against the CSV's folder), or a folder searched recursively for slide files.
    ``ValueError`` for a missing manifest, a CSV without such a column, no slides, or two slides of one name."""
    manifest = Path(manifest)
    if manifest.is_dir():
        found = find_slides([manifest])
        entries = [ManifestEntry(slide_name(p), p.absolute(), p.relative_to(manifest).as_posix()) for p in found]
    elif manifest.exists():  # a FIFO or device too: refused in one line by the capped reader, never read
        if manifest.suffix.lower() in SLIDE_SUFFIXES:
            raise ValueError(f"{manifest}: a slide, not a manifest (give a CSV of slide paths or a folder of slides)")
        entries = _read_csv_manifest(manifest)
    else:
        raise ValueError(f"{manifest}: no such manifest (a CSV of slide paths or a folder of slides)")
    by_name: dict[str, list[str]] = {}
    for entry in entries:
        by_name.setdefault(entry.name, []).append(entry.shown)
    clashes = {name: shown for name, shown in by_name.items() if len(shown) > 1}
    if clashes:
        listed = "; ".join(f"{name}: {', '.join(shown)}" for name, shown in sorted(clashes.items()))
        raise ValueError(f"{manifest}: several slides share a name, their outputs would collide ({listed})")
    return sorted(entries, key=lambda e: e.name)
