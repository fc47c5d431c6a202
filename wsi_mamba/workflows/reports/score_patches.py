"""Patch scoring: the tumour probability of each patch from a tile encoder's classifier head, and, when the
labels are known, the patch AUC with a bootstrap interval, accuracy and a ROC curve."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...data.patches import PatchReadError, PatchSource
from ...data.stain_norm import StainNorm, normalise_each
from ...devices import autocast, resolve_device
from ...features.modes import TileMode
from ...models.encoder import TileEncoder, load_encoder
from ...models.encoders.base import check_views, dihedral_views
from ..bundle import MANIFEST, model_path, model_tile_mode

MPP_TOLERANCE = 0.25  # relative difference between patch and encoder resolution that earns a warning


@dataclass
class PatchScores:
    """Scores of a patch source, in its order; ``score`` is NaN where the patch could not be read."""

    locations: list[tuple[str, int | None]]  # (file, HDF5 row or None)
    labels: np.ndarray
    scores: np.ndarray
    errors: dict[int, str] = field(default_factory=dict)
    stain_skipped: int = 0  # patches scored as read: their stain could not be estimated (stain normalisation)

    def labelled(self) -> np.ndarray:
        """Indices of patches with a known label and a score."""
        return np.flatnonzero((self.labels >= 0) & np.isfinite(self.scores))


def load_patch_classifier(
    model: str | Path | None = None, device: str | torch.device | None = None, weights: str | Path | None = None
) -> tuple[TileEncoder, TileMode]:
    """The tile encoder with its tumour head and the tile mode its model scores tiles in: from a model folder (its
    ``encoder.safetensors`` and :func:`~wsi_mamba.workflows.bundle.model_tile_mode`: views, views on demand,
    stain normalisation; None = the shipped default model), an encoder checkpoint (``.safetensors``) or
    ``timm:NAME`` with local ``weights`` whose head has one output (both: one view, as read); on ``device``
    (None: the CPU)."""
    mode = TileMode()
    if weights is not None:
        if model is None:
            raise ValueError(f"{weights}: name the architecture of the weights (e.g. --model timm:resnet18)")
        path: Path = Path(weights)
        encoder = load_encoder(str(model), weights=weights)
    else:
        path = model_path(model)
        if path.is_dir() and not (path / "config.json").is_file():
            if not (path / MANIFEST).exists():
                raise ValueError(f"{path}: not a wsi-mamba model folder (no {MANIFEST})")
            mode = model_tile_mode(path)
            path = path / "encoder.safetensors"
        encoder = load_encoder(path)
    if encoder.num_classes != 1:
        raise ValueError(f"{path}: the encoder has {encoder.num_classes} outputs, not one tumour logit")
    return (encoder if device is None else encoder.to(resolve_device(device))), mode


def check_geometry(source: PatchSource, encoder: TileEncoder) -> None:
    """Warn when the patches' resolution differs from the encoder's (scores are then less trustworthy)."""
    ratio = source.geometry.mpp / encoder.mpp
    if abs(ratio - 1) > MPP_TOLERANCE:
        warnings.warn(
            f"{source.description}: patches at {source.geometry.mpp:g} µm/px, but {encoder.name} was trained at "
            f"{encoder.mpp:g} µm/px (set the patches' resolution with --patch-mpp)",
            stacklevel=2,
        )


@torch.inference_mode()
def classify(
    encoder: TileEncoder, patches: np.ndarray, views: int = 1, on_demand: tuple[float, float] | None = None
) -> np.ndarray:
    """Tumour probabilities of (n, px, px, 3) uint8 patches (resized to the encoder's tile size): the sigmoid of
    the mean logit over ``views`` dihedral views (1, 4 or 8), as the features of :meth:`TileEncoder.encode`. With
    ``on_demand`` = (lo, hi) the other views only for patches whose view-0 probability is in [lo, hi], as tile
    mode encodes tiles (:meth:`TileEncoder.views_on_demand`)."""
    model = encoder.model.eval()
    batch = encoder.preprocess(np.ascontiguousarray(patches))  # resized there to a fixed-size model's input
    if encoder.input_px is None and batch.shape[-1] != encoder.tile_px:
        batch = F.interpolate(batch, size=(encoder.tile_px,) * 2, mode="bilinear", antialias=True)
    if on_demand is not None:
        with autocast(batch.device):
            features, _ = encoder.views_on_demand(batch, check_views(views), on_demand)
            logits_on_demand = encoder.logits_from_features(features)
        return torch.sigmoid(logits_on_demand[:, 0].float()).cpu().numpy()
    logits = []
    for view in dihedral_views(batch, check_views(views)):
        with autocast(view.device):
            logits.append(model(view).squeeze(1).float())
    return torch.sigmoid(torch.stack(logits).mean(0)).cpu().numpy()


def _read_batch(source: PatchSource, indices: np.ndarray, errors: dict[int, str]) -> tuple[np.ndarray, np.ndarray]:
    """Read ``indices``; a patch that cannot be read is recorded in ``errors`` and left out."""
    try:
        return indices, source.read(indices)
    except PatchReadError:
        good, arrays = [], []
        for i in indices:
            try:
                arrays.append(source.read_one(int(i)))
                good.append(i)
            except PatchReadError as exc:
                errors[int(i)] = str(exc)
        px = source.geometry.px
        return np.asarray(good, np.int64), np.stack(arrays) if arrays else np.zeros((0, px, px, 3), np.uint8)


def score_patch_source(
    source: PatchSource,
    encoder: TileEncoder,
    batch_size: int = 128,
    views: int = 1,
    on_batch: Callable[[int], None] | None = None,
    stain: StainNorm | None = None,
    on_demand: tuple[float, float] | None = None,
) -> PatchScores:
    """Score every patch of ``source`` in ``views`` (on demand in the band ``on_demand``: :func:`classify`);
    unreadable patches get NaN and an entry in ``errors``. With ``stain`` each patch is normalised on its own
    stain first (:func:`~wsi_mamba.data.stain_norm.normalise_each`; the patches whose stain cannot be estimated
    are scored as read and counted in ``stain_skipped``)."""
    check_geometry(source, encoder)
    scores = np.full(len(source), np.nan, np.float32)
    errors: dict[int, str] = {}
    skipped = 0
    for start in range(0, len(source), batch_size):
        indices = np.arange(start, min(start + batch_size, len(source)))
        good, patches = _read_batch(source, indices, errors)
        if len(good):
            patches, unestimated = normalise_each(patches, stain)
            skipped += unestimated
            scores[good] = classify(encoder, patches, views, on_demand)
        if on_batch is not None:
            on_batch(len(indices))
    locations = [source.location(i) for i in range(len(source))]
    return PatchScores(locations, source.labels.copy(), scores, errors, skipped)


def patch_metrics(result: PatchScores, threshold: float = 0.5, n_boot: int = 2000) -> dict | None:
    """AUC (95 % stratified bootstrap interval), accuracy at ``threshold`` and at Youden's threshold of the
    labelled, scored patches; None when fewer than two classes are labelled."""
    from ...evaluation.metrics import summarize

    keep = result.labelled()
    labels, scores = result.labels[keep], result.scores[keep]
    if len(set(labels.tolist())) < 2:
        return None
    summary = summarize(labels, scores, n_boot=n_boot)
    summary["threshold"] = threshold
    summary["accuracy_at_threshold"] = float(np.mean((scores >= threshold) == (labels == 1)))
    return summary


def result_rows(result: PatchScores) -> list[dict]:
    """One dict per patch: ``path``, ``index`` (HDF5 patches), ``label`` (when known), ``score`` or ``error``."""
    rows = []
    for i, (path, row_in_file) in enumerate(result.locations):
        row: dict = {"path": path} if row_in_file is None else {"path": path, "index": row_in_file}
        if result.labels[i] >= 0:
            row["label"] = int(result.labels[i])
        score = float(result.scores[i])
        row["score"] = None if math.isnan(score) else round(score, 6)
        if i in result.errors:
            row["error"] = result.errors[i]
        rows.append(row)
    return rows


def patch_output_files(out_csv: str | Path) -> list[Path]:
    """What ``--out out_csv`` writes: the CSV, ``NAME.metrics.json`` and ``NAME.roc.png`` beside it."""
    out_csv = Path(out_csv)
    stem = out_csv.with_suffix("")
    return [out_csv, Path(f"{stem}.metrics.json"), Path(f"{stem}.roc.png")]


def write_patch_outputs(result: PatchScores, out_csv: str | Path, metrics: dict | None, title: str) -> list[Path]:
    """``out_csv`` (path, index, label, score, error), and with metrics ``NAME.metrics.json`` and
    ``NAME.roc.png`` beside it; each written atomically. Returns the files written."""
    from ...evaluation.roc_plot import write_roc_png
    from ...outputs.atomic import json_safe, write_csv_atomic, write_json_atomic

    out_csv, metrics_file, roc_file = patch_output_files(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    header = ["path", "index", "label", "score", "error"]
    rows = result_rows(result)
    write_csv_atomic(out_csv, header, ([r.get(k, "") if r.get(k) is not None else "" for k in header] for r in rows))
    written = [out_csv]
    if metrics is not None:
        write_json_atomic(metrics_file, json_safe(metrics))
        keep = result.labelled()
        write_roc_png({title: (result.labels[keep], result.scores[keep])}, roc_file, title="patch ROC")
        written += [metrics_file, roc_file]
    return written
