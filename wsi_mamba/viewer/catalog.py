"""What the viewer serves: the slides of the folders it was given, each under an id (never a path), with its
predict result (``NAME.json``) and the tile-score and region GeoJSON beside it when there are any.

A folder of predict results lists the slides its results name; a folder without results lists its slide files
(no scores, no overlays). Only these slides and these files are ever read: the HTTP layer looks ids up here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..outputs.capped import InputFileError, is_regular_file, load_json, read_capped_bytes
from ..outputs.names import slide_name
from ..workflows.inputs import SLIDE_SUFFIXES
from .errors import ViewerError

TILES_SUFFIX = ".tiles.geojson"
REGIONS_SUFFIX = ".regions.geojson"


@dataclass
class SlideEntry:
    """One slide the viewer lists: ``id`` (URL-safe, unique), its name, the slide file (None when the result
    names a file that is no longer there), its predict result and the result's GeoJSON companions."""

    id: str
    name: str
    slide: Path | None
    result: dict[str, Any] | None = None
    tiles_geojson: Path | None = None
    regions_geojson: Path | None = None
    problems: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The entry as the slide list shows it (JSON-serialisable; no file paths)."""
        result = self.result or {}
        return {
            "id": self.id,
            "name": self.name,
            "score": result.get("score"),
            "prediction": result.get("prediction"),
            "threshold": result.get("threshold"),
            "warnings": list(result.get("warnings") or []),
            "reason": result.get("reason"),
            "has_slide": self.slide is not None,
            "has_overlay": self.tiles_geojson is not None,
            "has_regions": self.regions_geojson is not None,
            "problems": list(self.problems),
        }


def _is_result(value: Any) -> bool:
    """Whether a parsed JSON file is a predict result (a slide's name and path)."""
    return isinstance(value, dict) and isinstance(value.get("slide"), str) and isinstance(value.get("path"), str)


def _slide_of_result(result: dict[str, Any], folder: Path) -> Path | None:
    """The slide file a result names: its path as written, else beside or under the results folder, else None."""
    written = Path(result["path"])
    for candidate in (written, folder / written, folder / written.name):
        if candidate.exists():
            return candidate
    return None


def _results_in(folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The predict results (``*.json``) directly in ``folder``, sorted by file name; other JSON files are skipped."""
    found = []
    for path in sorted(folder.glob("*.json")):
        if not is_regular_file(path):
            continue
        try:
            value = load_json(read_capped_bytes(path), path)
        except InputFileError:
            continue
        if _is_result(value):
            found.append((path, value))
    return found


def _entry_of_result(json_path: Path, result: dict[str, Any]) -> SlideEntry:
    stem = json_path.name[: -len(".json")]
    tiles = json_path.with_name(stem + TILES_SUFFIX)
    regions = json_path.with_name(stem + REGIONS_SUFFIX)
    slide = _slide_of_result(result, json_path.parent)
    problems = [] if slide is not None else [f"slide file not found: {result['path']}"]
    return SlideEntry(
        id="",
        name=result["slide"],
        slide=slide,
        result=result,
        tiles_geojson=tiles if is_regular_file(tiles) else None,
        regions_geojson=regions if is_regular_file(regions) else None,
        problems=problems,
    )


def _entries_of(path: Path) -> list[SlideEntry]:
    """The entries of one given path: a results folder, a folder of slides, a result JSON or a slide file."""
    if path.is_dir():
        results = _results_in(path)
        if results:
            return [_entry_of_result(p, r) for p, r in results]
        if (path / "slides").is_dir() and _results_in(path / "slides"):  # a cohort's output folder
            return [_entry_of_result(p, r) for p, r in _results_in(path / "slides")]
        slides = sorted(p for p in path.rglob("*") if p.suffix.lower() in SLIDE_SUFFIXES and p.is_file())
        if not slides:
            raise ViewerError(f"{path}: no predict results (NAME.json) and no slide files in this folder")
        return [SlideEntry(id="", name=slide_name(p), slide=p) for p in slides]
    if path.is_file():
        if path.suffix.lower() == ".json":
            value = load_json(read_capped_bytes(path), path)
            if not _is_result(value):
                raise ViewerError(f"{path}: not a predict result (no 'slide' and 'path')")
            return [_entry_of_result(path, value)]
        return [SlideEntry(id="", name=slide_name(path), slide=path)]
    raise ViewerError(f"{path}: no such file or folder")


def slide_id(name: str, taken: set[str]) -> str:
    """A URL-safe id for slide ``name``: letters, digits, ``-``, ``_`` and inner dots only (no ``..``, no
    leading dot), made unique among ``taken`` with ``-2``, ``-3``, …"""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip(".") or "slide"
    base = re.sub(r"\.{2,}", ".", base)[:80]
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    return candidate


class Catalog:
    """The slides of the paths given to ``view``, by id, in the order found."""

    def __init__(self, paths: Iterable[str | Path]) -> None:
        self.entries: dict[str, SlideEntry] = {}
        for path in paths:
            for entry in _entries_of(Path(path)):
                entry.id = slide_id(entry.name, set(self.entries))
                self.entries[entry.id] = entry
        if not self.entries:
            raise ViewerError("no slides to show")

    def get(self, slide_id: str) -> SlideEntry | None:
        """The entry of ``slide_id``, or None (the HTTP layer answers 404)."""
        return self.entries.get(slide_id)

    def summaries(self) -> list[dict[str, Any]]:
        """Every entry's :meth:`SlideEntry.summary`, in order."""
        return [entry.summary() for entry in self.entries.values()]
