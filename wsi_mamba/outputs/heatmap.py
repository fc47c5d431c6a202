"""Tile-score outputs: the score grid, a heatmap over the slide thumbnail (PNG with a legend), and the
scored tiles as a GeoJSON FeatureCollection QuPath imports (File > Import objects from file).

Scores are tumour probabilities in [0, 1]. Coordinates are level-0 pixels with the origin at the top-left
of the full-resolution image, as QuPath and :mod:`wsi_mamba.slide` use them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from functools import lru_cache
from os import PathLike
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .atomic import atomic_path, write_text_atomic

__all__ = [
    "NORMAL_COLOR",
    "TUMOR_COLOR",
    "colormap_lut",
    "render_heatmap",
    "render_heatmap_png",
    "score_grid",
    "tiles_geojson",
    "write_heatmap_png",
    "write_tiles_geojson",
]

TUMOR_COLOR = (200, 0, 0)
"""QuPath class colour of tiles scored ≥ 0.5 (the "Tumor" colour of :func:`wsi_mamba.slide.annotations.to_geojson`)."""
NORMAL_COLOR = (0, 160, 90)
"""QuPath class colour of tiles scored < 0.5."""


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


def render_heatmap(
    thumbnail: np.ndarray | Image.Image,
    grid_scores: np.ndarray,
    slide_dimensions: tuple[int, int],
    size0: float,
    alpha: float = 0.45,
    cmap: str = "inferno",
) -> np.ndarray:
    """Blend the tile-score map over a slide thumbnail.

    Args:
        thumbnail: (h, w, 3) uint8 RGB image of the whole slide (e.g. ``Slide.get_thumbnail``).
        grid_scores: (R, C) scores in [0, 1] from :func:`score_grid`, NaN where there is no tile.
        slide_dimensions: the slide's level-0 (width, height): what the thumbnail shows.
        size0: level-0 side of one grid cell (``TileGrid.size0``). The grid may cover a little more than the
            slide (C * size0 ≥ width); each thumbnail pixel takes the cell its centre falls in (nearest).
        alpha: opacity of the colours over tiles (0 = thumbnail only, 1 = colours only).
        cmap: a matplotlib colormap name.

    Returns:
        (h, w, 3) uint8: ``(1 - alpha) * thumbnail + alpha * colour`` on pixels whose cell has a score,
        the thumbnail's pixels unchanged elsewhere.
    """
    image = np.asarray(thumbnail)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"thumbnail must be (h, w, 3) uint8, got {image.shape} {image.dtype}")
    grid = np.asarray(grid_scores, np.float32)
    if grid.ndim != 2 or grid.size == 0:
        raise ValueError(f"grid_scores must be a non-empty (rows, cols) array, got shape {grid.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if not (size0 > 0 and math.isfinite(size0)):
        raise ValueError(f"size0 must be a positive number, got {size0}")
    w0, h0 = slide_dimensions
    h, w = image.shape[:2]
    ri = _cell_index(h, float(h0), float(size0), grid.shape[0])
    ci = _cell_index(w, float(w0), float(size0), grid.shape[1])
    # Colour the grid once, then expand cells to pixels by fancy indexing (nearest neighbour).
    cell_colours = colormap_lut(cmap)[_colour_indices(grid)]  # (R, C, 3)
    cell_has_score = np.isfinite(grid)
    colours = cell_colours[ri[:, None], ci[None, :]]
    covered = cell_has_score[ri[:, None], ci[None, :]]
    out = image.copy()
    blend = (1.0 - alpha) * image[covered].astype(np.float32) + alpha * colours[covered].astype(np.float32)
    out[covered] = np.clip(np.round(blend), 0, 255).astype(np.uint8)
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


def render_heatmap_png(
    thumbnail: np.ndarray | Image.Image,
    grid_scores: np.ndarray,
    slide_dimensions: tuple[int, int],
    size0: float,
    title: str | None = None,
    legend: bool = True,
    alpha: float = 0.45,
    cmap: str = "inferno",
) -> Image.Image:
    """The heatmap of :func:`render_heatmap` as a PIL image, with an optional title band above it and a
    colour bar (tumor probability 0 … 1) below it. Narrow thumbnails are padded (white) to fit the legend."""
    heat = render_heatmap(thumbnail, grid_scores, slide_dimensions, size0, alpha=alpha, cmap=cmap)
    h, w = heat.shape[:2]
    if not title and not legend:
        return Image.fromarray(heat)
    font = _font(12)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad = 6
    caption = "tumor probability"
    title_w, title_h = _text_size(probe, title, font) if title else (0, 0)
    cap_w, text_h = _text_size(probe, f"0 {caption} 1", font)
    min_w = max(title_w, cap_w + 4 * pad if legend else 0) + 2 * pad
    width = max(w, min_w)
    top = title_h + 2 * pad if title else 0
    bar_h = 12
    bottom = (pad + bar_h + 3 + text_h + pad) if legend else 0
    canvas = Image.new("RGB", (width, top + h + bottom), (255, 255, 255))
    canvas.paste(Image.fromarray(heat), ((width - w) // 2, top))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text(((width - title_w) // 2, pad), title, fill=(0, 0, 0), font=font)
    if legend:
        x0, x1 = pad, width - pad
        y0 = top + h + pad
        ramp = colormap_lut(cmap)[np.round(np.linspace(0, 255, x1 - x0)).astype(np.intp)]
        bar = np.broadcast_to(ramp[None, :, :], (bar_h, x1 - x0, 3))
        canvas.paste(Image.fromarray(np.ascontiguousarray(bar)), (x0, y0))
        draw.rectangle((x0 - 1, y0 - 1, x1, y0 + bar_h), outline=(0, 0, 0))
        ty = y0 + bar_h + 3
        black = (0, 0, 0)
        draw.text((x0, ty), "0", fill=black, font=font)
        draw.text((x1 - _text_size(draw, "1", font)[0], ty), "1", fill=black, font=font)
        draw.text(((x0 + x1 - _text_size(draw, caption, font)[0]) // 2, ty), caption, fill=black, font=font)
    return canvas


def write_heatmap_png(
    path: str | PathLike[str],
    thumbnail: np.ndarray | Image.Image,
    grid_scores: np.ndarray,
    slide_dimensions: tuple[int, int],
    size0: float,
    title: str | None = None,
    legend: bool = True,
    alpha: float = 0.45,
    cmap: str = "inferno",
) -> None:
    """Write :func:`render_heatmap_png`'s image to ``path`` as a PNG, atomically."""
    image = render_heatmap_png(
        thumbnail, grid_scores, slide_dimensions, size0, title=title, legend=legend, alpha=alpha, cmap=cmap
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
    lines = [json.dumps(feature, allow_nan=False, separators=(",", ":")) for feature in collection["features"]]
    body = ",\n".join(lines)
    write_text_atomic(path, '{"type":"FeatureCollection","features":[\n' + body + ("\n" if lines else "") + "]}\n")
