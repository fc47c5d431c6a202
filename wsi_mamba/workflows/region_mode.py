"""Region mode ("high-resolution single pass"): the VMamba encoder sees whole regions of ``region_px`` pixels at
its own µm/px in one forward pass, and its last feature map is pooled into the tile grid's cells.

The tile grid is tile mode's (same cells, same tissue filter, same pixels per cell). A region is a block of
``k = region_px / tile_px`` cells a side, read as the mosaic of its cells' tile pixels (each read exactly as tile
mode reads it, background included). The last stage's map goes through the classifier's LayerNorm and is
averaged over each cell's footprint (``tile_px / stride`` feature pixels a side; stride 32 for four stages): the
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
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..devices import autocast
from ..evaluation.colour import COLOUR_STATS, tile_colour_stats
from ..models.encoder import TileEncoder
from ..models.encoders.base import check_views
from ..models.vmamba import VSSM
from ..slide.base import Slide, check_pixels, resize_rgb
from ..slide.errors import TileDecodeError
from ..slide.tiling import TileGrid
from .configs import TileOptions
from .store import describe_mode

TILE_MODE = {"mode": "tile"}
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


def region_cells(options: TileOptions, tile_px: int) -> tuple[int, int]:
    """(cells a side, overlap cells) of ``options``' regions for tiles of ``tile_px``; ``ValueError`` when the
    sizes are not whole tiles or the overlap leaves no step."""
    region_px = int(options.region_px or 0)
    if region_px < tile_px or region_px % tile_px:
        raise ValueError(f"--region-px {region_px} must be a positive multiple of the encoder's tile_px ({tile_px})")
    k = region_px // tile_px
    overlap_px = options.region_overlap_px
    if overlap_px is None:
        return k, k // 4
    if overlap_px < 0 or overlap_px % tile_px or overlap_px >= region_px:
        raise ValueError(
            f"--region-overlap {overlap_px} must be a multiple of tile_px ({tile_px}) in [0, region_px {region_px})"
        )
    return k, overlap_px // tile_px


def mode_attrs(options: TileOptions, tile_px: int) -> dict:
    """What a feature store (and a model trained on it) records about how features were made."""
    views = check_views(options.views or 1)
    if not options.region_px:
        return {**TILE_MODE, "views": views} if views > 1 else dict(TILE_MODE)
    if views > 1:
        raise ValueError(f"--views {views} is for tile mode: region mode encodes whole regions, not tiles")
    k, overlap = region_cells(options, tile_px)
    return {"mode": "region", "region_px": k * tile_px, "region_overlap_px": overlap * tile_px}


def check_region_mode(options: TileOptions, encoder: TileEncoder) -> dict:
    """:func:`mode_attrs` of ``options`` for ``encoder``, after checking region mode can run it (a VMamba
    encoder, tile_px a multiple of its stride, whole-tile region and overlap sizes); ``ValueError`` otherwise."""
    if options.region_px:
        model = encoder.model
        if not isinstance(model, VSSM) or encoder.input_px is not None:
            raise ValueError(f"region mode needs a VMamba encoder (any input size), not {encoder.name}")
        if encoder.tile_px % stride_of(model):
            raise ValueError(
                f"region mode needs the encoder's tile_px ({encoder.tile_px}) to be a multiple of its stride "
                f"({stride_of(model)} px per last-stage feature pixel)"
            )
    return mode_attrs(options, encoder.tile_px)


def options_for_model(options: TileOptions, model_mode: dict | None, model: str) -> TileOptions:
    """``options`` in the mode a model was trained in (``model_mode``: its ``feature_mode``, None: tile mode);
    ``ValueError`` when ``options`` ask for a region mode, or tile views, other than the model's."""
    model_mode = model_mode or TILE_MODE
    region = model_mode.get("mode") == "region"
    if options.region_px is None:
        if not region:
            return views_for_model(options, int(model_mode.get("views", 1)), model)
        return replace(
            options, region_px=int(model_mode["region_px"]), region_overlap_px=int(model_mode["region_overlap_px"])
        )
    same = (
        region
        and options.region_px == model_mode.get("region_px")
        and options.region_overlap_px in (None, model_mode.get("region_overlap_px"))
    )
    if not same:
        raise ValueError(
            f"model {model} was trained on features of {describe_mode(model_mode)}, not of region mode "
            f"({options.region_px} px): leave --region-px out to use the model's mode"
        )
    return replace(options, region_overlap_px=int(model_mode["region_overlap_px"]))


def views_for_model(options: TileOptions, model_views: int, model: str) -> TileOptions:
    """``options`` with the model's tile views; ``ValueError`` when they name others (its slide model saw only
    features of its own views: on others it can answer with confidence and be wrong)."""
    if options.views is None:
        return replace(options, views=model_views)
    if options.views != model_views:
        raise ValueError(
            f"model {model} was trained on features of {describe_mode({'mode': 'tile', 'views': model_views})}, "
            f"not of {options.views} view(s): leave --views out to use the model's"
        )
    return options


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


def _read_cell(slide: Slide, grid: TileGrid, row: int, col: int) -> np.ndarray | TileDecodeError:
    """The pixels of cell (row, col), read as :func:`~wsi_mamba.slide.tiling.read_tile` reads a kept tile."""
    x, y = (int(v) for v in np.round(np.array([col, row]) * grid.size0).astype(np.int64))
    try:
        pixels = slide.read_region((x, y), grid.level, (grid.read_px, grid.read_px))
    except TileDecodeError as exc:
        return exc
    return resize_rgb(pixels, (grid.tile_px, grid.tile_px))


def _last_feature_map(model: VSSM, x: torch.Tensor) -> torch.Tensor:
    """The classifier's LayerNorm of the last stage's map, keeping one stage's activations at a time."""
    model._check_input(x)
    x = model.patch_embed(x)
    for layer in model.layers:
        x = layer.downsample(layer.blocks(x))
    return model.classifier.norm(x)


def stride_of(model: VSSM) -> int:
    """Input pixels per last-stage feature pixel (4 from the stem, 2 per downsample)."""
    return 4 * 2 ** (len(model.config.depths) - 1)


@torch.inference_mode()
def region_features(encoder: TileEncoder, pixels: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 region of whole tiles → (H / tile_px, W / tile_px, D) float32 cell features: the mean of
    the LayerNorm'd last-stage map over each cell's footprint (bf16 autocast on CUDA, as tile mode)."""
    check_region_mode(TileOptions(region_px=encoder.tile_px), encoder)
    model, tile_px = encoder.model, encoder.tile_px
    height, width = pixels.shape[:2]
    if height % tile_px or width % tile_px:
        raise ValueError(f"a region of {width} x {height} px is not made of whole {tile_px} px tiles")
    x = torch.as_tensor(pixels, device=encoder.device).permute(2, 0, 1)[None].float().div_(255.0)
    mean = torch.tensor(encoder.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(encoder.std, device=x.device).view(1, 3, 1, 1)
    x = x.sub_(mean).div_(std)  # in place: the same arithmetic as TileEncoder.preprocess, one input copy
    with autocast(x.device):
        fmap = _last_feature_map(model, x)
    del x
    f = tile_px // stride_of(model)
    rows, cols = height // tile_px, width // tile_px
    cells = fmap.float().reshape(fmap.shape[1], rows, f, cols, f).mean(dim=(2, 4))
    return cells.permute(1, 2, 0).cpu().numpy()


def encode_regions(
    slide: Slide,
    grid: TileGrid,
    encoder: TileEncoder,
    options: TileOptions,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[int, TileDecodeError]]:
    """Features and colour statistics of every kept tile of ``grid`` (grid order) in region mode, and the kept
    tiles that could not be decoded (grid index → error; their rows are left zero). Reads the next region's
    cells (``options.workers`` threads) while the current one is encoded."""
    check_region_mode(options, encoder)
    k, overlap = region_cells(options, encoder.tile_px)
    layout = plan_regions(grid.shape, k, overlap)
    rows, cols = layout.size
    check_pixels(slide.path, f"each region ({options.region_px} px)", cols * grid.tile_px, rows * grid.tile_px)
    features = np.zeros((len(grid), encoder.dim), np.float32)
    colour = np.zeros((len(grid), len(COLOUR_STATS)), np.float32)
    errors: dict[int, TileDecodeError] = {}
    region_r, region_c = layout.row_owner[grid.rows], layout.col_owner[grid.cols]
    order = np.lexsort((region_c, region_r))  # kept tiles grouped by owning region, regions row-major
    keys = region_r[order] * len(layout.col_starts) + region_c[order]
    bounds = np.flatnonzero(np.diff(keys)) + 1
    groups = np.split(order, bounds) if len(order) else []
    if not groups:
        return features, colour, errors

    with ThreadPoolExecutor(max_workers=max(1, options.workers), thread_name_prefix="region-read") as pool:

        def submit(tiles: np.ndarray) -> tuple[int, int, list[Future]]:
            r0 = int(layout.row_starts[region_r[tiles[0]]])
            c0 = int(layout.col_starts[region_c[tiles[0]]])
            cells = [(r0 + i, c0 + j) for i in range(rows) for j in range(cols)]
            return r0, c0, [pool.submit(_read_cell, slide, grid, r, c) for r, c in cells]

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
            cell_features = region_features(encoder, image)
            r, c = grid.rows[tiles] - r0, grid.cols[tiles] - c0
            features[tiles] = cell_features[r, c]
            colour[tiles] = tile_colour_stats(mosaic[r, c])
            if on_batch is not None:  # undecodable tiles are counted by the caller, as in tile mode
                on_batch(len(tiles) - sum(int(t) in errors for t in tiles))
    return features, colour, errors
