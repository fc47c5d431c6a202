"""Region mode ("high-resolution single pass"): the VMamba encoder sees whole regions of ``region_px`` pixels at
its own µm/px in one forward pass, and its last feature map is pooled into the tile grid's cells.

The tile grid is tile mode's (same cells, same tissue filter, same pixels per cell). A region is a block of
``k = region_px / tile_px`` cells a side, read as the mosaic of its cells' tile pixels (each read exactly as tile
mode reads it, background included). The last stage's map goes through the classifier's LayerNorm and is
averaged over each cell's footprint (``tile_px / feature_stride`` feature pixels a side; 32 for four stages): the
same normalisation as tile mode's pre-logits, so a one-tile region gives the tile-mode feature.

Layout and stitching, per grid axis of ``n`` cells: regions start every ``k - overlap`` cells (``overlap`` =
``region_overlap_px / tile_px``, default a quarter of the region in whole tiles), the last one moved back to end
at the grid's edge; an axis shorter than ``k`` gets one region of ``n`` cells. Each cell takes its feature from
the region in which it lies furthest from the region's border (per axis, the largest ``min(cells before,
cells after)``; ties: the earlier region). Regions form a product grid, so that region also maximises the
distance in 2-D: interior cells keep at least ``overlap // 2`` cells of context on every side. Only regions that
own at least one kept (tissue) cell are run, and only kept cells are stored.

Memory is linear in the region's pixels: only the current stage's map is kept (no feature pyramid), the input is
normalised in place, and the selective scan's chunked CPU path needs memory independent of the sequence length.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from ..evaluation.colour import tile_colour_stats
from ..models.encoder import TileEncoder
from ..slide.base import Slide, check_pixels
from ..slide.errors import TileDecodeError
from ..slide.tiling import TileGrid, read_cell
from .grid_features import GridFeatures
from .options import ReadOptions
from .runner import DeviceRunner

BACKGROUND = 255  # pixels of a background cell that cannot be decoded (white, as glass)


@dataclass(frozen=True)
class RegionLayout:
    """Regions of one slide: ``row_starts`` × ``col_starts`` (cells), each ``size`` (rows, cols) cells, and for
    every grid row / column the index of the region (along that axis) it takes its feature from."""

    row_starts: np.ndarray
    col_starts: np.ndarray
    size: tuple[int, int]
    row_owner: np.ndarray
    col_owner: np.ndarray


def _axis_layout(n: int, k: int, overlap: int) -> tuple[np.ndarray, int, np.ndarray]:
    """Region starts, region length and each cell's owning region along one axis of ``n`` cells."""
    if n <= k:
        return np.zeros(1, np.int64), n, np.zeros(n, np.int64)
    step = k - overlap
    starts = np.unique(np.append(np.arange(0, n - k, step, dtype=np.int64), n - k))
    cells = np.arange(n, dtype=np.int64)
    first = np.searchsorted(starts, cells - k + 1, side="left")  # regions holding the cell: first .. last
    last = np.searchsorted(starts, cells, side="right") - 1
    best = np.full(n, -1, np.int64)
    owner = first.copy()
    for offset in range(int((last - first).max()) + 1):  # at most ceil(k / step) + 1 rounds: linear in n
        j = np.minimum(first + offset, len(starts) - 1)
        distance = np.minimum(cells - starts[j], starts[j] + k - 1 - cells)
        better = (first + offset <= last) & (distance > best)
        owner[better], best[better] = j[better], distance[better]
    return starts, k, owner


def plan_regions(shape: tuple[int, int], k: int, overlap: int) -> RegionLayout:
    """The regions of a grid of ``shape`` (rows, cols) cells: ``k`` cells a side, neighbours sharing ``overlap``."""
    if not 0 <= overlap < k:
        raise ValueError(f"overlap must be in [0, {k}) cells, got {overlap}")
    row_starts, rows, row_owner = _axis_layout(shape[0], k, overlap)
    col_starts, cols, col_owner = _axis_layout(shape[1], k, overlap)
    return RegionLayout(row_starts, col_starts, (rows, cols), row_owner, col_owner)


def _read_or_error(slide: Slide, grid: TileGrid, row: int, col: int) -> np.ndarray | TileDecodeError:
    """The pixels of cell (row, col) (:func:`~wsi_mamba.slide.tiling.read_cell`), or why they cannot be decoded."""
    try:
        return read_cell(slide, grid, row, col)
    except TileDecodeError as exc:
        return exc


@torch.inference_mode()
def region_features(encoder: TileEncoder, pixels: np.ndarray, runner: DeviceRunner | None = None) -> np.ndarray:
    """(H, W, 3) uint8 region of whole tiles → (H / tile_px, W / tile_px, D) float32 cell features: the mean of
    the LayerNorm'd last-stage map (``forward_last_map``) over each cell's footprint, for an encoder that
    :meth:`~wsi_mamba.features.modes.RegionMode.check` accepts (``runner``: the encoder's device by default)."""
    model, tile_px = encoder.model, encoder.tile_px
    height, width = pixels.shape[:2]
    if height % tile_px or width % tile_px:
        raise ValueError(f"a region of {width} x {height} px is not made of whole {tile_px} px tiles")
    runner = runner or DeviceRunner(encoder.device)
    x = encoder.preprocess(pixels[None])  # normalised in place: one float copy of the region
    fmap = runner.compute(model.forward_last_map, x)
    del x
    f = tile_px // model.feature_stride
    rows, cols = height // tile_px, width // tile_px
    cells = fmap.float().reshape(fmap.shape[1], rows, f, cols, f).mean(dim=(2, 4))
    return cells.permute(1, 2, 0).cpu().numpy()


def encode_regions(
    slide: Slide,
    grid: TileGrid,
    encoder: TileEncoder,
    cells: tuple[int, int],
    read: ReadOptions = ReadOptions(),
    runner: DeviceRunner | None = None,
    on_batch: Callable[[int], None] | None = None,
    normalise: Callable[[np.ndarray], np.ndarray] | None = None,
) -> GridFeatures:
    """Features and colour statistics of every kept tile of ``grid`` (grid order) in region mode, in regions of
    ``cells`` (cells a side, overlap cells: :meth:`~wsi_mamba.features.modes.RegionMode.cells`), and the kept
    tiles that could not be decoded (their rows are left zero); ``normalise`` (stain normalisation, uint8 → uint8)
    maps each region before the encoder (colour statistics: as read). Reads the next region's cells
    (``read.read_threads`` threads) while the current one is encoded."""
    runner = runner or DeviceRunner(encoder.device)
    k, overlap = cells
    layout = plan_regions(grid.shape, k, overlap)
    rows, cols = layout.size
    check_pixels(slide.path, f"each region ({k * grid.tile_px} px)", cols * grid.tile_px, rows * grid.tile_px)
    found = GridFeatures.zeros(len(grid), encoder.dim)
    features, colour, errors = found.features, found.colour, found.errors
    region_r, region_c = layout.row_owner[grid.rows], layout.col_owner[grid.cols]
    order = np.lexsort((region_c, region_r))  # kept tiles grouped by owning region, regions row-major
    keys = region_r[order] * len(layout.col_starts) + region_c[order]
    bounds = np.flatnonzero(np.diff(keys)) + 1
    groups = np.split(order, bounds) if len(order) else []
    if not groups:
        return found

    with ThreadPoolExecutor(max_workers=max(1, read.read_threads), thread_name_prefix="region-read") as pool:

        def submit(tiles: np.ndarray) -> tuple[int, int, list[Future]]:
            r0 = int(layout.row_starts[region_r[tiles[0]]])
            c0 = int(layout.col_starts[region_c[tiles[0]]])
            positions = [(r0 + i, c0 + j) for i in range(rows) for j in range(cols)]
            return r0, c0, [pool.submit(_read_or_error, slide, grid, r, c) for r, c in positions]

        pending = submit(groups[0])
        for index, tiles in enumerate(groups):
            r0, c0, futures = pending
            if index + 1 < len(groups):
                pending = submit(groups[index + 1])
            mosaic = np.empty((rows, cols, grid.tile_px, grid.tile_px, 3), np.uint8)
            local = {(int(grid.rows[t]) - r0, int(grid.cols[t]) - c0): int(t) for t in tiles}
            for position, future in enumerate(futures):
                cell = divmod(position, cols)
                pixels = future.result()
                if isinstance(pixels, TileDecodeError):
                    if cell in local:
                        errors[local[cell]] = pixels
                    mosaic[cell] = BACKGROUND
                else:
                    mosaic[cell] = pixels
            image = mosaic.transpose(0, 2, 1, 3, 4).reshape(rows * grid.tile_px, cols * grid.tile_px, 3)
            cell_features = region_features(encoder, normalise(image) if normalise else image, runner)
            r, c = grid.rows[tiles] - r0, grid.cols[tiles] - c0
            features[tiles] = cell_features[r, c]
            colour[tiles] = tile_colour_stats(mosaic[r, c])
            if on_batch is not None:  # undecodable tiles are counted by the caller, as in tile mode
                on_batch(len(tiles) - sum(int(t) in errors for t in tiles))
    return found
