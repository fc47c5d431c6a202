"""The viewer's data, shared by its HTTP endpoints and its page: the catalog, the slide tiles, and each slide's
overlays (read once, kept for the most recently viewed slides)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from ..outputs.capped import InputFileError
from ..slide import SlideError
from .catalog import Catalog, SlideEntry
from .overlay import ScoreOverlay, read_feature_collection, region_outlines, score_overlay
from .tiles import DEFAULT_CACHE_BYTES, SlideTiles, TilePyramid

OVERLAYS_KEPT = 16


class ViewerData:
    """What ``view`` serves, by slide id; unknown ids give None (never a file path from a request)."""

    def __init__(self, catalog: Catalog, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.catalog = catalog
        paths = {key: entry.slide for key, entry in catalog.entries.items() if entry.slide is not None}
        self.tiles = SlideTiles(paths, cache_bytes)
        self.overlay = lru_cache(maxsize=OVERLAYS_KEPT)(self._overlay)
        self.regions = lru_cache(maxsize=OVERLAYS_KEPT)(self._regions)

    def entry(self, slide_id: str) -> SlideEntry | None:
        """The catalog entry of ``slide_id``, or None."""
        return self.catalog.get(slide_id)

    def pyramid(self, slide_id: str) -> TilePyramid | None:
        """The tile layout of ``slide_id``'s slide; None for an unknown id or a result without its slide."""
        entry = self.entry(slide_id)
        if entry is None or entry.slide is None:
            return None
        return self.tiles.pyramid(slide_id)

    def _overlay(self, slide_id: str) -> ScoreOverlay | None:
        entry = self.entry(slide_id)
        if entry is None or entry.tiles_geojson is None:
            return None
        return score_overlay(read_feature_collection(entry.tiles_geojson)["features"], entry.tiles_geojson)

    def _regions(self, slide_id: str) -> list[dict[str, Any]] | None:
        entry = self.entry(slide_id)
        if entry is None or entry.regions_geojson is None:
            return None
        return region_outlines(read_feature_collection(entry.regions_geojson)["features"])

    def regions_geojson(self, slide_id: str) -> dict[str, Any] | None:
        """The regions of ``slide_id``: the FeatureCollection predict wrote, or None."""
        entry = self.entry(slide_id)
        if entry is None or entry.regions_geojson is None:
            return None
        return read_feature_collection(entry.regions_geojson)

    def describe(self, slide_id: str) -> dict[str, Any] | None:
        """A slide's summary, its result, its tile layout and the overlay's level-0 extent; None when unknown."""
        entry = self.entry(slide_id)
        if entry is None:
            return None
        info: dict[str, Any] = {**entry.summary(), "result": entry.result}
        try:  # a slide or GeoJSON that cannot be read is shown as a problem, the rest as usual
            pyramid = self.pyramid(slide_id)
        except SlideError as exc:
            info["problems"].append(str(exc))
            pyramid = None
        if pyramid is not None:
            info["slide"] = {
                "width": pyramid.width,
                "height": pyramid.height,
                "tile_px": pyramid.tile_px,
                "max_zoom": pyramid.max_zoom,
            }
        try:
            overlay = self.overlay(slide_id)
            self.regions(slide_id)
        except InputFileError as exc:
            info["problems"].append(str(exc))
            info["has_overlay"] = info["has_regions"] = False
            overlay = None
        if overlay is not None:
            x, y, w, h = overlay.extent
            info["overlay"] = {"x": x, "y": y, "width": w, "height": h, "tile_size0": overlay.size0}
        return info

    def close(self) -> None:
        """Close the open slides."""
        self.tiles.close()

