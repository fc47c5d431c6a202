"""QuPath-importable GeoJSON of scored tiles (File > Import objects from file), and the writer every GeoJSON
output here shares: one feature per line, written atomically.

Coordinates are level-0 pixels with the origin at the top-left of the full-resolution image, as QuPath and
:mod:`wsi_mamba.slide` use them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from os import PathLike
from typing import Any

import numpy as np

from .atomic import write_text_atomic

__all__ = ["NORMAL_COLOR", "TUMOR_COLOR", "tiles_geojson", "write_feature_collection", "write_tiles_geojson"]

TUMOR_COLOR = (200, 0, 0)
"""QuPath class colour of tiles scored ≥ 0.5 (the "Tumor" colour of :func:`wsi_mamba.slide.annotations.to_geojson`)."""
NORMAL_COLOR = (0, 160, 90)
"""QuPath class colour of tiles scored < 0.5."""


def tiles_geojson(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    size0: float,
    scores: Sequence[float] | np.ndarray,
    name_prefix: str = "tile",
    threshold: float | None = None,
) -> dict[str, Any]:
    """Scored tiles as a GeoJSON FeatureCollection in QuPath's conventions (QuPath ≥ 0.4 imports it).

    One ``Polygon`` feature per tile: the level-0 square ``(x, y)``–``(x + size0, y + size0)`` as a closed
    ring, with ``properties``::

        {"objectType": "tile", "name": "<name_prefix>_<x>_<y>",
         "classification": {"name": "Tumor" | "Normal", "color": [r, g, b]},   # Tumor when score ≥ 0.5
         "measurements": {"tumor_probability": score}, "isLocked": false}

    ``threshold`` keeps only tiles with score ≥ ``threshold``. Tiles whose score is NaN (not scored) are
    left out: QuPath measurements must be numbers and strict JSON has no NaN.
    """
    xs = np.asarray(x, np.float64).reshape(-1)
    ys = np.asarray(y, np.float64).reshape(-1)
    values = np.asarray(scores, np.float64).reshape(-1)
    if not (len(xs) == len(ys) == len(values)):
        raise ValueError(f"x, y and scores differ in length: {len(xs)}, {len(ys)}, {len(values)}")
    if not (size0 > 0 and math.isfinite(size0)):
        raise ValueError(f"size0 must be a positive number, got {size0}")
    keep = np.isfinite(values)
    if threshold is not None:
        keep &= values >= threshold
    side = float(size0)
    features = []
    for xi, yi, score in zip(xs[keep].tolist(), ys[keep].tolist(), values[keep].tolist(), strict=True):
        x1, y1 = xi + side, yi + side
        tumor = score >= 0.5
        features.append(
            {
                "type": "Feature",
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[xi, yi], [x1, yi], [x1, y1], [xi, y1], [xi, yi]]],
                },
                "properties": {
                    "objectType": "tile",
                    "name": f"{name_prefix}_{round(xi)}_{round(yi)}",
                    "classification": {
                        "name": "Tumor" if tumor else "Normal",
                        "color": list(TUMOR_COLOR if tumor else NORMAL_COLOR),
                    },
                    "measurements": {"tumor_probability": score},
                    "isLocked": False,
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def write_tiles_geojson(
    path: str | PathLike[str],
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    size0: float,
    scores: Sequence[float] | np.ndarray,
    name_prefix: str = "tile",
    threshold: float | None = None,
) -> None:
    """Write :func:`tiles_geojson` to ``path`` (``.geojson``), atomically, one feature per line."""
    collection = tiles_geojson(x, y, size0, scores, name_prefix=name_prefix, threshold=threshold)
    write_feature_collection(path, collection["features"])


def write_feature_collection(
    path: str | PathLike[str], features: Sequence[dict[str, Any]], properties: Mapping[str, Any] | None = None
) -> None:
    """Write a GeoJSON FeatureCollection of ``features`` to ``path``, atomically, one feature per line.

    ``properties`` (if given) is written as the collection's own ``properties`` member (a GeoJSON "foreign
    member": readers that do not know it, QuPath included, skip it)."""
    lines = [json.dumps(feature, allow_nan=False, separators=(",", ":")) for feature in features]
    body = ",\n".join(lines)
    head = '{"type":"FeatureCollection",'
    if properties is not None:
        head += '"properties":' + json.dumps(dict(properties), allow_nan=False, separators=(",", ":")) + ","
    write_text_atomic(path, head + '"features":[\n' + body + ("\n" if lines else "") + "]}\n")
