"""The viewer's overlays, read from predict's GeoJSON: the tile scores as one small RGBA image (a pixel per
tile, placed over the slide by its level-0 extent) and the predicted regions' outlines.

Colours and opacity follow the heatmap PNG's (:mod:`wsi_mamba.outputs.heatmap`): low scores transparent.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..outputs.capped import InputFileError, load_json, read_capped_bytes
from ..outputs.heatmap_colours import DEFAULT_CMAP, colormap_lut, overlay_opacity

MAX_GEOJSON_BYTES = 512 << 20
"""Cap on a tiles GeoJSON (one feature per tile, ~350 bytes each: over a million tiles)."""


def read_feature_collection(path: Path) -> dict[str, Any]:
    """A GeoJSON FeatureCollection file (capped read), its features all objects; ``InputFileError`` when it is
    not one."""
    value = load_json(read_capped_bytes(path, MAX_GEOJSON_BYTES), path)
    if not isinstance(value, dict) or not isinstance(value.get("features"), list):
        raise InputFileError(path, "not a GeoJSON FeatureCollection")
    value["features"] = [f for f in value["features"] if isinstance(f, dict)]
    return value


@dataclass(frozen=True)
class ScoreOverlay:
    """Tile scores on their grid: ``scores`` (rows, cols) float32, NaN where no tile lies; cell (r, c) covers
    level-0 ``x0 + c * size0`` .. ``+ size0`` across and likewise down from ``y0``."""

    scores: np.ndarray
    x0: float
    y0: float
    size0: float

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """Level-0 (x, y, width, height) the grid covers."""
        rows, cols = self.scores.shape
        return self.x0, self.y0, cols * self.size0, rows * self.size0

    def rgba(self) -> np.ndarray:
        """(rows, cols, 4) uint8: the heatmap's colour map, opacity rising from transparent (low scores) to
        opaque at 1 (the viewer's opacity control scales it)."""
        lut = colormap_lut(DEFAULT_CMAP)
        clipped = np.clip(np.nan_to_num(self.scores, nan=0.0), 0.0, 1.0)
        out = np.zeros((*self.scores.shape, 4), np.uint8)
        out[..., :3] = lut[np.round(clipped * 255.0).astype(np.intp)]
        out[..., 3] = np.round(overlay_opacity(self.scores, alpha=1.0) * 255.0).astype(np.uint8)
        return out

    def png(self) -> bytes:
        """:meth:`rgba` as PNG bytes (a pixel per tile)."""
        buffer = io.BytesIO()
        Image.fromarray(self.rgba(), "RGBA").save(buffer, format="PNG")
        return buffer.getvalue()


def score_palette() -> list[str]:
    """The overlay's 256 colours, score 0 to 1, as ``#rrggbb`` (for a colour bar)."""
    return [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in colormap_lut(DEFAULT_CMAP).tolist()]


def _square(feature: dict[str, Any]) -> tuple[float, float, float] | None:
    """(x, y, side) of a tile feature's square polygon, or None when it is not one."""
    geometry = feature.get("geometry") or {}
    try:
        ring = np.asarray(geometry["coordinates"][0], np.float64)
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    if geometry.get("type") != "Polygon" or ring.ndim != 2 or ring.shape[1] < 2 or not np.isfinite(ring).all():
        return None
    x, y = ring[:, 0].min(), ring[:, 1].min()
    side = ring[:, 0].max() - x
    return (float(x), float(y), float(side)) if side > 0 else None


def score_overlay(features: list[dict[str, Any]], path: Path) -> ScoreOverlay | None:
    """The tile features of a ``NAME.tiles.geojson`` (squares with ``measurements.tumor_probability``) on their
    grid; None when there are no tiles; ``InputFileError`` naming ``path`` for tiles of mixed sizes."""
    xs, ys, values, sides = [], [], [], set()
    for feature in features:
        square = _square(feature)
        score = ((feature.get("properties") or {}).get("measurements") or {}).get("tumor_probability")
        if square is None or not isinstance(score, (int, float)):
            continue
        xs.append(square[0])
        ys.append(square[1])
        values.append(float(score))
        sides.add(round(square[2], 3))
    if not values:
        return None
    if len(sides) > 1:
        raise InputFileError(path, f"tiles of {len(sides)} different sizes: not one tile grid")
    size0 = sides.pop()
    x, y = np.asarray(xs), np.asarray(ys)
    x0, y0 = float(x.min()), float(y.min())
    cols = np.round((x - x0) / size0).astype(np.intp)
    rows = np.round((y - y0) / size0).astype(np.intp)
    scores = np.full((int(rows.max()) + 1, int(cols.max()) + 1), np.nan, np.float32)
    scores[rows, cols] = values
    return ScoreOverlay(scores, x0, y0, size0)


def region_outlines(features: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rings of each region feature (``Polygon`` or ``MultiPolygon``) as ``{"xs": [...], "ys": [...],
    "name": ..., "max_score": ...}``, one dict per ring (outer rings and holes alike: outlines)."""
    outlines = []
    for feature in features:
        geometry = feature.get("geometry") or {}
        properties = feature.get("properties") or {}
        kind, coordinates = geometry.get("type"), geometry.get("coordinates") or []
        polygons = [coordinates] if kind == "Polygon" else coordinates if kind == "MultiPolygon" else []
        for polygon in polygons:
            for ring in polygon:
                points = np.asarray(ring, np.float64)
                if points.ndim != 2 or points.shape[1] < 2 or not np.isfinite(points).all():
                    continue
                outlines.append(
                    {
                        "xs": points[:, 0].tolist(),
                        "ys": points[:, 1].tolist(),
                        "name": str(properties.get("name", "region")),
                        "max_score": properties.get("max_score"),
                    }
                )
    return outlines
