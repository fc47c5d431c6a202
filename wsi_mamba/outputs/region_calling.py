"""Calling tumour regions a pathologist can review: the slide model's tile probabilities smoothed over each
tile's tissue neighbours, connected groups of at least ``min_tiles`` tiles of smoothed evidence at or above a
calibrated ``tile_threshold`` (fitted on validation tiles for a stated false-positive rate per mm² of normal
tissue, :mod:`wsi_mamba.evaluation.region_calibration`), smaller groups only when one raw tile score reaches
``strong_score``; ranked, and written as QuPath annotations that say how each was called.

:meth:`RegionCalling.uncalibrated` is the calling of models without a calibration: every connected group of
tiles at or above the slide threshold (:func:`~.regions.tumor_regions`), as before calibration existed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from typing import Any

import numpy as np

from .geojson import write_feature_collection
from .regions import TumorRegion, grid_origin, region_annotation, region_geometry, slide_call, tumor_regions

__all__ = [
    "DEFAULT_TARGET_FP_PER_MM2",
    "SMOOTHING",
    "UNCALIBRATED",
    "CalledRegion",
    "RegionCalling",
    "call_regions",
    "called_regions_geojson",
    "outline_mask",
    "smooth_scores",
    "tile_area_mm2",
    "write_called_regions_geojson",
]

SMOOTHING = ("mean3x3", "none")
"""``mean3x3``: each tissue tile's score becomes the mean over the tissue tiles of its 3 × 3 neighbourhood."""
DEFAULT_TARGET_FP_PER_MM2 = 0.005
"""False regions per mm² of normal tissue: about 2.6 on a 60,000-tile slide of 96 px tiles at 0.972 µm/px."""
UNCALIBRATED = "uncalibrated: tiles >= slide threshold"
RANKING = "max smoothed score, then tiles (descending), then top to bottom"


def tile_area_mm2(tile_px: float, mpp: float) -> float:
    """Area of one tile, ``(tile_px * mpp / 1000)²`` mm² (0.0087 for 96 px at 0.972 µm/px)."""
    return (float(tile_px) * float(mpp) / 1000.0) ** 2


@dataclass(frozen=True)
class RegionCalling:
    """How regions are called on a tile-probability grid, and what the rule was fitted on (``calibration``, a
    free-form record: slides, tiles, normal area, achieved rate). ``strong_score`` None: no strong-tile rule."""

    tile_threshold: float
    smoothing: str = "mean3x3"
    min_tiles: int = 1
    strong_score: float | None = None
    target_fp_per_mm2: float | None = None
    connectivity: int = 8
    calibration: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def probability(name: str, value: object) -> None:
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise ValueError(f"region_calling: {name} must be a number in [0, 1], got {value!r}")

        probability("tile_threshold", self.tile_threshold)
        if self.strong_score is not None:
            probability("strong_score", self.strong_score)
        if self.smoothing not in SMOOTHING:
            raise ValueError(f"region_calling: smoothing must be one of {', '.join(SMOOTHING)}, got {self.smoothing!r}")
        if isinstance(self.min_tiles, bool) or not isinstance(self.min_tiles, int) or self.min_tiles < 1:
            raise ValueError(f"region_calling: min_tiles must be a whole number >= 1, got {self.min_tiles!r}")
        target = self.target_fp_per_mm2
        if target is not None and (
            isinstance(target, bool) or not isinstance(target, int | float) or not (0 < target < math.inf)
        ):
            raise ValueError(f"region_calling: target_fp_per_mm2 must be a positive number, got {target!r}")
        if self.connectivity not in (4, 8):
            raise ValueError(f"region_calling: connectivity must be 4 or 8, got {self.connectivity!r}")
        if not isinstance(self.calibration, dict):
            raise ValueError(f"region_calling: calibration must be a JSON object, got {self.calibration!r}")

    @classmethod
    def uncalibrated(cls, threshold: float) -> RegionCalling:
        """Every connected group of tiles scored at or above ``threshold`` (no smoothing, no minimum size)."""
        return cls(float(threshold), "none", 1, None, None, 8, {"uncalibrated": UNCALIBRATED})

    @property
    def is_calibrated(self) -> bool:
        return "uncalibrated" not in self.calibration

    def to_json(self) -> dict[str, Any]:
        return {
            "tile_threshold": self.tile_threshold,
            "smoothing": self.smoothing,
            "min_tiles": self.min_tiles,
            "strong_score": self.strong_score,
            "target_fp_per_mm2": self.target_fp_per_mm2,
            "connectivity": self.connectivity,
            "ranking": RANKING,
            "calibration": dict(self.calibration),
        }

    @classmethod
    def from_json(cls, data: object) -> RegionCalling:
        """The calling :meth:`to_json` wrote; ``ValueError`` (one line) for anything else."""
        if not isinstance(data, Mapping):
            raise ValueError(f"region_calling must be a JSON object, got {type(data).__name__}")
        known = {"tile_threshold", "smoothing", "min_tiles", "strong_score", "target_fp_per_mm2", "connectivity"}
        unknown = set(data) - known - {"ranking", "calibration"}
        if unknown:
            raise ValueError(f"region_calling: unknown field(s) {', '.join(sorted(unknown))}")
        if "tile_threshold" not in data:
            raise ValueError("region_calling: tile_threshold is missing")
        return cls(**{k: data[k] for k in known if k in data}, calibration=data.get("calibration", {}))

    def called_by_evidence(self) -> str:
        kind = "smoothed evidence" if self.smoothing != "none" else "tile score"
        return f"{kind} >= {self.tile_threshold:g} over >= {self.min_tiles} tile{'s' if self.min_tiles != 1 else ''}"

    def called_by_strong(self) -> str:
        return f"strong single-tile evidence >= {self.strong_score:g}"


@dataclass(frozen=True)
class CalledRegion(TumorRegion):
    """A called region: its tiles (``cells``/``inside``, raw ``max_score``/``mean_score``), its ``rank`` (1 =
    first to review), area, the highest smoothed score and how it was called."""

    rank: int
    area_mm2: float
    max_smoothed: float
    called_by: str


def smooth_scores(grid_scores: np.ndarray, smoothing: str = "mean3x3") -> np.ndarray:
    """``grid_scores`` (NaN off tissue) smoothed: ``mean3x3`` averages each tissue cell over the tissue cells of
    its 3 × 3 neighbourhood (itself included; NaN stays NaN); ``none`` returns the scores as they are."""
    grid = np.asarray(grid_scores, np.float32)
    if smoothing == "none":
        return grid
    if smoothing != "mean3x3":
        raise ValueError(f"smoothing must be one of {', '.join(SMOOTHING)}, got {smoothing!r}")
    from scipy import ndimage

    tissue = np.isfinite(grid)
    sums = ndimage.uniform_filter(np.where(tissue, grid, 0).astype(np.float64), 3, mode="constant")
    counts = ndimage.uniform_filter(tissue.astype(np.float64), 3, mode="constant")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tissue, sums / counts, np.nan).astype(np.float32)


def call_regions(
    grid_scores: np.ndarray, calling: RegionCalling, tile_area_mm2: float, smoothed: np.ndarray | None = None
) -> list[CalledRegion]:
    """The regions ``calling`` calls on ``grid_scores`` ((R, C) tile probabilities, NaN where no tile), ranked
    by :data:`RANKING`. Candidates are the connected groups (:func:`~.regions.tumor_regions`) of cells whose
    smoothed or raw score is ≥ ``tile_threshold`` (the raw one keeps a lesion's corners, which smoothing erodes)
    or whose raw score is ≥ ``strong_score``; a candidate is called when at least ``min_tiles`` of its cells
    hold smoothed evidence, else when its highest raw score reaches ``strong_score``. ``smoothed``: the grid
    already smoothed by ``calling.smoothing`` (saves the work)."""
    raw = np.asarray(grid_scores, np.float32)
    smooth = smooth_scores(raw, calling.smoothing) if smoothed is None else smoothed
    with np.errstate(invalid="ignore"):
        evidence = smooth >= calling.tile_threshold
        strong = raw >= calling.strong_score if calling.strong_score is not None else np.zeros_like(evidence)
        member = evidence | strong | (raw >= calling.tile_threshold)
    candidates = tumor_regions(np.where(member, 1.0, np.nan), 0.5, calling.connectivity)
    found = []
    for region in candidates:
        box, inside = region.cells, region.inside
        values, smooth_values = raw[box][inside], smooth[box][inside]
        if int((evidence[box] & inside).sum()) >= calling.min_tiles:
            how = calling.called_by_evidence()
        elif bool((strong[box] & inside).any()):
            how = calling.called_by_strong()
        else:
            continue
        tiles = int(inside.sum())
        stats = (float(values.max()), float(values.mean()), tiles)
        found.append((float(np.nanmax(smooth_values)), tiles, box, inside, stats, how))
    found.sort(key=lambda item: (-item[0], -item[1]))  # stable: top-to-bottom among ties
    return [
        CalledRegion(box, inside, *stats, rank, round(stats[2] * tile_area_mm2, 6), top, how)
        for rank, (top, _, box, inside, stats, how) in enumerate(found, start=1)
    ]


def outline_mask(regions: Sequence[TumorRegion], shape: tuple[int, int]) -> np.ndarray:
    """An (R, C) bool grid, True on the tiles of ``regions`` (what the heatmap outlines)."""
    mask = np.zeros(shape, bool)
    for region in regions:
        mask[region.cells] |= region.inside
    return mask


def called_regions_geojson(
    rows: np.ndarray,
    cols: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    size0: float,
    regions: Sequence[CalledRegion],
    calling: RegionCalling,
    slide_score: float | None = None,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """Called ``regions`` as a GeoJSON FeatureCollection of QuPath annotations named ``region_<rank>``, each
    outlined exactly along its tiles' edges in level-0 pixels (:func:`~.regions.region_geometry`: a ``Polygon``,
    outer ring then holes, or a ``MultiPolygon`` for parts touching only at corners; grid corners at
    :func:`~.regions.grid_origin` + k * ``size0``); ``properties``: class ``Tumor``, ``rank``, ``called_by``,
    ``tiles``, ``area_mm2``, ``area_px``, ``max_score``, ``mean_score``, ``max_smoothed_score`` (the numbers also
    among the measurements, with the slide's score and threshold) and the slide's call (``slide_score`` given,
    :func:`~.regions.slide_call`). The collection's ``properties``: the slide's call and ``region_calling``, the
    calling record (:meth:`RegionCalling.to_json`), or :data:`UNCALIBRATED`."""
    rows = np.asarray(rows, np.int64).reshape(-1)
    cols = np.asarray(cols, np.int64).reshape(-1)
    side = float(size0)
    call = slide_call(slide_score, threshold)
    record = calling.to_json() if calling.is_calibrated else UNCALIBRATED
    collection: dict[str, Any] = {"type": "FeatureCollection", "properties": {**(call or {}), "region_calling": record}}
    features = []
    origin = grid_origin(rows, cols, x, y, side) if len(rows) else (0.0, 0.0)
    for region in regions:
        stats = {
            "rank": region.rank,
            "tiles": region.tiles,
            "area_mm2": region.area_mm2,
            "area_px": round(region.tiles * side * side, 2),
            "max_score": round(region.max_score, 6),
            "mean_score": round(region.mean_score, 6),
            "max_smoothed_score": round(region.max_smoothed, 6),
        }
        properties = region_annotation(f"region_{region.rank}", stats, call, {"called_by": region.called_by})
        geometry = region_geometry(region, origin, side)
        features.append({"type": "Feature", "geometry": geometry, "properties": properties})
    collection["features"] = features
    return collection


def write_called_regions_geojson(
    path: str | PathLike[str],
    rows: np.ndarray,
    cols: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    size0: float,
    regions: Sequence[CalledRegion],
    calling: RegionCalling,
    slide_score: float | None = None,
    threshold: float = 0.5,
) -> int:
    """Write :func:`called_regions_geojson` to ``path`` atomically, one feature per line; returns the number of
    regions."""
    collection = called_regions_geojson(rows, cols, x, y, size0, regions, calling, slide_score, threshold)
    write_feature_collection(path, collection["features"], collection["properties"])
    return len(collection["features"])
