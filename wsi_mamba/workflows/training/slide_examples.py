"""The examples a slide model trains and validates on: labelled feature stores read onto their tile grids
(with per-tile targets from lesion annotations), and the stratified validation split or K folds."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...features.store import SlideFeatures, check_same_encoder, list_stores, read_attrs, read_store
from ...models.grid import grid_tensors
from ...slide.annotations import lesion_fractions_at
from ..inputs import find_annotations, read_labels


@dataclass(frozen=True)
class SlideSet:
    """Labelled feature stores: a features folder, its labels CSV and (optional) lesion annotations."""

    features: str | Path
    labels: str | Path
    annotations: str | Path | None = None


@dataclass
class Example:
    name: str
    label: int
    features: torch.Tensor  # (1, D, R, C)
    mask: torch.Tensor  # (1, R, C)
    tile_target: torch.Tensor | None  # (1, R, C), -1 where unknown


def tile_targets(data: SlideFeatures, label: int, annotations_dir: str | Path | None) -> np.ndarray | None:
    """Per-tile targets: 1 inside lesions (≥ half the tile), 0 outside (no lesion at all), -1 on edges;
    all 0 on normal slides; None for tumour slides without annotations."""
    if label == 0:
        return np.zeros(len(data), np.float32)
    annotations = find_annotations(annotations_dir, data.name) if annotations_dir else None
    if annotations is None:
        return None
    dims = data.dimensions
    fraction = lesion_fractions_at(
        annotations, dims, data.coords[:, 0], data.coords[:, 1], data.size0, cells_per_tile=16  # type: ignore[arg-type]
    )
    return np.where(fraction >= 0.5, 1.0, np.where(fraction == 0, 0.0, -1.0)).astype(np.float32)


def to_example(data: SlideFeatures, label: int, targets: np.ndarray | None) -> Example:
    """Place a store's tiles on its grid (cropped to the tissue's bounding box)."""
    features, mask, offset = grid_tensors(data.features, data.rows, data.cols, data.grid_shape)
    tile_target = None
    if targets is not None:
        tile_target = torch.full(mask.shape, -1.0)
        tile_target[0, data.rows - offset[0], data.cols - offset[1]] = torch.from_numpy(targets)
    return Example(data.name, label, features, mask, tile_target)


def split_validation(names: list[str], labels: dict[str, int], fraction: float, seed: int) -> set[str]:
    """A stratified validation subset (at least one slide of each class when there are two or more)."""
    rng = np.random.default_rng(seed)
    chosen: set[str] = set()
    for cls in (0, 1):
        group = sorted(n for n in names if labels[n] == cls)
        count = min(len(group) - 1, max(1, round(len(group) * fraction))) if fraction > 0 else 0
        chosen.update(rng.permutation(group)[:count].tolist())
    return chosen


def fold_splits(names: list[str], labels: dict[str, int], folds: int, seed: int) -> list[list[str]]:
    """K stratified validation folds: each class's slides shuffled (seeded) and dealt round robin (the second
    class continuing where the first stopped, so fold sizes differ by at most one), so every slide is in
    exactly one fold and each fold holds both classes. Needs K ≥ 2 and at least K slides of each class."""
    if folds < 2:
        raise ValueError(f"--folds must be at least 2, got {folds}")
    rng = np.random.default_rng(seed)
    out: list[list[str]] = [[] for _ in range(folds)]
    dealt = 0
    for cls in (0, 1):
        group = sorted(n for n in names if labels[n] == cls)
        if len(group) < folds:
            raise ValueError(
                f"--folds {folds} needs at least {folds} slides of each class, class {cls} has {len(group)}"
            )
        for i, name in enumerate(rng.permutation(group).tolist()):
            out[(dealt + i) % folds].append(name)
        dealt += len(group)
    return [sorted(fold) for fold in out]


def model_inputs(
    features_dir: str | Path,
    labels_csv: str | Path,
    annotations_dir: str | Path | None,
    validation: SlideSet | None,
) -> tuple:
    """The paths a model is trained from (its output folder must not be among them)."""
    inputs = (features_dir, labels_csv, annotations_dir)
    return inputs if validation is None else (*inputs, validation.features, validation.labels, validation.annotations)


def read_examples(
    stores: dict[str, Path], names: list[str], labels: dict[str, int], annotations_dir: str | Path | None
) -> tuple[dict[str, SlideFeatures], dict[str, Example]]:
    """The stores of ``names`` and their examples, both by name; slides without tissue tiles are left out with
    a warning."""
    data = {n: read_store(stores[n]) for n in names}
    empty = [n for n in names if len(data[n]) == 0]
    if empty:
        warnings.warn(f"{len(empty)} slides have no tissue tiles and are left out: {empty[:5]}", stacklevel=3)
    data = {n: d for n, d in data.items() if len(d)}
    return data, {n: to_example(d, labels[n], tile_targets(d, labels[n], annotations_dir)) for n, d in data.items()}


def validation_examples(validation: SlideSet, encoder_id: tuple[str, str], mode: dict) -> list[Example]:
    """Examples of the labelled stores of ``validation``; ``ValueError`` when they are not of the training
    features' encoder and mode, or do not hold both classes."""
    labels = read_labels(validation.labels)
    stores = list_stores(validation.features)
    names = sorted(n for n in stores if n in labels)
    check_same_encoder({n: read_attrs(stores[n]) for n in names}, encoder_id, "the training features", mode)
    if len({labels[n] for n in names}) < 2:
        raise ValueError(
            f"{validation.labels}: validation needs labelled slides of both classes in {validation.features}"
        )
    return list(read_examples(stores, names, labels, validation.annotations)[1].values())
