"""Tile-score outputs: the score grid, a heatmap over the slide thumbnail (PNG with a legend; low scores
transparent), and GeoJSON FeatureCollections QuPath imports (File > Import objects from file): the scored
tiles, and the predicted tumour regions (outlines of connected high-score tiles) as annotations.

Scores are tumour probabilities in [0, 1]. Coordinates are level-0 pixels with the origin at the top-left
of the full-resolution image, as QuPath and :mod:`wsi_mamba.slide` use them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from functools import lru_cache
from itertools import pairwise
from os import PathLike
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .atomic import atomic_path, write_text_atomic

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_CMAP",
    "NORMAL_COLOR",
    "TRANSPARENT_BELOW",
    "TUMOR_COLOR",
    "colormap_lut",
    "overlay_opacity",
    "render_heatmap",
    "render_heatmap_png",
    "score_grid",
    "tiles_geojson",
    "tumour_regions_geojson",
    "write_heatmap_png",
    "write_regions_geojson",
    "write_tiles_geojson",
]

TUMOR_COLOR = (200, 0, 0)
"""QuPath class colour of tiles scored ≥ 0.5 (the "Tumor" colour of :func:`wsi_mamba.slide.annotations.to_geojson`)."""
NORMAL_COLOR = (0, 160, 90)
"""QuPath class colour of tiles scored < 0.5."""
DEFAULT_CMAP = "YlOrRd"
"""Heatmap colours: a warm map, pale yellow (low) to dark red (high)."""
DEFAULT_ALPHA = 0.7
"""Heatmap opacity at score 1."""
TRANSPARENT_BELOW = 0.2
"""Heatmap scores up to this are transparent: the tissue shows as it is."""


# ---- score grid ------------------------------------------------------------------------------------------
def score_grid(
    rows: Sequence[int] | np.ndarray,
    cols: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    shape: tuple[int, int],
) -> np.ndarray:
    """Per-tile ``scores`` placed on their (row, col) cells of a ``shape`` (R, C) grid.

    Returns an (R, C) float32 array, NaN where no tile lies (a cell given twice keeps the last score).
    ``rows``/``cols`` are :class:`~wsi_mamba.slide.tiling.TileGrid`'s ``rows``/``cols``, ``shape`` its ``shape``.
    """
    rows = np.asarray(rows, np.int64).reshape(-1)
    cols = np.asarray(cols, np.int64).reshape(-1)
    values = np.asarray(scores, np.float32).reshape(-1)
    if not (len(rows) == len(cols) == len(values)):
        raise ValueError(f"rows, cols and scores differ in length: {len(rows)}, {len(cols)}, {len(values)}")
    n_rows, n_cols = (int(s) for s in shape)
    if len(rows) and (rows.min() < 0 or rows.max() >= n_rows or cols.min() < 0 or cols.max() >= n_cols):
        raise ValueError(f"tile cells outside the {n_rows}x{n_cols} grid")
    grid = np.full((n_rows, n_cols), np.nan, np.float32)
    grid[rows, cols] = values
    return grid


# ---- colours ---------------------------------------------------------------------------------------------
@lru_cache(maxsize=8)
def colormap_lut(cmap: str = "inferno") -> np.ndarray:
    """A (256, 3) uint8 lookup table of matplotlib colormap ``cmap`` (entry i is the colour of i / 255).

    Uses matplotlib's colormap registry only (no pyplot, no GUI backend); perceptually uniform maps
    ("inferno", "viridis", "magma", "cividis") suit probabilities.
    """
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - matplotlib is a dependency
        raise ImportError("heatmaps need matplotlib (pip install matplotlib)") from e
    try:
        colormap = matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(f"unknown colormap {cmap!r}") from None
    rgba = colormap(np.linspace(0.0, 1.0, 256))
    lut = np.round(np.asarray(rgba)[:, :3] * 255.0).astype(np.uint8)
    lut.setflags(write=False)
    return lut


def _colour_indices(scores: np.ndarray) -> np.ndarray:
    """Scores (clipped to [0, 1]; NaN treated as 0) as lookup-table indices 0..255."""
    clipped = np.clip(np.nan_to_num(scores, nan=0.0), 0.0, 1.0)
    return np.round(clipped * 255.0).astype(np.intp)


# ---- heatmap over a thumbnail ------------------------------------------------------------------------------
def _cell_index(n_px: int, extent0: float, size0: float, n_cells: int) -> np.ndarray:
    """For each of ``n_px`` thumbnail pixels spanning ``extent0`` level-0 px: the grid cell its centre falls in."""
    centres0 = (np.arange(n_px, dtype=np.float64) + 0.5) * (extent0 / n_px)
    return np.clip(np.floor(centres0 / size0).astype(np.intp), 0, n_cells - 1)


def overlay_opacity(
    scores: np.ndarray, alpha: float = DEFAULT_ALPHA, transparent_below: float = TRANSPARENT_BELOW
) -> np.ndarray:
    """Opacity of the colour drawn for each score: 0 up to ``transparent_below``, then rising linearly to
    ``alpha`` at score 1, ``alpha * clip((score - transparent_below) / (1 - transparent_below), 0, 1)``.

    NaN scores get 0. So unsuspicious tissue stays visible as it is and colour draws the eye to high scores.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if not 0.0 <= transparent_below < 1.0:
        raise ValueError(f"transparent_below must be in [0, 1), got {transparent_below}")
    clipped = np.clip(np.nan_to_num(np.asarray(scores, np.float32), nan=0.0), 0.0, 1.0)
    ramp = np.clip((clipped - transparent_below) / (1.0 - transparent_below), 0.0, 1.0)
    return (alpha * ramp).astype(np.float32)


def render_heatmap(
    thumbnail: np.ndarray | Image.Image,
    grid_scores: np.ndarray,
    slide_dimensions: tuple[int, int],
    size0: float,
    alpha: float = DEFAULT_ALPHA,
    cmap: str = DEFAULT_CMAP,
    transparent_below: float = TRANSPARENT_BELOW,
) -> np.ndarray:
    """Blend the tile-score map over a slide thumbnail, more opaque the higher the score.

    Args:
        thumbnail: (h, w, 3) uint8 RGB image of the whole slide (e.g. ``Slide.get_thumbnail``).
        grid_scores: (R, C) scores in [0, 1] from :func:`score_grid`, NaN where there is no tile.
        slide_dimensions: the slide's level-0 (width, height): what the thumbnail shows.
        size0: level-0 side of one grid cell (``TileGrid.size0``). The grid may cover a little more than the
            slide (C * size0 ≥ width); each thumbnail pixel takes the cell its centre falls in (nearest).
        alpha: opacity of the colour at score 1 (0 = thumbnail only, 1 = colour only).
        cmap: a matplotlib colormap name.
        transparent_below: scores up to this are not drawn; above it the opacity ramps up to ``alpha``
            (:func:`overlay_opacity`).

    Returns:
        (h, w, 3) uint8: ``(1 - a) * thumbnail + a * colour`` with ``a = overlay_opacity(score)`` on pixels whose
        cell has a score, the thumbnail's pixels unchanged elsewhere (and wherever ``a`` is 0).
    """
    image = np.asarray(thumbnail)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"thumbnail must be (h, w, 3) uint8, got {image.shape} {image.dtype}")
    grid = np.asarray(grid_scores, np.float32)
    if grid.ndim != 2 or grid.size == 0:
        raise ValueError(f"grid_scores must be a non-empty (rows, cols) array, got shape {grid.shape}")
    if not (size0 > 0 and math.isfinite(size0)):
        raise ValueError(f"size0 must be a positive number, got {size0}")
    cell_opacity = overlay_opacity(grid, alpha, transparent_below)  # (R, C); NaN cells get 0
    w0, h0 = slide_dimensions
    h, w = image.shape[:2]
    ri = _cell_index(h, float(h0), float(size0), grid.shape[0])
    ci = _cell_index(w, float(w0), float(size0), grid.shape[1])
    # Colour the grid once, then expand cells to pixels by fancy indexing (nearest neighbour).
    cell_colours = colormap_lut(cmap)[_colour_indices(grid)]  # (R, C, 3)
    colours = cell_colours[ri[:, None], ci[None, :]]
    opacity = cell_opacity[ri[:, None], ci[None, :]]
    drawn = opacity > 0
    out = image.copy()
    a = opacity[drawn][:, None]
    blend = (1.0 - a) * image[drawn].astype(np.float32) + a * colours[drawn].astype(np.float32)
    out[drawn] = np.clip(np.round(blend), 0, 255).astype(np.uint8)
    return out


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's bundled font at ``size`` px where this Pillow can scale it, its bitmap font otherwise."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1, or built without FreeType
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: Any) -> tuple[int, int]:
    """Width and height of ``text`` drawn from (0, 0) (height from the top of the line box)."""
    _, _, right, bottom = draw.textbbox((0, 0), text, font=font)
    return math.ceil(right), math.ceil(bottom)


def _legend_bar(
    width: int, height: int, alpha: float, cmap: str, transparent_below: float, check: int = 4
) -> np.ndarray:
    """(height, width, 3) colour bar for scores 0 … 1, blended with :func:`overlay_opacity` over a grey and
    white checkerboard (the usual sign of transparency), exactly as the heatmap blends over tissue."""
    scores = np.linspace(0.0, 1.0, width, dtype=np.float32)
    colours = colormap_lut(cmap)[_colour_indices(scores)].astype(np.float32)  # (width, 3)
    opacity = overlay_opacity(scores, alpha, transparent_below)[:, None]
    yy, xx = np.mgrid[0:height, 0:width]
    backdrop = np.where(((yy // check + xx // check) % 2 == 0)[..., None], 255.0, 204.0)
    bar = (1.0 - opacity[None]) * backdrop + opacity[None] * colours[None]
    return np.clip(np.round(bar), 0, 255).astype(np.uint8)


def _tick_label(value: float) -> str:
    """A score as a short tick label: 0, 0.2, 0.35, 1."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def render_heatmap_png(
    thumbnail: np.ndarray | Image.Image,
    grid_scores: np.ndarray,
    slide_dimensions: tuple[int, int],
    size0: float,
    title: str | None = None,
    legend: bool = True,
    alpha: float = DEFAULT_ALPHA,
    cmap: str = DEFAULT_CMAP,
    transparent_below: float = TRANSPARENT_BELOW,
) -> Image.Image:
    """The heatmap of :func:`render_heatmap` as a PIL image, with an optional title band above it and a
    legend below it: a colour bar of tumor probability 0 … 1 drawn with the heatmap's opacity over a
    checkerboard, ticks at 0, ``transparent_below`` and 1, and a caption saying lower scores are transparent.
    Narrow thumbnails are padded (white) to fit the legend."""
    heat = render_heatmap(
        thumbnail, grid_scores, slide_dimensions, size0, alpha=alpha, cmap=cmap, transparent_below=transparent_below
    )
    h, w = heat.shape[:2]
    if not title and not legend:
        return Image.fromarray(heat)
    font = _font(12)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad = 6
    caption = f"tumor probability (transparent below {_tick_label(transparent_below)})"
    title_w, title_h = _text_size(probe, title, font) if title else (0, 0)
    cap_w, text_h = _text_size(probe, caption, font)
    min_w = max(title_w, cap_w + 4 * pad if legend else 0) + 2 * pad
    width = max(w, min_w)
    top = title_h + 2 * pad if title else 0
    bar_h, tick_h = 12, 3
    bottom = (pad + bar_h + tick_h + 2 * (text_h + 2) + pad) if legend else 0
    canvas = Image.new("RGB", (width, top + h + bottom), (255, 255, 255))
    canvas.paste(Image.fromarray(heat), ((width - w) // 2, top))
    draw = ImageDraw.Draw(canvas)
    black = (0, 0, 0)
    if title:
        draw.text(((width - title_w) // 2, pad), title, fill=black, font=font)
    if legend:
        x0, x1 = pad, width - pad
        y0 = top + h + pad
        canvas.paste(Image.fromarray(_legend_bar(x1 - x0, bar_h, alpha, cmap, transparent_below)), (x0, y0))
        draw.rectangle((x0 - 1, y0 - 1, x1, y0 + bar_h), outline=black)
        ty = y0 + bar_h + tick_h
        for value in sorted({0.0, transparent_below, 1.0}):
            x = x0 + round(value * (x1 - x0 - 1))
            draw.line((x, y0 + bar_h, x, ty), fill=black)
            label = _tick_label(value)
            label_w = _text_size(draw, label, font)[0]
            draw.text((min(max(x - label_w // 2, x0), x1 - label_w), ty), label, fill=black, font=font)
        draw.text(((x0 + x1 - cap_w) // 2, ty + text_h + 2), caption, fill=black, font=font)
    return canvas


def write_heatmap_png(
    path: str | PathLike[str],
    thumbnail: np.ndarray | Image.Image,
    grid_scores: np.ndarray,
    slide_dimensions: tuple[int, int],
    size0: float,
    title: str | None = None,
    legend: bool = True,
    alpha: float = DEFAULT_ALPHA,
    cmap: str = DEFAULT_CMAP,
    transparent_below: float = TRANSPARENT_BELOW,
) -> None:
    """Write :func:`render_heatmap_png`'s image to ``path`` as a PNG, atomically."""
    image = render_heatmap_png(
        thumbnail,
        grid_scores,
        slide_dimensions,
        size0,
        title=title,
        legend=legend,
        alpha=alpha,
        cmap=cmap,
        transparent_below=transparent_below,
    )
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


# ---- GeoJSON for QuPath ------------------------------------------------------------------------------------
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
    _write_feature_collection(path, collection["features"])


def _write_feature_collection(path: str | PathLike[str], features: Sequence[dict[str, Any]]) -> None:
    """Write a GeoJSON FeatureCollection of ``features`` to ``path``, atomically, one feature per line."""
    lines = [json.dumps(feature, allow_nan=False, separators=(",", ":")) for feature in features]
    body = ",\n".join(lines)
    write_text_atomic(path, '{"type":"FeatureCollection","features":[\n' + body + ("\n" if lines else "") + "]}\n")


# ---- tumour regions: outlines of connected high-score tiles ---------------------------------------------------
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


def tumour_regions_geojson(
    rows: Sequence[int] | np.ndarray,
    cols: Sequence[int] | np.ndarray,
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    size0: float,
    scores: Sequence[float] | np.ndarray,
    threshold: float = 0.5,
    connectivity: int = 8,
    name_prefix: str = "region",
) -> dict[str, Any]:
    """Predicted tumour regions as a GeoJSON FeatureCollection of QuPath annotations.

    A region is a connected group of tiles scored ≥ ``threshold`` (``connectivity`` 8: tiles touching at a
    corner join; 4: only along a side). Each becomes one feature whose geometry traces the exact outline of
    its tiles' union on the tile grid, in level-0 pixels: a ``Polygon`` (outer ring, then a ring per hole),
    or a ``MultiPolygon`` when an 8-connected region holds parts that touch only at corners. Outer rings
    have a positive shoelace area in (x, y), holes a negative one. Features are sorted by ``max_score``,
    highest first, and named ``<name_prefix>_1``, ``_2``, …; ``properties``::

        {"objectType": "annotation", "name": ..., "isLocked": false,
         "classification": {"name": "Tumor", "color": TUMOR_COLOR},
         "max_score": s, "mean_score": s, "tiles": n, "area_px": n * size0², "measurements": {same four}}

    (QuPath shows ``measurements``; the copies at the top level are for other readers.) ``rows``/``cols``
    are the tiles' grid cells and ``x``/``y`` their level-0 top-left corners (a ``TileGrid``'s fields);
    grid corners are placed at ``origin + k * size0``, the origin being the whole-pixel offset of ``x``/``y``
    from ``cols``/``rows * size0`` (0 for :func:`~wsi_mamba.slide.tiling.make_tile_grid`). Scores are
    rounded to 6 decimals, ``area_px`` to 2. NaN scores count as below the threshold; a cell given twice
    keeps the last score.
    """
    rows = np.asarray(rows, np.int64).reshape(-1)
    cols = np.asarray(cols, np.int64).reshape(-1)
    xs = np.asarray(x, np.float64).reshape(-1)
    ys = np.asarray(y, np.float64).reshape(-1)
    values = np.asarray(scores, np.float64).reshape(-1)
    if not (len(rows) == len(cols) == len(xs) == len(ys) == len(values)):
        raise ValueError(
            f"rows, cols, x, y and scores differ in length: {len(rows)}, {len(cols)}, {len(xs)}, {len(ys)}, "
            f"{len(values)}"
        )
    if not (size0 > 0 and math.isfinite(size0)):
        raise ValueError(f"size0 must be a positive number, got {size0}")
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    if len(rows) and (rows.min() < 0 or cols.min() < 0):
        raise ValueError("tile cells must have non-negative rows and cols")
    above = np.isfinite(values) & (values >= threshold)
    if not above.any():
        return {"type": "FeatureCollection", "features": []}
    from scipy import ndimage

    side = float(size0)
    grid = score_grid(rows, cols, values, (int(rows.max()) + 1, int(cols.max()) + 1))
    with np.errstate(invalid="ignore"):
        mask = grid >= threshold  # NaN (no tile) is False
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), bool) if connectivity == 8 else None)
    origin_x = round(float(np.median(xs - cols * side)))  # whole level-0 pixels, as TileGrid's x and y
    origin_y = round(float(np.median(ys - rows * side)))

    def corner(c: int, r: int) -> list[float]:
        return [round(origin_x + c * side, 3), round(origin_y + r * side, 3)]

    regions = []
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        inside = labels[box] == label
        region_scores = grid[box][inside]
        parts, n_parts = ndimage.label(inside)  # 4-connected pieces: each one polygon with its holes
        polygons = []
        for part in range(1, n_parts + 1):
            rings = _cell_outline_rings(parts == part)
            rings.sort(key=_shoelace_area, reverse=True)  # the one outer ring (positive area) first
            polygons.append([[corner(c + box[1].start, r + box[0].start) for c, r in ring] for ring in rings])
        geometry = (
            {"type": "Polygon", "coordinates": polygons[0]}
            if len(polygons) == 1
            else {"type": "MultiPolygon", "coordinates": polygons}
        )
        stats = {
            "max_score": round(float(region_scores.max()), 6),
            "mean_score": round(float(region_scores.mean()), 6),
            "tiles": int(inside.sum()),
            "area_px": round(float(inside.sum()) * side * side, 2),
        }
        regions.append((geometry, stats))
    regions.sort(key=lambda region: -region[1]["max_score"])  # stable: ties keep top-to-bottom order
    features = [
        {
            "type": "Feature",
            "geometry": geometry,
            "properties": {
                "objectType": "annotation",
                "name": f"{name_prefix}_{i}",
                "classification": {"name": "Tumor", "color": list(TUMOR_COLOR)},
                "isLocked": False,
                **stats,
                "measurements": dict(stats),
            },
        }
        for i, (geometry, stats) in enumerate(regions, start=1)
    ]
    return {"type": "FeatureCollection", "features": features}


def _shoelace_area(ring: Sequence[tuple[float, float]] | Sequence[Sequence[float]]) -> float:
    """Signed area of a closed ring (first point repeated last): positive when counter-clockwise in (x, y)."""
    return 0.5 * sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in pairwise(ring))


def write_regions_geojson(
    path: str | PathLike[str],
    rows: Sequence[int] | np.ndarray,
    cols: Sequence[int] | np.ndarray,
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    size0: float,
    scores: Sequence[float] | np.ndarray,
    threshold: float = 0.5,
    connectivity: int = 8,
    name_prefix: str = "region",
) -> int:
    """Write :func:`tumour_regions_geojson` to ``path`` (``.geojson``), atomically, one feature per line.
    Returns the number of regions written."""
    collection = tumour_regions_geojson(
        rows, cols, x, y, size0, scores, threshold=threshold, connectivity=connectivity, name_prefix=name_prefix
    )
    _write_feature_collection(path, collection["features"])
    return len(collection["features"])
