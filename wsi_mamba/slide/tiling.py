"""Tile grids: square tiles of ``tile_px`` at ``target_mpp`` over a slide, kept where there is tissue."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .base import Slide, check_pixels, get_max_pixels, resize_rgb
from .errors import SlideError
from .tissue import TissueMask, TissueParams, detect_tissue

PIXELS_PER_GRID_CELL = 50
"""A tile grid may have at most max_pixels / 50 cells (10 million by default: about 0.5 GB of grid arrays)."""


class Tile(NamedTuple):
    """One tile: its grid cell, level-0 top-left corner and level-0 side length."""

    row: int
    col: int
    x: int
    y: int
    size0: float


@dataclass
class TileGrid:
    """Tiles of ``tile_px`` pixels at ``target_mpp`` on a ``shape`` (rows, cols) grid covering the slide.

    Only kept tiles are listed (``rows``, ``cols``, ``x``, ``y``, ``tissue`` are per-tile arrays). Pixels
    are read at pyramid ``level`` as ``read_px`` squares and resized to ``tile_px`` when they differ.
    """

    tile_px: int
    target_mpp: float
    slide_mpp: float
    size0: float
    level: int
    read_px: int
    shape: tuple[int, int]
    rows: np.ndarray
    cols: np.ndarray
    x: np.ndarray
    y: np.ndarray
    tissue: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Tile:
        return Tile(
            int(self.rows[index]), int(self.cols[index]), int(self.x[index]), int(self.y[index]), self.size0
        )

    def __iter__(self) -> Iterator[Tile]:
        return (self[i] for i in range(len(self)))

    def occupancy(self) -> np.ndarray:
        """(rows, cols) boolean map of the kept tiles."""
        grid = np.zeros(self.shape, bool)
        grid[self.rows, self.cols] = True
        return grid


def region_fractions(
    mask: np.ndarray, mask_downsample: float, x: np.ndarray, y: np.ndarray, size0: float
) -> np.ndarray:
    """Mean of a boolean ``mask`` (one pixel per ``mask_downsample`` level-0 px) over each level-0
    square (x, y, size0), with a summed-area table (O(1) per square)."""
    if len(x) == 0:
        return np.zeros(0, np.float64)
    h, w = mask.shape
    table = np.zeros((h + 1, w + 1), np.int64)
    table[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)

    def bounds(start: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
        lo = np.clip(np.floor(start / mask_downsample + 0.5).astype(np.int64), 0, limit)
        hi = np.clip(np.floor((start + size0) / mask_downsample + 0.5).astype(np.int64), 0, limit)
        return lo, np.maximum(hi, np.minimum(lo + 1, limit))

    x0, x1 = bounds(np.asarray(x, np.float64), w)
    y0, y1 = bounds(np.asarray(y, np.float64), h)
    inside = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
    area = (size0 / mask_downsample) ** 2
    return np.clip(inside / max(area, 1.0), 0.0, 1.0)


def make_tile_grid(
    slide: Slide,
    tile_px: int = 256,
    target_mpp: float = 0.5,
    min_tissue: float = 0.25,
    tissue: TissueMask | None = None,
    tissue_params: TissueParams | None = None,
) -> TileGrid:
    """Grid of ``tile_px`` tiles at ``target_mpp`` µm/px keeping tiles with tissue fraction ≥ ``min_tissue``
    (``min_tissue`` ≤ 0 keeps every tile). The slide needs an mpp (from the file or ``open_slide(mpp=)``)."""
    if slide.mpp is None:
        why = f" ({slide.mpp_problem})" if slide.mpp_problem else ""
        raise SlideError(slide.path, f"no microns-per-pixel known{why}: pass mpp= to open_slide (--slide-mpp)")
    if tile_px <= 0 or target_mpp <= 0:
        raise ValueError(f"tile_px and target_mpp must be positive, got {tile_px}, {target_mpp}")
    ds = target_mpp / slide.mpp
    size0 = tile_px * ds
    w0, h0 = slide.dimensions
    shape = (math.ceil(h0 / size0), math.ceil(w0 / size0))
    level = slide.best_level_for_downsample(ds)
    read_px = max(1, round(size0 / slide.level_downsamples[level]))
    cells_limit = max(1, get_max_pixels() // PIXELS_PER_GRID_CELL)
    if shape[0] * shape[1] > cells_limit:
        raise SlideError(
            slide.path,
            f"a grid of {shape[0]} x {shape[1]} tiles ({tile_px} px at {target_mpp:g} µm/px on a {w0} x {h0} px "
            f"slide at {slide.mpp:g} µm/px) is over the limit of {cells_limit:,} tiles: check --mpp and --tile "
            "(or raise --max-pixels)",
        )
    check_pixels(slide.path, f"each tile read ({tile_px} px at {target_mpp:g} µm/px)", read_px, read_px)
    rows, cols = np.divmod(np.arange(shape[0] * shape[1], dtype=np.int64), shape[1])
    x, y = cell_origins(rows, cols, size0)
    if min_tissue > 0:
        tissue = tissue or detect_tissue(slide, tissue_params)
        fraction = region_fractions(tissue.mask, tissue.downsample, x, y, size0)
        keep = fraction >= min_tissue
        if not keep.any():
            warnings.warn(f"{slide.path}: no tissue found; the tile grid is empty", stacklevel=2)
    else:
        fraction = np.ones(len(x))
        keep = np.ones(len(x), bool)
    return TileGrid(
        tile_px,
        target_mpp,
        slide.mpp,
        size0,
        level,
        read_px,
        shape,
        rows[keep],
        cols[keep],
        x[keep],
        y[keep],
        fraction[keep],
    )


def cell_origins(rows: np.ndarray, cols: np.ndarray, size0: float) -> tuple[np.ndarray, np.ndarray]:
    """Level-0 (x, y) top-left corners of the grid cells (``rows``, ``cols``) of ``size0`` level-0 px: the one
    tile-position formula (the grid's ``x``, ``y`` are these)."""
    return np.round(cols * size0).astype(np.int64), np.round(rows * size0).astype(np.int64)


def _read_square(slide: Slide, grid: TileGrid, x: int, y: int) -> np.ndarray:
    """The ``read_px`` square at level-0 (x, y) on the grid's level, resized to ``tile_px``."""
    pixels = slide.read_region((x, y), grid.level, (grid.read_px, grid.read_px))
    return resize_rgb(pixels, (grid.tile_px, grid.tile_px))


def read_tile(slide: Slide, grid: TileGrid, index: int) -> np.ndarray:
    """Pixels of tile ``index`` of ``grid``: (tile_px, tile_px, 3) uint8."""
    return _read_square(slide, grid, int(grid.x[index]), int(grid.y[index]))


def read_cell(slide: Slide, grid: TileGrid, row: int, col: int) -> np.ndarray:
    """Pixels of grid cell (``row``, ``col``), kept or not, read as :func:`read_tile` reads a kept tile."""
    x, y = cell_origins(np.int64(row), np.int64(col), grid.size0)
    return _read_square(slide, grid, int(x), int(y))
