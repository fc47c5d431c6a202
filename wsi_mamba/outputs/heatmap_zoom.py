"""Zoomed panels of a heatmap: the slide read again at a finer level around the top regions that would be a
few pixels in the thumbnail (a micro-metastasis on a 100,000 px slide is a dot in 1,024 px), so they can be
seen. Reads are bounded (:data:`MAX_READ_PX` pixels at a time, whatever the slide's pyramid), so a slide of any
size is zoomed in bounded memory."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

from .heatmap_colours import blend_scores, cell_map, greyscale_backdrop, outline_outside
from .regions import TumorRegion

__all__ = [
    "MAX_READ_PX",
    "ZOOM_BELOW_PX",
    "ZOOM_PANEL_PX",
    "RegionReader",
    "Zoom",
    "read_box",
    "zoom_boxes",
    "zoom_panel",
]

ZOOM_PANEL_PX = 320
"""Side of a zoom panel (px)."""
ZOOM_PANELS = 3
"""At most this many zoom panels, for the highest-scoring regions."""
ZOOM_BELOW_PX = 48
"""A region gets a zoom panel when its longer side in the thumbnail is under this many pixels."""
ZOOM_CONTEXT = 3.0
"""A zoom panel shows this many times the region's longer side (at least :data:`ZOOM_MIN_TILES` tiles)."""
ZOOM_MIN_TILES = 8
MAX_READ_PX = 4 * 1024 * 1024
"""The most pixels one read of the slide asks for (a zoom reads in bands of at most this)."""


class RegionReader(Protocol):
    """What a zoom panel needs of a slide (:class:`wsi_mamba.slide.Slide` has it)."""

    @property
    def dimensions(self) -> tuple[int, int]: ...

    @property
    def level_downsamples(self) -> Sequence[float]: ...

    def best_level_for_downsample(self, downsample: float) -> int: ...

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray: ...


@dataclass(frozen=True)
class Zoom:
    """A zoom panel: the ``rank``-th region (1 = highest score, as the regions GeoJSON's ``region_<rank>``)
    and the level-0 square ``box0`` (x0, y0, x1, y1) around it."""

    rank: int
    region: TumorRegion
    box0: tuple[float, float, float, float]


def zoom_boxes(
    regions: Sequence[TumorRegion],
    size0: float,
    slide_dimensions: tuple[int, int],
    thumbnail_scale: float,
    panels: int = ZOOM_PANELS,
    below_px: float = ZOOM_BELOW_PX,
) -> list[Zoom]:
    """The zooms for the first ``panels`` of ``regions`` (ranked, :func:`~.regions.tumor_regions`) whose
    longer side is under ``below_px`` thumbnail pixels (``thumbnail_scale``: thumbnail px per level-0 px):
    squares of :data:`ZOOM_CONTEXT` times that side (at least :data:`ZOOM_MIN_TILES` tiles) centred on them,
    kept inside the slide where it is large enough."""
    w0, h0 = slide_dimensions
    zooms = []
    for rank, region in enumerate(regions[:panels], start=1):
        rows, cols = region.cells
        x0, x1 = cols.start * size0, min(cols.stop * size0, w0)
        y0, y1 = rows.start * size0, min(rows.stop * size0, h0)
        longer = max(x1 - x0, y1 - y0)
        if longer * thumbnail_scale >= below_px:
            continue  # big enough to see in the thumbnail
        side = max(ZOOM_CONTEXT * longer, ZOOM_MIN_TILES * size0)
        left = min(max((x0 + x1 - side) / 2, 0.0), max(w0 - side, 0.0))
        top = min(max((y0 + y1 - side) / 2, 0.0), max(h0 - side, 0.0))
        zooms.append(Zoom(rank, region, (left, top, left + side, top + side)))
    return zooms


def read_box(reader: RegionReader, box0: tuple[float, float, float, float], out_px: int) -> np.ndarray:
    """The level-0 square ``box0`` of the slide as an (out_px, out_px, 3) uint8 image, read at the coarsest
    level fine enough for it, in bands of at most :data:`MAX_READ_PX` pixels (outside the slide is white)."""
    x0, y0, x1, y1 = box0
    side0 = max(x1 - x0, y1 - y0)
    level = reader.best_level_for_downsample(max(side0 / out_px, 1.0))
    ds = float(reader.level_downsamples[level])
    side = max(1, math.ceil(side0 / ds))  # at the level
    band = max(1, MAX_READ_PX // side)
    out = np.empty((out_px, out_px, 3), np.uint8)
    for row in range(0, side, band):
        rows = min(band, side - row)
        o0, o1 = round(row * out_px / side), round((row + rows) * out_px / side)
        if o1 > o0:
            pixels = reader.read_region((round(x0), round(y0 + row * ds)), level, (side, rows))
            out[o0:o1] = np.asarray(Image.fromarray(pixels).resize((out_px, o1 - o0), Image.Resampling.BILINEAR))
    return out


def zoom_panel(
    reader: RegionReader,
    zoom: Zoom,
    grid: np.ndarray,
    size0: float,
    threshold: float | None,
    alpha: float,
    cmap: str,
    transparent_below: float,
    out_px: int = ZOOM_PANEL_PX,
    outline: np.ndarray | None = None,
) -> np.ndarray:
    """(out_px, out_px, 3) uint8: the zoom's box read from the slide, drawn as the heatmap is (greyscale,
    scores in colour, tiles at or above ``threshold`` outlined in black, or the True cells of ``outline``)."""
    crop = greyscale_backdrop(read_box(reader, zoom.box0, out_px))
    panel = blend_scores(crop, grid, zoom.box0, size0, alpha, cmap, transparent_below)
    x0, y0, x1, y1 = zoom.box0
    w0, h0 = reader.dimensions
    inside_x = x0 + (np.arange(out_px) + 0.5) * (x1 - x0) / out_px < w0
    inside_y = y0 + (np.arange(out_px) + 0.5) * (y1 - y0) / out_px < h0
    inside = inside_y[:, None] & inside_x[None, :]
    panel[~inside] = crop[~inside]  # past the slide's edge: no tile, whatever the nearest cell
    if threshold is not None or outline is not None:
        ri, ci = cell_map(panel.shape[:2], zoom.box0, size0, grid.shape)
        with np.errstate(invalid="ignore"):
            marked = grid[ri, ci] >= threshold if outline is None else np.asarray(outline, bool)[ri, ci]
            mask = marked & inside
        panel[outline_outside(mask, 2)] = 0
    return panel
