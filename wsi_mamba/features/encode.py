"""A slide's encoding: tissue → tile grid → the feature mode's encoding → undecodable tiles left out.

Shared by extraction (stores, :mod:`wsi_mamba.workflows.extract`) and prediction (features on the fly).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from ..data.stain_norm import StainEstimationError, StainNorm, fit_stain
from ..devices import resolve_cpu_precision
from ..models.encoder import TileEncoder
from ..slide import SlideError
from ..slide.base import Slide
from ..slide.errors import TileDecodeError
from ..slide.tiling import TileGrid, make_tile_grid
from ..slide.tissue import TissueMask, detect_tissue
from .grid_features import GridFeatures
from .modes import FeatureMode, TileMode
from .options import ReadOptions
from .runner import DeviceRunner


@dataclass
class EncodedSlide:
    """A slide's tissue grid with the features and colour statistics of each kept tile."""

    grid: TileGrid
    tissue: TissueMask
    features: np.ndarray  # (n, D) float32
    colour: np.ndarray  # (n, K) float32
    dimensions: tuple[int, int]
    corrupt_tiles: int = 0  # tiles that could not be decoded: left out of the grid, each named in a warning
    mode: FeatureMode = field(default_factory=TileMode)  # how the features were made (checked for the encoder)
    stain_warning: str | None = None  # why the mode's stain normalisation was not applied (None: applied or none)
    views: np.ndarray | None = None  # (n,) uint8 views each tile's features average (tile mode; None: not recorded)
    precision: str = "fp32"  # what the encoder ran in: fp32, or bf16 autocast (DeviceRunner.precision)


MAX_CORRUPT_FRACTION = 0.25
"""A slide with more of its tiles undecodable than this fails; fewer are left out with a warning each."""


def _leave_out(grid: TileGrid, bad: list[int]) -> TileGrid:
    """``grid`` without the tiles of indices ``bad``."""
    keep = np.ones(len(grid), bool)
    keep[bad] = False
    return replace(
        grid, rows=grid.rows[keep], cols=grid.cols[keep], x=grid.x[keep], y=grid.y[keep], tissue=grid.tissue[keep]
    )


def _corrupt_tiles(slide: Slide, grid: TileGrid, errors: dict[int, TileDecodeError]) -> list[int]:
    """Warn about each tile that could not be decoded (naming it); the slide fails (``SlideError``) when they
    are more than :data:`MAX_CORRUPT_FRACTION` of its tiles. Returns their grid indices."""
    bad = sorted(errors)
    described = [
        f"tile {i} (level {grid.level}, level-0 x={int(grid.x[i])}, y={int(grid.y[i])}): {errors[i].problem}"
        for i in bad
    ]
    if len(bad) > MAX_CORRUPT_FRACTION * len(grid):
        raise SlideError(slide.path, f"{len(bad)} of {len(grid)} tiles cannot be decoded (first: {described[0]})")
    for text in described:
        warnings.warn(f"{slide.path}: {text}; left out as background", stacklevel=3)
    return bad


def slide_normaliser(
    slide: Slide, tissue: TissueMask, stain: StainNorm | None
) -> tuple[Callable[[np.ndarray], np.ndarray] | None, str | None]:
    """``stain`` fitted once on the slide's tissue at the tissue mask's resolution: (the per-tile normaliser,
    None), or (None, why not) with a warning when the slide's stain cannot be estimated (it is then encoded as
    read). (None, None) without a normalisation."""
    if stain is None:
        return None, None
    height, width = tissue.mask.shape
    rgb = slide.read_level(slide.best_level_for_downsample(tissue.downsample), (width, height))
    try:
        return stain.normaliser(fit_stain(stain.method, rgb, tissue.mask)), None
    except StainEstimationError as error:
        why = f"{stain.method} stain normalisation not applied: {error}"
        warnings.warn(f"{slide.path}: {why}; encoded as read", stacklevel=3)
        return None, why


def encode_slide(
    slide: Slide,
    encoder: TileEncoder,
    mode: FeatureMode = TileMode(),
    read: ReadOptions = ReadOptions(),
    on_batch: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> EncodedSlide:
    """Detect tissue, cut the tile grid at the encoder's tile_px/mpp, and encode every kept tile in ``mode``
    (checked for ``encoder`` before any work). A tile that cannot be decoded (a damaged JPEG tile) is left out
    with a warning naming it and counted in ``corrupt_tiles``; more than :data:`MAX_CORRUPT_FRACTION` of them
    fail the slide. The mode's stain normalisation is fitted once on the slide (:func:`slide_normaliser`; a slide
    whose stain cannot be estimated is encoded as read, ``stain_warning`` says why). Progress: ``on_total(n)`` once
    the grid of n tiles is cut, ``on_batch(k)`` as k are done."""
    mode = mode.check(encoder)
    runner = DeviceRunner(encoder.device, resolve_cpu_precision(read.precision))
    tissue = detect_tissue(slide)
    grid = make_tile_grid(slide, encoder.tile_px, encoder.mpp, read.min_tissue, tissue=tissue)
    if on_total is not None:
        on_total(len(grid))
    normalise, stain_warning = slide_normaliser(slide, tissue, getattr(mode, "stain", None))
    if len(grid):
        found = mode.encode(slide, grid, encoder, read, runner, on_batch, normalise)
    else:
        found = GridFeatures.zeros(0, encoder.dim)
    features, colour, views = found.features, found.colour, found.views
    bad = _corrupt_tiles(slide, grid, found.errors) if found.errors else []
    if bad:
        if on_batch is not None:
            on_batch(len(bad))
        keep = np.setdiff1d(np.arange(len(grid)), bad)
        grid, features, colour, views = _leave_out(grid, bad), features[keep], colour[keep], views[keep]
    recorded = views if isinstance(mode, TileMode) else None  # region mode records no views
    return EncodedSlide(
        grid, tissue, features, colour, slide.dimensions, len(bad), mode, stain_warning, recorded, runner.precision
    )
