"""Calibrating region calling (:mod:`wsi_mamba.outputs.region_calling`) on validation slides for a stated rate
of false regions per mm² of normal tissue.

Normal tissue: every tile of a normal slide, and the tiles of a tumour slide that lie wholly outside its
lesion annotations. A called region is false when none of its tiles touches a lesion. The rule (recorded in
the calling's ``calibration``), with a budget of ``target × normal area`` false regions on the validation set:

- ``smoothing``: ``mean3x3``;
- ``min_tiles``: the tiles covering a 0.2 mm-wide focus (π · 0.1² mm² / tile area, rounded up; 4 for 96 px
  tiles at 0.972 µm/px), the size below which pathology calls a focus an isolated tumour cell cluster;
- ``strong_score``: the smallest of :data:`STRONG_SCORES` at which, and at every higher one, the connected
  groups of tiles scoring at least it that touch no lesion are at most half the budget (None when even the
  highest is over it);
- ``tile_threshold``: the smallest of :data:`THRESHOLDS` (≥ ``min_threshold``, 0.5 by default: never a tile more
  likely normal than not) at which, and at every higher one, the whole calling's false regions are within the
  budget (the highest when none is: ``target_met`` false in the record).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..outputs.region_calling import DEFAULT_TARGET_FP_PER_MM2, RegionCalling, call_regions, smooth_scores

__all__ = [
    "STRONG_SCORES",
    "THRESHOLDS",
    "ValidationGrid",
    "calibrate_region_calling",
    "false_regions",
    "lesions_hit",
    "min_tiles_for",
]

THRESHOLDS = (*(round(0.01 * i, 2) for i in range(1, 100)), 0.995, 0.999)
STRONG_SCORES = (*(round(0.01 * i, 2) for i in range(50, 100)), 0.995, 0.999, 0.9995, 0.9999)
FOCUS_MM = 0.2
"""Width of the smallest focus called on smoothed evidence alone (the micro-metastasis lower limit)."""


@dataclass(frozen=True)
class ValidationGrid:
    """One validation slide on its tile grid: ``scores`` (R, C) tile probabilities, NaN where no tile;
    ``normal`` (R, C) bool, True on tissue known to be normal (the rest of the tissue is lesion or its edge)."""

    name: str
    scores: np.ndarray
    normal: np.ndarray

    def __post_init__(self) -> None:
        if np.shape(self.scores) != np.shape(self.normal) or np.ndim(self.scores) != 2:
            raise ValueError(f"{self.name}: scores and normal must be (R, C) grids of one shape")


def min_tiles_for(tile_area_mm2: float, focus_mm: float = FOCUS_MM) -> int:
    """Tiles covering a ``focus_mm``-wide round focus: ``ceil(π (focus_mm / 2)² / tile_area_mm2)``, at least 1."""
    return max(1, math.ceil(math.pi * (focus_mm / 2) ** 2 / tile_area_mm2 - 1e-9))


def false_regions(grid: ValidationGrid, calling: RegionCalling, smoothed: np.ndarray | None = None) -> int:
    """The regions ``calling`` calls on ``grid`` whose tiles are all normal tissue."""
    normal = np.asarray(grid.normal, bool)
    regions = call_regions(grid.scores, calling, 1.0, smoothed)
    return sum(bool(normal[r.cells][r.inside].all()) for r in regions)


def lesions_hit(grids: Sequence[ValidationGrid], calling: RegionCalling) -> tuple[int, int]:
    """(lesions, lesions touched by a called region): lesions are 8-connected groups of non-normal tissue."""
    from scipy import ndimage

    total = hit = 0
    for grid in grids:
        lesion = np.isfinite(grid.scores) & ~np.asarray(grid.normal, bool)
        labels, count = ndimage.label(lesion, structure=np.ones((3, 3), bool))
        if not count:
            continue
        called = np.zeros(lesion.shape, bool)
        for region in call_regions(grid.scores, calling, 1.0):
            called[region.cells] |= region.inside
        total += count
        hit += len(set(np.unique(labels[called & lesion]).tolist()) - {0})
    return total, hit


def _smallest_passing(values: Sequence[float], count: Any, budget: float) -> float | None:
    """The smallest of ``values`` (ascending) such that ``count(v) <= budget`` for it and every larger one
    (scanned from the top down, stopping at the first failure); None when the largest already fails."""
    chosen = None
    for value in reversed(values):
        if count(value) > budget:
            break
        chosen = value
    return chosen


def calibrate_region_calling(
    normal_grids: Sequence[ValidationGrid],
    tile_area_mm2: float,
    target_fp_per_mm2: float = DEFAULT_TARGET_FP_PER_MM2,
    min_threshold: float = 0.5,
    source: Mapping[str, Any] | None = None,
) -> RegionCalling:
    """The :class:`RegionCalling` of the module's rule for ``target_fp_per_mm2`` false regions per mm² of the
    normal tissue of ``normal_grids`` (validation slides; ``tile_area_mm2`` per tile). ``source`` (what the
    scores come from) is kept in the record. ``ValueError`` when the grids hold no normal tissue."""
    if not (target_fp_per_mm2 > 0 and math.isfinite(target_fp_per_mm2)):
        raise ValueError(f"the target must be a positive number of false regions per mm², got {target_fp_per_mm2}")
    if not (tile_area_mm2 > 0 and math.isfinite(tile_area_mm2)):
        raise ValueError(f"tile_area_mm2 must be a positive number, got {tile_area_mm2}")
    grids = list(normal_grids)
    normal_tiles = sum(int((np.asarray(g.normal, bool) & np.isfinite(g.scores)).sum()) for g in grids)
    if not normal_tiles:
        raise ValueError("no normal tissue to calibrate region calling on (normal slides, or annotated tumour slides)")
    area = normal_tiles * tile_area_mm2
    budget = target_fp_per_mm2 * area
    min_tiles = min_tiles_for(tile_area_mm2)
    smoothed = [smooth_scores(g.scores, "mean3x3") for g in grids]

    def strong_groups(score: float) -> int:
        plain = RegionCalling(score, "none", 1)
        return sum(false_regions(g, plain) for g in grids)

    strong = _smallest_passing(STRONG_SCORES, strong_groups, budget / 2)

    def calling_at(threshold: float) -> RegionCalling:
        return RegionCalling(threshold, "mean3x3", min_tiles, strong, target_fp_per_mm2)

    def all_false(threshold: float) -> int:
        return sum(false_regions(g, calling_at(threshold), s) for g, s in zip(grids, smoothed, strict=True))

    candidates = [t for t in THRESHOLDS if t >= min_threshold] or [THRESHOLDS[-1]]
    threshold = _smallest_passing(candidates, all_false, budget)
    met = threshold is not None
    threshold = candidates[-1] if threshold is None else threshold
    found = all_false(threshold)
    lesions, hit = lesions_hit(grids, calling_at(threshold))
    record = {
        **dict(source or {}),
        "slides": len(grids),
        "slide_names": sorted(g.name for g in grids)[:50],
        "normal_tiles": normal_tiles,
        "tile_area_mm2": round(tile_area_mm2, 8),
        "normal_area_mm2": round(area, 4),
        "false_regions": found,
        "fp_per_mm2": round(found / area, 6),
        "target_met": met,
        "min_measurable_fp_per_mm2": round(1 / area, 6),
        "lesions": lesions,
        "lesions_hit": hit,
        "rule": (
            "tile_threshold: smallest of 0.01 steps (>= min_threshold) whose false regions per mm2 of normal "
            "validation tissue, and those of every higher step, are <= target; strong_score: smallest score whose "
            "groups of tiles at or above it touching no lesion are <= half that budget; min_tiles: tiles of a "
            f"{FOCUS_MM} mm-wide focus; smoothing mean3x3"
        ),
        "min_threshold": min_threshold,
    }
    return RegionCalling(threshold, "mean3x3", min_tiles, strong, target_fp_per_mm2, 8, record)
