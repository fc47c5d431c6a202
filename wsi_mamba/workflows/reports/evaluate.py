"""Evaluation of a model folder on feature stores: slide AUC with a bootstrap interval, accuracy at 0.5 and
at the Youden threshold, sensitivity / specificity at the model's own threshold (and its provenance), ROC
curve PNG, per-slide CSV; the CAMELYON16 lesion FROC when annotations are given; the colour-statistics
baseline (fitted on the model's own training slides) on the same slides."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from ...devices import DEFAULT_DEVICE
from ...evaluation.colour import baseline_predict, slide_colour_vector
from ...evaluation.lesion_froc import SlideDetections, froc, tile_detections
from ...evaluation.metrics import summarize
from ...evaluation.roc_plot import write_roc_png
from ...features.store import SlideFeatures, check_same_encoder, list_stores, read_attrs, read_store
from ...outputs.atomic import check_not_inputs, json_safe, write_csv_atomic, write_json_atomic
from ..bundle import ModelBundle, load_bundle, model_files
from ..inputs import find_annotations, read_label_column, read_labels
from ..scoring import score_tiles
from ..training.operating_point import threshold_report

if TYPE_CHECKING:
    import torch


def score_features(bundle: ModelBundle, data: SlideFeatures) -> tuple[float | None, np.ndarray]:
    """Slide probability and per-tile probabilities (tile order of the store); None for no tiles."""
    if len(data) == 0:
        return None, np.zeros(0, np.float32)
    return score_tiles(bundle, data.features, data.rows, data.cols, data.grid_shape)


def rates_by_class(names: list[str], scores: np.ndarray, classes: dict[str, str], threshold: float) -> dict:
    """Per lesion class (``macro``, ``micro``, ``itc``; ``none`` for normal slides): slides, and the fraction
    called tumour at ``threshold`` (sensitivity; for ``none`` the false-positive rate)."""
    out: dict = {}
    for cls in sorted({classes.get(n, "") for n in names} - {""}):
        picked = np.array([classes.get(n) == cls for n in names])
        positive = float((scores[picked] >= threshold).mean())
        key = "false_positive_rate" if cls in ("none", "normal") else "sensitivity"
        out[cls] = {"slides": int(picked.sum()), key: positive, "threshold": threshold}
    return out


def evaluate(
    model: str | Path | None,
    features_dir: str | Path,
    labels_csv: str | Path,
    out_dir: str | Path,
    annotations_dir: str | Path | None = None,
    baseline: bool = False,
    n_boot: int = 2000,
    progress: bool = True,
    device: str | torch.device = DEFAULT_DEVICE,
) -> dict:
    """Score every labelled store with the model on ``device`` and write metrics.json, per_slide.csv, roc.png
    (and froc.json with annotations) under ``out_dir``; returns the metrics."""
    out_dir = Path(out_dir)
    outputs = [out_dir / name for name in ("metrics.json", "per_slide.csv", "roc.png", "froc.json")]
    check_not_inputs(outputs, [labels_csv, *model_files(model)])  # before anything is read or written
    bundle = load_bundle(model, device=device)
    labels = read_labels(labels_csv)
    stores = list_stores(features_dir)
    names = sorted(n for n in stores if n in labels)
    missing = sorted(set(labels) - set(stores))
    if not names:
        raise ValueError(f"{features_dir}: no feature store matches a slide of {labels_csv}")
    expected = (bundle.encoder.name, bundle.encoder.hash)
    check_same_encoder({n: read_attrs(stores[n]) for n in names}, expected, expected_mode=bundle.feature_mode)
    rows, scores, ys, colour, detections = [], [], [], [], []
    for name in tqdm(names, desc="evaluate", unit="slide", disable=not progress, file=sys.stderr):
        data = read_store(stores[name])
        score, tile_scores = score_features(bundle, data)
        if score is None:
            rows.append([name, labels[name], "", "", "", "no tissue"])
            continue
        scores.append(score)
        ys.append(labels[name])
        colour.append(slide_colour_vector(data.colour))
        rows.append([name, labels[name], f"{score:.6f}", int(score >= bundle.threshold), "", ""])
        if annotations_dir is not None:
            annotations = find_annotations(annotations_dir, name)
            lesions = [p.points for p in annotations.lesions] if annotations else []
            points = tile_detections(data.coords[:, 0], data.coords[:, 1], data.size0, tile_scores)
            detections.append(SlideDetections(name, points, lesions, data.slide_mpp))
    ys_arr, scores_arr = np.asarray(ys), np.asarray(scores)
    metrics: dict = {"model": bundle.name, "slides": summarize(ys_arr, scores_arr, n_boot=n_boot)}
    metrics["model_path"] = str(Path(bundle.path).resolve())
    # Sensitivity / specificity at the model's own threshold, with where that threshold comes from.
    metrics["at_model_threshold"] = threshold_report(ys, scores, bundle.threshold, bundle.meta.get("threshold_rule"))
    metrics["missing_features"] = missing
    classes = read_label_column(labels_csv, "lesion_class")
    if classes:
        scored_names = [r[0] for r in rows if r[2] != ""]
        metrics["by_lesion_class"] = rates_by_class(scored_names, scores_arr, classes, bundle.threshold)
    curves = {bundle.name: (ys_arr, scores_arr)}
    if baseline:
        if bundle.baseline is None:
            raise ValueError(f"{bundle.path}: this model folder has no baseline.json")
        base_scores = baseline_predict(bundle.baseline, np.stack(colour))
        metrics["baseline"] = summarize(ys_arr, base_scores, n_boot=n_boot)
        metrics["baseline"]["kind"] = bundle.baseline.get("kind", "baseline")
        curves["colour baseline"] = (ys_arr, base_scores)
        scored = [r for r in rows if r[2] != ""]
        for row, value in zip(scored, base_scores, strict=True):
            row[4] = f"{value:.6f}"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if detections:
        try:
            result = froc(detections)
            metrics["froc"] = {"score": result.score, "at_rates": {str(k): v for k, v in result.at_rates.items()}}
            write_json_atomic(out_dir / "froc.json", json_safe(result.to_dict()))
        except ValueError as exc:  # e.g. no lesion other than isolated tumour cells
            metrics["froc"] = {"score": None, "reason": str(exc)}
    header = ["slide", "label", "score", "prediction", "baseline_score", "note"]
    write_csv_atomic(out_dir / "per_slide.csv", header, rows)
    write_roc_png(curves, out_dir / "roc.png", title=f"{bundle.name} on {len(ys)} slides")
    write_json_atomic(out_dir / "metrics.json", json_safe(metrics))
    return metrics
