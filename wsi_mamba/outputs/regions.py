"""Tumour regions on a score grid and their shapes: :func:`tumor_regions` finds the connected groups of tiles
scored at or above a threshold, ranked by their highest score (region calling builds on it; the heatmap draws and
zooms on them); :func:`region_geometry` outlines a region exactly along its tile edges, :func:`region_annotation`
and :func:`slide_call` give its QuPath properties with the slide's call (score, prediction, threshold), so a
region on a slide called normal reads as such. The regions GeoJSON itself is written by
:mod:`.region_calling`.

Coordinates are level-0 pixels with the origin at the top-left of the full-resolution image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from .geojson import TUMOR_COLOR

__all__ = [
    "TumorRegion",
    "grid_origin",
    "region_annotation",
    "region_geometry",
    "slide_call",
    "tumor_regions",
]

_LEFT_TURN = {(1, 0): (0, -1), (0, -1): (-1, 0), (-1, 0): (0, 1), (0, 1): (1, 0)}
"""Heading (dx, dy) in image axes (y down) -> the heading after a left turn (as seen on screen)."""


def _cell_outline_rings(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """Closed rings of grid-corner points (col, row) bounding the True cells of a 4-connected ``mask``.

    Every boundary edge is walked with the cells on its right as seen on screen (y down), so the outer ring
    has a positive shoelace area in (x, y) and holes a negative one. Where two cells meet only at a corner,
    the walk turns left (around the empty cell): the rings stay simple, and a hole may touch the outer ring
    at a point, which GeoJSON/OGC polygons allow. Only corners where the direction changes are kept.
    """
    padded = np.pad(np.asarray(mask, bool), 1)
    inside = padded[1:-1, 1:-1]
    outgoing: dict[tuple[int, int], list[tuple[int, int]]] = {}
    # (neighbour offset, edge start corner and heading relative to the cell's top-left corner (c, r))
    sides = (
        ((-1, 0), (0, 0), (1, 0)),  # top: left -> right
        ((0, 1), (1, 0), (0, 1)),  # right: top -> bottom
        ((1, 0), (1, 1), (-1, 0)),  # bottom: right -> left
        ((0, -1), (0, 1), (0, -1)),  # left: bottom -> top
    )
    for (dr, dc), (sx, sy), heading in sides:
        neighbour = padded[1 + dr : padded.shape[0] - 1 + dr, 1 + dc : padded.shape[1] - 1 + dc]
        for r, c in zip(*np.nonzero(inside & ~neighbour), strict=True):
            outgoing.setdefault((int(c) + sx, int(r) + sy), []).append(heading)
    # Each edge's successor: the edge leaving its end point (the left one where two leave: a pinch). This
    # pairs edges one to one, so the rings are the cycles of the successor map.
    successor: dict[tuple[tuple[int, int], tuple[int, int]], tuple[tuple[int, int], tuple[int, int]]] = {}
    for point, headings in outgoing.items():
        for heading in headings:
            end = (point[0] + heading[0], point[1] + heading[1])
            leaving = outgoing[end]
            successor[point, heading] = (end, leaving[0] if len(leaving) == 1 else _LEFT_TURN[heading])
    rings = []
    while successor:
        first = next(iter(successor))
        edge, ring = first, []
        while True:
            following = successor.pop(edge)
            if following[1] != edge[1]:  # the direction changes at the following edge's start: a corner
                ring.append(following[0])
            edge = following
            if edge == first:
                break
        ring.append(ring[0])
        rings.append(ring)
    return rings


@dataclass(frozen=True)
class TumorRegion:
    """One connected group of tiles at or above the threshold on a score grid.

    ``cells`` is its (rows, cols) slice box on the grid and ``inside`` the (box-shaped) mask of its tiles;
    ``max_score``, ``mean_score`` and ``tiles`` summarise its scores."""

    cells: tuple[slice, slice]
    inside: np.ndarray
    max_score: float
    mean_score: float
    tiles: int


def tumor_regions(grid_scores: np.ndarray, threshold: float = 0.5, connectivity: int = 8) -> list[TumorRegion]:
    """The connected groups of cells of ``grid_scores`` (an (R, C) grid, NaN where no tile) scored at or above
    ``threshold``, highest ``max_score`` first (ties keep top-to-bottom order). ``connectivity`` 8: cells
    touching at a corner join; 4: only along a side."""
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    grid = np.asarray(grid_scores, np.float32)
    with np.errstate(invalid="ignore"):
        mask = grid >= threshold  # NaN (no tile) is False
    if not mask.any():
        return []
    from scipy import ndimage

    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), bool) if connectivity == 8 else None)
    regions = []
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        inside = labels[box] == label
        values = grid[box][inside]
        regions.append(TumorRegion(box, inside, float(values.max()), float(values.mean()), int(inside.sum())))
    regions.sort(key=lambda region: -region.max_score)  # stable
    return regions


def region_annotation(
    name: str, stats: dict[str, Any], call: dict[str, Any] | None, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A region's QuPath annotation properties: class ``Tumor``, ``extra`` (e.g. how it was called), its
    ``stats`` (also its measurements, with the slide's score and threshold) and the slide's ``call``."""
    measurements = dict(stats)
    if call is not None:
        measurements |= {"slide_score": call["slide_score"], "threshold": call["threshold"]}
    return {
        "objectType": "annotation",
        "name": name,
        "classification": {"name": "Tumor", "color": list(TUMOR_COLOR)},
        "isLocked": False,
        **(extra or {}),
        **stats,
        "measurements": measurements,
        **(call or {}),
    }


def grid_origin(
    rows: np.ndarray, cols: np.ndarray, x: np.ndarray, y: np.ndarray, size0: float
) -> tuple[float, float]:
    """Level-0 position of grid corner (0, 0): the whole-pixel offset of the tiles' ``x``/``y`` from
    ``cols``/``rows * size0`` (0 for :func:`~wsi_mamba.slide.tiling.make_tile_grid`), as TileGrid's x and y."""
    xs, ys = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return (round(float(np.median(xs - cols * size0))), round(float(np.median(ys - rows * size0))))


def region_geometry(region: TumorRegion, origin: tuple[float, float], size0: float) -> dict[str, Any]:
    """The exact outline of ``region``'s tiles in level-0 pixels (grid corner (c, r) at ``origin + (c, r) *
    size0``): a ``Polygon`` (outer ring, then a ring per hole), or a ``MultiPolygon`` when the region holds
    parts that touch only at corners."""
    from scipy import ndimage

    top, left = region.cells[0].start, region.cells[1].start

    def corner(c: int, r: int) -> list[float]:
        return [round(origin[0] + (c + left) * size0, 3), round(origin[1] + (r + top) * size0, 3)]

    parts, n_parts = ndimage.label(region.inside)  # 4-connected pieces: each one polygon with its holes
    polygons = []
    for part in range(1, n_parts + 1):
        rings = _cell_outline_rings(parts == part)
        rings.sort(key=_shoelace_area, reverse=True)  # the one outer ring (positive area) first
        polygons.append([[corner(c, r) for c, r in ring] for ring in rings])
    if len(polygons) == 1:
        return {"type": "Polygon", "coordinates": polygons[0]}
    return {"type": "MultiPolygon", "coordinates": polygons}


def slide_call(slide_score: float | None, threshold: float) -> dict[str, Any] | None:
    """``{"slide_prediction": "tumor" | "normal", "slide_score": s, "threshold": t}`` (``tumor`` when the
    score is at or above the threshold; the score rounded to 6 decimals), None without a score."""
    if slide_score is None:
        return None
    return {
        "slide_prediction": "tumor" if slide_score >= threshold else "normal",
        "slide_score": round(float(slide_score), 6),
        "threshold": float(threshold),
    }


def _shoelace_area(ring: Sequence[tuple[float, float]] | Sequence[Sequence[float]]) -> float:
    """Signed area of a closed ring (first point repeated last): positive when counter-clockwise in (x, y)."""
    return 0.5 * sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in pairwise(ring))
