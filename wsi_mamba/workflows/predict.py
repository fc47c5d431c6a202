"""Prediction: a raw slide in, its metastasis probability out (features computed on the fly), with an
optional heatmap PNG and QuPath GeoJSON of the scored tiles."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..features.encode import EncodedSlide, encode_slide
from ..features.modes import FeatureMode, TileMode, resolve
from ..features.options import ReadOptions
from ..outputs.atomic import json_safe, write_json_atomic
from ..outputs.geojson import write_tiles_geojson
from ..outputs.grid import score_grid
from ..outputs.heatmap import write_heatmap_png
from ..outputs.heatmap_legend import heatmap_caveats, heatmap_title
from ..outputs.names import output_stem, slide_name
from ..outputs.region_calling import call_regions, tile_area_mm2, write_called_regions_geojson
from ..slide import open_slide
from .bundle import ModelBundle, region_calling_of
from .domain import domain_warnings
from .provenance import bundle_sha256, slide_identity
from .scoring import score_tiles

THUMBNAIL_PX = 1024
COMPANION_SUFFIXES = (".heatmap.png", ".tiles.geojson", ".regions.geojson")  # beside NAME.json with heatmap


def score_encoded(bundle: ModelBundle, encoded: EncodedSlide) -> tuple[float, np.ndarray]:
    """Slide probability and per-tile probabilities (grid order) of an encoded slide with tiles."""
    grid = encoded.grid
    return score_tiles(bundle, encoded.features, grid.rows, grid.cols, grid.shape)


def extra_view_tiles(encoded: EncodedSlide) -> dict:
    """``{"extra_view_tiles": n}``, the tiles that got the other views, in views on demand; ``{}`` otherwise."""
    if not isinstance(encoded.mode, TileMode) or encoded.mode.on_demand is None or encoded.views is None:
        return {}
    return {"extra_view_tiles": int((encoded.views > 1).sum())}


def predict_slide(
    path: str | Path,
    bundle: ModelBundle,
    read: ReadOptions = ReadOptions(),
    requested: FeatureMode | None = None,
    out_dir: str | Path | None = None,
    heatmap: bool = False,
    on_batch: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> dict:
    """Score one slide, encoded in the model's feature mode (``requested``, the user's ``--views`` /
    ``--region-px``, may name it but not change it: :func:`~wsi_mamba.features.modes.resolve`), which the
    result records in full. The result (also written as ``out_dir/NAME.json``; a name too long for a file name
    is clipped, :func:`~wsi_mamba.outputs.names.output_stem`) has ``score`` None and a ``reason`` when the slide
    has no tissue. Slide errors (unreadable file, no resolution) raise. Progress: ``on_total(n)`` once the
    slide's n tiles are known, ``on_batch(k)`` as k of them are encoded."""
    path = Path(path)
    name = slide_name(path)
    stem = output_stem(name)  # of the file names; the result names the slide in full
    started = time.perf_counter()
    mode = resolve(requested, bundle.feature_mode, bundle.name)  # tile or region mode, as trained
    with open_slide(path, mpp=read.slide_mpp) as slide:
        identity = slide_identity(path)  # before any pixel is read: a later change of the file shows
        encoded = encode_slide(slide, bundle.encoder, mode, read, on_batch, on_total)
        slide_mpp = slide.mpp
        drawing = heatmap and out_dir is not None and len(encoded.grid) > 0
        thumbnail = slide.get_thumbnail(THUMBNAIL_PX) if drawing else None
    result: dict = {
        "slide": name,
        "path": str(path),
        "score": None,
        "prediction": None,
        "threshold": bundle.threshold,
        "tiles": len(encoded.grid),
        "corrupt_tiles": encoded.corrupt_tiles,
        "views": encoded.mode.views if isinstance(encoded.mode, TileMode) else 1,  # as older results have it
        "feature_mode": encoded.mode.attrs(),  # the whole mode: tile (views) or region (sizes), stain normalisation
        "stain_warning": encoded.stain_warning,  # why the mode's stain normalisation was not applied (None: it was)
        **extra_view_tiles(encoded),  # views on demand: how many tiles got the other views
        "encoder_precision": encoded.precision,  # fp32, or bf16 autocast (--precision)
        "model": bundle.name,
        "model_sha256": bundle_sha256(bundle),
        "slide_file": identity,
        "reason": None,
    }
    if not len(encoded.grid):
        result["reason"] = "no tissue found"
    else:
        score, tile_scores = score_encoded(bundle, encoded)
        result["score"] = round(score, 6)
        result["prediction"] = "tumor" if score >= bundle.threshold else "normal"
        result["max_tile_score"] = round(float(tile_scores.max()), 6)
        result["warnings"] = domain_warnings(
            bundle.meta.get("domain"), encoded.features, encoded.colour, slide_mpp, bundle.encoder.mpp
        )
        if result["warnings"]:
            warnings.warn(
                f"{path}: out of domain for model {bundle.name}: {'; '.join(result['warnings'])} "
                "(the score is less trustworthy)",
                stacklevel=2,
            )
        if drawing:
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            grid = encoded.grid
            scores = score_grid(grid.rows, grid.cols, tile_scores, grid.shape)
            regions_path, heatmap_path = out / f"{stem}.regions.geojson", out / f"{stem}.heatmap.png"
            cells = (grid.rows, grid.cols, grid.x, grid.y, grid.size0)
            calling = region_calling_of(bundle)  # calibrated with the model, else tiles >= the slide threshold
            called = call_regions(scores, calling, tile_area_mm2(bundle.encoder.tile_px, bundle.encoder.mpp))
            call = {"slide_score": score, "threshold": bundle.threshold}
            regions = write_called_regions_geojson(regions_path, *cells, called, calling, **call)
            caveats = heatmap_caveats(result, regions)  # written on the heatmap: warnings, corrupt tiles, ...
            with open_slide(path, mpp=read.slide_mpp) as source:  # read again for zoom panels on small regions
                heat = (thumbnail, scores, encoded.dimensions, grid.size0, heatmap_title(result))
                write_heatmap_png(
                    heatmap_path,
                    *heat,
                    threshold=bundle.threshold,
                    caveats=caveats,
                    slide=source,
                    regions=called,
                    calling=calling,  # the legend states its thresholds, apart from the slide's
                )
            write_tiles_geojson(out / f"{stem}.tiles.geojson", grid.x, grid.y, grid.size0, tile_scores)
            result["heatmap"] = str(heatmap_path)
            result["geojson"] = str(out / f"{stem}.tiles.geojson")
            result["regions"] = regions
            result["regions_geojson"] = str(regions_path)
    result["seconds"] = round(time.perf_counter() - started, 2)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(out_dir) / f"{stem}.json", json_safe(result))
        if not drawing:
            _remove_companions(Path(out_dir), stem)
    return result


def _remove_companions(out: Path, stem: str) -> None:
    """Remove the heatmap and GeoJSONs an earlier run wrote beside ``stem``'s result (another model's, or
    of a run with ``heatmap``) once a result without them replaced it: no file is left that the result does
    not stand for."""
    for suffix in COMPANION_SUFFIXES:
        (out / f"{stem}{suffix}").unlink(missing_ok=True)
