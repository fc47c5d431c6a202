"""The runs a comparison is made of, read from the outputs of other commands: an encoder's training record,
size, speed (profiled here) and patch scores; an ``evaluate`` folder's metrics, slide scores and slide model;
and DeLong's paired test between two runs on the items both scored."""

from __future__ import annotations

import csv
import statistics
import time
from pathlib import Path

import numpy as np


def count_gflops(model, x) -> float:
    """GFLOPs (2 × multiply-accumulates of matmuls, convolutions and attention, as ``torch.utils.flop_counter``
    counts them) of one forward pass of ``model`` on ``x``, divided by the batch size. Fused attention is
    switched off while counting (timm's ``fused_attn``) so attention is counted as its matmuls."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    fused = [(m, m.fused_attn) for m in model.modules() if isinstance(getattr(m, "fused_attn", None), bool)]
    try:
        for module, _ in fused:
            module.fused_attn = False
        counter = FlopCounterMode(display=False)
        with torch.inference_mode(), counter:
            model.eval()(x)
    finally:
        for module, value in fused:
            module.fused_attn = value
    return counter.get_total_flops() / len(x) / 1e9


def profile_encoder(checkpoint: str | Path, batch: int = 64, repeats: int = 3) -> dict:
    """Parameters, GFLOPs per tile and CPU inference tiles/s (median of ``repeats`` batches after a warm-up,
    at torch's current thread count) of an encoder checkpoint at its own tile size."""
    import torch

    from ...models.encoder import load_encoder

    encoder = load_encoder(checkpoint).to("cpu")
    model = encoder.model.eval()
    px = encoder.input_px or encoder.tile_px
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, px, px, generator=generator)
    gflops = count_gflops(model, x[:2])
    times = []
    with torch.inference_mode():
        model(x)
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    # training speed: forward + backward + AdamW step of the same batch, on a copy (the encoder stays untouched)
    import copy

    trainee = copy.deepcopy(model).train()
    optimiser = torch.optim.AdamW(trainee.parameters(), 1e-4)
    target = torch.zeros(batch)
    step_times = []
    for k in range(repeats + 1):
        start = time.perf_counter()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(trainee(x)[:, 0], target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if k:  # the first step is a warm-up
            step_times.append(time.perf_counter() - start)
    return {
        "params": int(sum(p.numel() for p in model.parameters())),
        "gflops": gflops,
        "tile_px": int(px),
        "tiles_per_s": batch / statistics.median(times),
        "train_patches_per_s": batch / statistics.median(step_times),
        "threads": torch.get_num_threads(),
    }


def _read_json(path: Path) -> dict:
    from ...outputs.artefact import read_json_object

    if not path.is_file():
        raise ValueError(f"{path}: not found")
    return read_json_object(path)


def _scored_rows(path: Path, label_key: str, score_key: str) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Rows of a CSV with a label and a score (others skipped), with the labels and scores as arrays."""
    if not path.is_file():
        raise ValueError(f"{path}: not found")
    with path.open(newline="") as stream:
        rows = [r for r in csv.DictReader(stream) if r.get(label_key, "") != "" and r.get(score_key, "") != ""]
    if not rows:
        raise ValueError(f"{path}: no rows with a {label_key} and a {score_key}")
    labels = np.array([int(r[label_key]) for r in rows], np.int64)
    scores = np.array([float(r[score_key]) for r in rows], np.float64)
    return rows, labels, scores


def read_encoder_run(label: str, folder: str | Path, profile: bool = True, repeats: int = 3) -> dict:
    """One encoder of the comparison: its training record, size and speed, and its patch scores."""
    folder = Path(folder)
    checkpoint = folder / "encoder.safetensors"
    meta = _read_json(checkpoint.with_suffix(".json"))
    extra = meta.get("metadata", {})
    training = extra.get("training", {})
    config = training.get("config", {})
    history = training.get("history", [])
    metrics = _read_json(folder / "valid-patches.metrics.json")
    rows, labels, scores = _scored_rows(folder / "valid-patches.csv", "label", "score")
    result = {
        "label": label,
        "folder": str(folder),
        "model": config.get("model"),
        "model_args": config.get("model_args", {}),
        "budget": {k: config.get(k) for k in ("epochs", "epoch_patches", "batch_size", "lr", "seed", "augment")},
        "training_patches": sum(training.get("patches", {}).values()),
        "validation": training.get("validation"),
        "epochs_run": len(history),
        "best_epoch": training.get("best_epoch"),
        "best_val_auc": training.get("best_val_auc"),
        "training_seconds": float(sum(r.get("seconds", 0.0) for r in history)),
        "patch": {k: metrics.get(k) for k in ("n", "n_positive", "auc", "auc_ci_low", "auc_ci_high")},
        "names": [f"{r['path']}#{r.get('index', '')}" for r in rows],
        "labels": labels,
        "scores": scores,
    }
    if profile:
        result.update(profile_encoder(checkpoint, repeats=repeats))
    return result


def _slide_model_info(model_path: str | None) -> dict:
    """Aggregator, feature mode, training slides and parameters of the slide model at ``model_path``."""
    if not model_path or not (Path(model_path) / "model.json").is_file():
        return {}
    from ...models.checkpoint import read_safetensors

    folder = Path(model_path)
    meta = _read_json(folder / "model.json")
    slides = meta.get("training", {}).get("slides", {})
    info = {
        "aggregator": meta.get("aggregator"),
        "feature_mode": meta.get("feature_mode", {}),
        "encoder": meta.get("encoder"),
        "encoder_hash": meta.get("encoder_hash"),
        "training_slides": len(slides.get("train", [])),
        "validation_slides": len(slides.get("validation", [])),
        "best_epoch": meta.get("training", {}).get("best_epoch"),
    }
    weights = folder / "slide_model.safetensors"
    if weights.is_file():
        info["params"] = int(sum(t.numel() for t in read_safetensors(weights).values()))
    return info


def read_slide_run(label: str, folder: str | Path) -> dict:
    """One slide-level result of the comparison (an ``evaluate`` folder): metrics, per-slide scores, model."""
    folder = Path(folder)
    metrics = _read_json(folder / "metrics.json")
    rows, labels, scores = _scored_rows(folder / "per_slide.csv", "label", "score")
    return {
        "label": label,
        "folder": str(folder),
        "slides": metrics.get("slides", {}),
        "froc": (metrics.get("froc") or {}).get("score"),
        "by_lesion_class": metrics.get("by_lesion_class", {}),
        "model": _slide_model_info(metrics.get("model_path")),
        "names": [r["slide"] for r in rows],
        "labels": labels,
        "scores": scores,
    }


def paired_delong(a: dict, b: dict) -> dict:
    """DeLong's test of runs ``a`` against ``b`` (slides or patches, by ``names``) on the items both scored (same
    labels required)."""
    from ...evaluation.delong import delong_test

    common = sorted(set(a["names"]) & set(b["names"]))
    index_a = {n: i for i, n in enumerate(a["names"])}
    index_b = {n: i for i, n in enumerate(b["names"])}
    ia, ib = [index_a[n] for n in common], [index_b[n] for n in common]
    labels = a["labels"][ia]
    if not np.array_equal(labels, b["labels"][ib]):
        raise ValueError(f"{a['folder']} and {b['folder']}: the labels of the same items differ")
    result = delong_test(labels, a["scores"][ia], b["scores"][ib]).to_dict()
    return {"a": a["label"], "b": b["label"], "test": "DeLong (paired, two-sided)", **result}
