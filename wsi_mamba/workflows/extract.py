"""Feature extraction: each slide encoded (:func:`~wsi_mamba.features.encode.encode_slide`) into a feature store.

``extract_slides`` is resumable: complete stores made with the same encoder in the same mode are skipped, partial
ones are redone.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import __version__
from ..evaluation.colour import COLOUR_STATS
from ..features.encode import EncodedSlide, encode_slide
from ..features.encoder_pool import kept_pools
from ..features.modes import FeatureMode, TileMode
from ..features.options import ReadOptions
from ..features.store import (
    SlideFeatures,
    check_same_encoder,
    is_complete,
    read_attrs,
    store_path,
    verify_store,
    write_store,
)
from ..messages import describe_failure
from ..models.encoder import TileEncoder
from ..outputs.lock import output_lock
from ..outputs.names import prepare_output_folder, slide_name
from ..progress import Progress
from ..slide import open_slide


def to_store_data(name: str, path: Path, encoded: EncodedSlide, encoder: TileEncoder) -> SlideFeatures:
    """Package an encoded slide with the attributes a store records."""
    grid = encoded.grid
    attrs = {
        **encoder.identity(),
        **encoder.source_record(),  # encoder_source, encoder_spec: how train rebuilds the encoder
        **encoded.mode.attrs(),  # mode (tile | region) and its sizes or views: stores of two modes never mix
        "slide": str(path),
        "dimensions": list(encoded.dimensions),
        "slide_mpp": grid.slide_mpp,
        "size0": grid.size0,
        "grid_shape": list(grid.shape),
        "tissue_downsample": encoded.tissue.downsample,
        "colour_stats": list(COLOUR_STATS),
        "corrupt_tiles": encoded.corrupt_tiles,
        **({"stain_warning": encoded.stain_warning} if encoded.stain_warning else {}),  # encoded as read
        "encoder_precision": encoded.precision,  # fp32 or bf16 autocast: features agree to ~1e-2 relative
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
        views=encoded.views if getattr(encoded.mode, "on_demand", None) is not None else None,  # views on demand
    )


def extract_slide(
    path: Path,
    out_dir: Path,
    encoder: TileEncoder,
    mode: FeatureMode,
    read: ReadOptions,
    progress: Progress | None,
    note: str | None = None,
) -> str:
    """Extract one slide in ``mode`` (checked for ``encoder``) unless a complete store from the same encoder in
    the same mode is there; returns "done" or "skipped". ``note``: what the progress line names (default: the
    slide's name)."""
    name = slide_name(path)
    target = store_path(out_dir, name)
    with output_lock(target):  # another process extracting this slide into this folder: one line, not a race
        if is_complete(target):
            expected = (encoder.name, encoder.hash)
            check_same_encoder({name: read_attrs(target)}, expected, "this extraction", expected_mode=mode.attrs())
            damaged = verify_store(target)
            if damaged is None:
                return "skipped"
            warnings.warn(f"extracting {name} again: {damaged}", stacklevel=2)
        with open_slide(path, mpp=read.slide_mpp) as slide:
            if progress is None:
                encoded = encode_slide(slide, encoder, mode, read)
            else:
                progress.set_note(note or name)
                encoded = encode_slide(slide, encoder, mode, read, progress.update, progress.add_total)
        write_store(target, to_store_data(name, path, encoded, encoder))
    return "done"


def extract_slides(
    paths: Sequence[Path],
    out_dir: str | os.PathLike[str],
    encoder: TileEncoder,
    mode: FeatureMode = TileMode(),
    read: ReadOptions = ReadOptions(),
    progress: bool = True,
) -> dict[str, str]:
    """Extract every slide in ``paths`` into ``out_dir`` in ``mode``; returns name → "done" | "skipped" |
    "failed: why". A slide that fails (unreadable, no resolution) is reported and the others go on; a mode the
    encoder cannot run is one ``ValueError`` before any slide. On a CPU the slides share one set of encoding
    worker processes (:func:`~wsi_mamba.features.encoder_pool.kept_pools`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [slide_name(p) for p in paths]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"several slides share the name(s) {', '.join(duplicates)}: stores would collide")
    prepare_output_folder(out_dir, paths, (".zarr",))  # temporaries of killed runs removed
    mode = mode.check(encoder)
    results: dict[str, str] = {}
    # several slides: one set of encoding workers for all of them, small slides included (encoder_pool.kept_pools)
    keep = kept_pools() if len(paths) > 1 else contextlib.nullcontext()
    with Progress("extract", "tile", enabled=progress) as shown, keep:  # a bar on a terminal, timed lines in a log
        for number, path in enumerate(paths, 1):
            note = f"slide {number}/{len(paths)} {slide_name(path)}"  # the tile total grows slide by slide
            try:
                results[slide_name(path)] = extract_slide(Path(path), out_dir, encoder, mode, read, shown, note)
            except Exception as exc:  # any per-slide failure (SlideError, OSError, ...): the others go on
                results[slide_name(path)] = f"failed: {describe_failure(exc)}"
    return results
