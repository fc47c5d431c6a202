"""Fitting a model's region calling on validation slides (:mod:`wsi_mamba.evaluation.region_calibration`):
after ``train`` (its validation slides, each scored by a model that did not train on it) and, for an existing
model folder, ``calibrate-regions`` (labelled feature stores, their lesion annotations), which rewrites the
folder's ``model.json`` atomically with the new ``region_calling``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...devices import autocast, module_device
from ...evaluation.region_calibration import ValidationGrid, calibrate_region_calling
from ...features.store import check_same_encoder, list_stores, read_attrs, read_store
from ...models.aggregators import Aggregator
from ...models.encoder import TileEncoder
from ...outputs.atomic import json_safe
from ...outputs.grid import score_grid
from ...outputs.lock import output_lock
from ...outputs.region_calling import DEFAULT_TARGET_FP_PER_MM2, RegionCalling, tile_area_mm2
from ..bundle import FORMAT, MANIFEST, load_bundle, read_manifest
from ..inputs import read_labels
from ..scoring import score_tiles
from .slide_examples import Example, tile_targets

__all__ = ["calibrate_model_regions", "example_grids", "region_calling_entry"]


def example_grids(model: Aggregator, examples: Sequence[Example]) -> list[ValidationGrid]:
    """Validation grids of ``examples`` scored by ``model`` (tile probabilities on the cropped grid); tumour
    slides without lesion annotations are left out (which of their tiles are normal is unknown)."""
    device = module_device(model)
    model.eval()
    grids = []
    with torch.no_grad():
        for example in examples:
            if example.tile_target is None:
                continue
            with autocast(device):
                out = model(example.features.to(device), example.mask.to(device))
            tissue = example.mask[0].numpy().astype(bool)
            probs = torch.sigmoid(out.tile_logits.float())[0].cpu().numpy()
            scores = np.where(tissue, probs, np.nan).astype(np.float32)
            grids.append(ValidationGrid(example.name, scores, tissue & (example.tile_target[0].numpy() == 0)))
    return grids


def region_calling_entry(fits: Sequence[tuple[Aggregator, Sequence[Example]]], encoder: TileEncoder) -> dict:
    """``{"region_calling": record}`` for ``model.json``, calibrated at the default target on each fit's
    validation examples scored by its model; ``{}`` when they hold no normal tissue."""
    grids = [grid for model, examples in fits for grid in example_grids(model, examples)]
    if not any(grid.normal.any() for grid in grids):
        return {}
    source = {"fitted_on": "validation slides of train"}
    calling = calibrate_region_calling(grids, tile_area_mm2(encoder.tile_px, encoder.mpp), source=source)
    return {"region_calling": calling.to_json()}


def calibrate_model_regions(
    model: str | Path,
    features_dir: str | Path,
    labels_csv: str | Path,
    annotations_dir: str | Path | None = None,
    target_fp_per_mm2: float = DEFAULT_TARGET_FP_PER_MM2,
    device: str | torch.device | None = None,
) -> RegionCalling:
    """Fit the region calling of the model folder ``model`` on the labelled stores of ``features_dir`` (tile
    scores from the model itself; tumour slides need lesion annotations in ``annotations_dir``, else they are
    left out; the model runs on ``device``) and store it in its ``model.json`` (rewritten atomically, under the
    folder's lock). ``ValueError`` (one line) for a missing model, stores of another encoder or mode, or no
    normal tissue."""
    if not (isinstance(target_fp_per_mm2, int | float) and 0 < target_fp_per_mm2 < math.inf):
        raise ValueError(f"--target-fp-per-mm2 must be a positive number, got {target_fp_per_mm2}")
    bundle = load_bundle(model, device=device)
    labels = read_labels(labels_csv)
    stores = list_stores(features_dir)
    names = sorted(n for n in stores if n in labels)
    if not names:
        raise ValueError(f"{features_dir}: no feature store matches a slide of {labels_csv}")
    expected = (bundle.encoder.name, bundle.encoder.hash)
    check_same_encoder({n: read_attrs(stores[n]) for n in names}, expected, expected_mode=bundle.feature_mode)
    grids, left_out = [], []
    for name in names:  # one store at a time: memory bounded by the largest slide
        data = read_store(stores[name])
        targets = tile_targets(data, labels[name], annotations_dir) if len(data) else None
        if targets is None:
            left_out.append(name)
            continue
        _, tile_scores = score_tiles(bundle, data.features, data.rows, data.cols, data.grid_shape)
        scores = score_grid(data.rows, data.cols, tile_scores, data.grid_shape)
        normal = score_grid(data.rows, data.cols, (targets == 0).astype(np.float32), data.grid_shape) == 1
        grids.append(ValidationGrid(name, scores, normal))
    source: dict[str, Any] = {"fitted_on": "calibrate-regions", "features": str(features_dir)}
    source |= {"labels": str(labels_csv), "annotations": str(annotations_dir) if annotations_dir else None}
    source["left_out"] = left_out[:50]  # tumour slides without annotations, slides without tissue
    if not any(grid.normal.any() for grid in grids):
        raise ValueError(f"{features_dir}: no normal tissue to calibrate on (normal or annotated tumour slides)")
    area = tile_area_mm2(bundle.encoder.tile_px, bundle.encoder.mpp)
    calling = calibrate_region_calling(grids, area, target_fp_per_mm2, source=source)
    with output_lock(bundle.path):
        meta = read_manifest(bundle.path)
        meta["region_calling"] = calling.to_json()
        FORMAT.write(bundle.path / MANIFEST, json_safe(meta))
    return calling
