"""Feature extraction: tissue tiles of a slide streamed through the tile encoder, one store per slide.

``encode_slide`` is shared with prediction (features on the fly); ``extract_slides`` writes stores and is
resumable: complete stores made with the same encoder are skipped, partial ones are redone.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .. import __version__
from ..evaluation.colour import COLOUR_STATS
from ..models.encoder import TileEncoder
from ..outputs.lock import output_lock
from ..progress import Progress
from ..slide import SlideError, open_slide
from ..slide.base import Slide
from ..slide.errors import TileDecodeError
from ..slide.tiling import TileGrid, make_tile_grid
from ..slide.tissue import TissueMask, detect_tissue
from .batch import describe_failure, prepare_output_folder, slide_name
from .configs import TileOptions
from .pipeline import encode_tiles
from .store import (
    SlideFeatures,
    check_same_encoder,
    is_complete,
    read_attrs,
    store_path,
    verify_store,
    write_store,
)


@dataclass
class EncodedSlide:
    """A slide's tissue grid with the features and colour statistics of each kept tile."""

    grid: TileGrid
    tissue: TissueMask
    features: np.ndarray  # (n, D) float32
    colour: np.ndarray  # (n, K) float32
    dimensions: tuple[int, int]
    corrupt_tiles: int = 0  # tiles that could not be decoded: left out of the grid, each named in a warning
    mode: dict = field(default_factory=lambda: {"mode": "tile"})  # how features were made (region_mode.mode_attrs)


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


def encode_slide(
    slide: Slide,
    encoder: TileEncoder,
    options: TileOptions = TileOptions(),
    on_batch: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> EncodedSlide:
    """Detect tissue, cut the tile grid at the encoder's tile_px/mpp, and encode every kept tile. A tile that
    cannot be decoded (a damaged JPEG tile) is left out with a warning naming it and counted in
    ``corrupt_tiles``; more than :data:`MAX_CORRUPT_FRACTION` of them fail the slide. With
    ``options.region_px`` the tiles are encoded in region mode (:mod:`.region_mode`). Progress:
    ``on_total(n)`` once the grid of n tiles is cut, ``on_batch(k)`` as k of them are done."""
    mode = _mode_attrs(options, encoder)  # checked before any work
    tissue = detect_tissue(slide)
    grid = make_tile_grid(slide, encoder.tile_px, encoder.mpp, options.min_tissue, tissue=tissue)
    if on_total is not None:
        on_total(len(grid))
    features = np.zeros((len(grid), encoder.dim), np.float32)
    colour = np.zeros((len(grid), len(COLOUR_STATS)), np.float32)
    errors: dict[int, TileDecodeError] = {}
    if options.region_px and len(grid):  # region mode: whole regions per encoder pass, pooled into the cells
        from .region_mode import encode_regions

        features, colour, errors = encode_regions(slide, grid, encoder, options, on_batch)
    elif len(grid):  # tile mode: read and decoded on threads, encoded here (wsi_mamba.workflows.pipeline)
        features, colour, errors = encode_tiles(slide, grid, encoder, options, on_batch)
    bad = _corrupt_tiles(slide, grid, errors) if errors else []
    if bad:
        if on_batch is not None:
            on_batch(len(bad))
        keep = np.setdiff1d(np.arange(len(grid)), bad)
        grid, features, colour = _leave_out(grid, bad), features[keep], colour[keep]
    return EncodedSlide(grid, tissue, features, colour, slide.dimensions, len(bad), mode)


def _mode_attrs(options: TileOptions, encoder: TileEncoder) -> dict:
    """The feature mode a store records: ``{"mode": "tile"}`` or region mode's sizes."""
    from .region_mode import check_region_mode

    return check_region_mode(options, encoder)


def to_store_data(name: str, path: Path, encoded: EncodedSlide, encoder: TileEncoder) -> SlideFeatures:
    """Package an encoded slide with the attributes a store records."""
    grid = encoded.grid
    attrs = {
        **encoder.identity(),
        **encoder.source_record(),  # encoder_source, encoder_spec: how train rebuilds the encoder
        **encoded.mode,  # mode (tile | region), region_px, region_overlap_px: stores of two modes never mix
        "slide": str(path),
        "dimensions": list(encoded.dimensions),
        "slide_mpp": grid.slide_mpp,
        "size0": grid.size0,
        "grid_shape": list(grid.shape),
        "tissue_downsample": encoded.tissue.downsample,
        "colour_stats": list(COLOUR_STATS),
        "corrupt_tiles": encoded.corrupt_tiles,
        "version": __version__,
    }
    return SlideFeatures(
        name=name,
        features=encoded.features,
        coords=np.stack([grid.x, grid.y], axis=1) if len(grid) else np.zeros((0, 2), np.int64),
        grid=np.stack([grid.rows, grid.cols], axis=1) if len(grid) else np.zeros((0, 2), np.int32),
        colour=encoded.colour,
        tissue_mask=encoded.tissue.mask,
        attrs=attrs,
    )


def extract_slide(
    path: Path, out_dir: Path, encoder: TileEncoder, options: TileOptions, progress: Progress | None
) -> str:
    """Extract one slide unless a complete store from the same encoder is there; returns "done" or "skipped"."""
    name = slide_name(path)
    target = store_path(out_dir, name)
    with output_lock(target):  # another process extracting this slide into this folder: one line, not a race
        if is_complete(target):
            expected = (encoder.name, encoder.hash)
            mode = _mode_attrs(options, encoder)
            check_same_encoder({name: read_attrs(target)}, expected, "this extraction", expected_mode=mode)
            damaged = verify_store(target)
            if damaged is None:
                return "skipped"
            warnings.warn(f"extracting {name} again: {damaged}", stacklevel=2)
        with open_slide(path, mpp=options.slide_mpp) as slide:
            if progress is None:
                encoded = encode_slide(slide, encoder, options)
            else:
                progress.set_note(name)
                encoded = encode_slide(slide, encoder, options, progress.update, progress.add_total)
        write_store(target, to_store_data(name, path, encoded, encoder))
    return "done"


def extract_slides(
    paths: Sequence[Path],
    out_dir: str | os.PathLike[str],
    encoder: TileEncoder,
    options: TileOptions = TileOptions(),
    progress: bool = True,
) -> dict[str, str]:
    """Extract every slide in ``paths`` into ``out_dir``; returns name → "done" | "skipped" | "failed: why".
    A slide that fails (unreadable, no resolution) is reported and the others go on."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [slide_name(p) for p in paths]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"several slides share the name(s) {', '.join(duplicates)}: stores would collide")
    prepare_output_folder(out_dir, paths, (".zarr",))  # temporaries of killed runs removed
    _mode_attrs(options, encoder)  # a region mode the encoder cannot run: one error, before any slide
    results: dict[str, str] = {}
    with Progress("extract", "tile", enabled=progress) as shown:  # a bar on a terminal, timed lines in a log
        for path in paths:
            try:
                results[slide_name(path)] = extract_slide(Path(path), out_dir, encoder, options, shown)
            except Exception as exc:  # any per-slide failure (SlideError, OSError, ...): the others go on
                results[slide_name(path)] = f"failed: {describe_failure(exc)}"
    return results
