"""Lesion-level FROC as in the CAMELYON16 challenge, computed on polygons instead of rasterised masks.

Protocol: the official evaluation code distributed with the CAMELYON16 data set (Radboud UMC;
``compute_evaluation_mask``, ``compute_probabilities``, ``compute_froc``, ``compute_score``; the 2016
``Evaluation_FROC.py`` builds the same regions but has no score function):

* **Evaluation regions.** Every lesion is grown by 37.5 µm on every side: the official code keeps the
  pixels whose distance to tumour is below ``dilation_distance / 2`` with ``dilation_distance = 75 µm``
  ("about 5 tumour cells"), so a lesion's diameter grows by 75 µm. Lesions whose grown regions touch
  are one region (the official code labels connected components of the grown mask), holes inside a
  polygon are part of it (``binary_fill_holes``). Here the test is exact and vectorised: a point is in
  a lesion's region when ``matplotlib.path.Path`` puts it inside the polygon or its distance to the
  polygon's edges is below the margin; two lesions share a region when the distance between the
  polygons is below twice the margin. Nothing is rasterised, and detection coordinates are used as
  they are (the official code rounds them to its level-5 grid). Two small differences remain: an area
  enclosed by a ring of merged lesions is not filled, and exclusion polygons are not used (the
  official hole filling puts exclusions inside a lesion back into it anyway).
* **Isolated tumour cells (ITC).** A region whose longest diameter is below 200 µm (below 275 µm once
  grown, the official ``(200 + 75) µm``) is an ITC: detections in it are neither TP nor FP and it is
  not counted in the sensitivity denominator. The official code measures "longest diameter" as the
  major axis of the region's equivalent ellipse on a level-5 raster (~7.8 µm pixels); here it is the
  exact longest distance between two polygon vertices of the region (its Feret diameter), the
  definition the official code states in its comments. The two can differ for elongated borderline
  lesions.
* **Matching.** A detection inside a non-ITC region is a TP for that region, which counts once, with
  the highest probability among its detections. A detection outside every region is an FP (on normal
  slides every detection is an FP). Detections with probability 0 are ignored, as in the official
  code (there 0 marks a missed lesion).
* **Curve.** The threshold sweeps over every distinct probability of the FPs and the TP regions;
  at threshold ``t`` the sensitivity is (TP regions with probability ``>= t``) / (non-ITC regions of
  all slides) and the FP rate is (FPs with probability ``>= t``) / (number of slides, normal ones
  included). The curve starts at (0 FP, 0 sensitivity) for a threshold above every probability.
* **Score.** Mean sensitivity at 1/4, 1/2, 1, 2, 4 and 8 FPs per slide. ``rule="official"`` (the
  default) reproduces the official ``compute_score``: ``bisect_left`` on the ascending FP rates, that
  is the sensitivity at the *first* curve point whose FP rate is **at or above** the target (the last
  point when the curve never reaches it; of several points exactly at the target, the one with the
  highest threshold). This can credit a sensitivity reached at an FP rate above the target, and can
  miss one reached at it. ``rule="at_most"`` is the conservative reading: the best sensitivity among points
  whose FP rate is at or below the target.
* **No lesions.** When the set has no non-ITC lesion at all the sensitivity is undefined: ``froc``
  raises ``ValueError`` (the official code would divide by zero).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from matplotlib.path import Path as MplPath
from scipy.spatial import cKDTree

TARGET_FP_RATES: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
DILATION_UM = 75.0
ITC_DIAMETER_UM = 200.0
_BLOCK = 1 << 21  # elements per broadcast block in the distance computations


@dataclass
class SlideDetections:
    """Detections and reference lesions of one slide, all in level-0 pixels.

    ``detections``: (k, 3) rows of x, y, probability. ``lesions``: lesion polygons as (n, 2) xy arrays
    (``wsi_mamba.slide.annotations.Polygon`` objects are accepted too), empty for a normal slide.
    ``mpp``: level-0 microns per pixel.
    """

    name: str
    detections: np.ndarray
    lesions: list[np.ndarray]
    mpp: float


@dataclass
class DetectionMatch:
    """How one slide's detections fall on its evaluation regions.

    ``region``: (k,) index of the region each detection lies in, -1 outside all (an FP).
    ``lesion_region``: (n_lesions,) region of each input lesion (lesions closer than the margin merge).
    ``region_is_itc``: (n_regions,) whether each region is an isolated-tumour-cell region.
    ``is_tp`` / ``is_fp`` / ``is_ignored``: per-detection classification (ignored = in an ITC region or
    probability 0).
    """

    region: np.ndarray
    lesion_region: np.ndarray
    region_is_itc: np.ndarray
    is_tp: np.ndarray
    is_fp: np.ndarray
    is_ignored: np.ndarray

    @property
    def n_regions(self) -> int:
        return len(self.region_is_itc)


@dataclass
class FrocResult:
    """FROC curve (ascending FP rate, starting at (0, 0)) and the CAMELYON16 score.

    ``thresholds[i]`` is the probability threshold of point ``i`` (``inf`` for the first point).
    ``at_rates`` maps each target FP rate to the sensitivity the ``rule`` reads there; ``score`` is
    their mean. ``n_lesions`` counts non-ITC evaluation regions, ``n_itc`` the ITC ones.
    """

    fps_per_slide: np.ndarray
    sensitivity: np.ndarray
    thresholds: np.ndarray
    score: float
    at_rates: dict[float, float]
    n_slides: int
    n_lesions: int
    n_itc: int
    rule: str = "official"
    per_slide: dict[str, DetectionMatch] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        """JSON-serialisable summary (the +inf threshold of the first point becomes ``None``)."""
        return {
            "score": self.score,
            "rule": self.rule,
            "at_rates": {str(rate): value for rate, value in self.at_rates.items()},
            "n_slides": self.n_slides,
            "n_lesions": self.n_lesions,
            "n_itc": self.n_itc,
            "fps_per_slide": self.fps_per_slide.tolist(),
            "sensitivity": self.sensitivity.tolist(),
            "thresholds": [float(t) if np.isfinite(t) else None for t in self.thresholds],
        }


# ---------------------------------------------------------------------------------------------------
# geometry


def _polygon_points(polygon: object) -> np.ndarray:
    points = np.asarray(getattr(polygon, "points", polygon), dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) < 3 or not np.isfinite(points).all():
        raise ValueError(f"a lesion polygon must be an (n >= 3, 2) array of finite xy, got shape {points.shape}")
    return points


def _edge_distance(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """(k,) Euclidean distance from each point to the closed polygon's boundary."""
    start = polygon
    direction = np.roll(polygon, -1, axis=0) - start
    length2 = np.einsum("ij,ij->i", direction, direction)
    safe = np.where(length2 > 0, length2, 1.0)
    out = np.empty(len(points), np.float64)
    step = max(1, _BLOCK // len(polygon))
    for lo in range(0, len(points), step):
        offset = points[lo : lo + step, None, :] - start[None]  # (c, n, 2)
        t = np.clip(np.einsum("cnj,nj->cn", offset, direction) / safe, 0.0, 1.0)
        t[:, length2 == 0] = 0.0
        gap = offset - t[..., None] * direction
        out[lo : lo + step] = np.sqrt(np.einsum("cnj,cnj->cn", gap, gap).min(axis=1))
    return out


def _in_region(points: np.ndarray, polygon: np.ndarray, margin: float) -> np.ndarray:
    """(k,) whether each point is inside the polygon or closer than ``margin`` to its boundary."""
    inside = np.zeros(len(points), bool)
    if len(points) == 0:
        return inside
    low, high = polygon.min(axis=0) - margin, polygon.max(axis=0) + margin
    near = np.flatnonzero(((points >= low) & (points <= high)).all(axis=1))
    if len(near) == 0:
        return inside
    candidates = points[near]
    hit = MplPath(polygon, closed=False).contains_points(candidates)
    if margin > 0 and not hit.all():
        rest = ~hit
        hit[rest] = _edge_distance(candidates[rest], polygon) < margin
    inside[near] = hit
    return inside


def _edges_cross(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether an edge of closed polygon ``a`` properly crosses an edge of closed polygon ``b``."""
    a0, a1 = a, np.roll(a, -1, axis=0)
    b0, b1 = b, np.roll(b, -1, axis=0)

    def cross(o: np.ndarray, p: np.ndarray, q: np.ndarray) -> np.ndarray:
        return (p[..., 0] - o[..., 0]) * (q[..., 1] - o[..., 1]) - (p[..., 1] - o[..., 1]) * (q[..., 0] - o[..., 0])

    step = max(1, _BLOCK // len(b))
    for lo in range(0, len(a), step):
        p0, p1 = a0[lo : lo + step, None], a1[lo : lo + step, None]
        d1, d2 = cross(p0, p1, b0[None]), cross(p0, p1, b1[None])
        d3, d4 = cross(b0[None], b1[None], p0), cross(b0[None], b1[None], p1)
        if ((d1 * d2 < 0) & (d3 * d4 < 0)).any():
            return True
    return False


def _polygon_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Distance between two closed polygons as areas (0 when they overlap or one contains the other)."""
    if MplPath(b).contains_points(a).any() or MplPath(a).contains_points(b).any() or _edges_cross(a, b):
        return 0.0
    return float(min(_edge_distance(a, b).min(), _edge_distance(b, a).min()))


def _merge_lesions(polygons: list[np.ndarray], gap: float) -> tuple[np.ndarray, int]:
    """Group lesions closer than ``gap`` (union-find); returns (region per lesion, number of regions)."""
    n = len(polygons)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if n > 1:
        low = np.array([p.min(axis=0) for p in polygons])
        high = np.array([p.max(axis=0) for p in polygons])
        # boxes closer than the gap on both axes are candidates
        box_gap = np.maximum(low[:, None] - high[None], low[None] - high[:, None]).max(axis=2)
        for i, j in zip(*np.nonzero(np.triu(box_gap < gap, k=1)), strict=True):
            ri, rj = root(int(i)), root(int(j))
            if ri != rj and _polygon_distance(polygons[i], polygons[j]) < gap:
                parent[max(ri, rj)] = min(ri, rj)
    roots = np.array([root(i) for i in range(n)], np.int64)
    _, region = np.unique(roots, return_inverse=True)
    return region.astype(np.int64).reshape(-1), int(region.max()) + 1 if n else 0


def _diameter_below(points: np.ndarray, length: float) -> bool:
    """Whether the longest distance between two of ``points`` is below ``length``."""
    span = points.max(axis=0) - points.min(axis=0)
    if span.max() >= length:
        return False
    if np.hypot(*span) < length:
        return True
    limit = length * length
    step = max(1, _BLOCK // len(points))
    for lo in range(0, len(points), step):
        gap = points[lo : lo + step, None, :] - points[None]
        if (np.einsum("cnj,cnj->cn", gap, gap) >= limit).any():
            return False
    return True


# ---------------------------------------------------------------------------------------------------
# matching and the curve


def _detections(slide: SlideDetections) -> np.ndarray:
    detections = np.asarray(slide.detections, dtype=np.float64)
    if detections.size == 0:
        return np.zeros((0, 3), np.float64)
    if detections.ndim != 2 or detections.shape[1] != 3:
        raise ValueError(f"slide {slide.name!r}: detections must be (k, 3) x, y, probability, got {detections.shape}")
    if not np.isfinite(detections).all():
        raise ValueError(f"slide {slide.name!r}: detections contain NaN or inf")
    if (detections[:, 2] < 0).any():
        raise ValueError(f"slide {slide.name!r}: detection probabilities must be >= 0")
    return detections


def match_detections(
    slide: SlideDetections, dilation_um: float = DILATION_UM, itc_diameter_um: float = ITC_DIAMETER_UM
) -> DetectionMatch:
    """Assign each detection of ``slide`` to an evaluation region (or none) following the CAMELYON16
    protocol of this module's docstring."""
    if not (np.isfinite(slide.mpp) and slide.mpp > 0):
        raise ValueError(f"slide {slide.name!r}: mpp must be a positive number, got {slide.mpp}")
    detections = _detections(slide)
    polygons = [_polygon_points(p) for p in slide.lesions]
    margin = dilation_um / 2.0 / slide.mpp  # level-0 px
    lesion_region, n_regions = _merge_lesions(polygons, 2.0 * margin)
    itc_px = itc_diameter_um / slide.mpp
    region_is_itc = np.array(
        [
            _diameter_below(np.concatenate([p for p, r in zip(polygons, lesion_region, strict=True) if r == g]), itc_px)
            for g in range(n_regions)
        ],
        dtype=bool,
    )
    points = detections[:, :2]
    region = np.full(len(detections), -1, np.int64)
    for polygon, g in zip(polygons, lesion_region, strict=True):
        free = np.flatnonzero(region < 0)
        region[free[_in_region(points[free], polygon, margin)]] = g
    positive = detections[:, 2] > 0
    in_itc = np.zeros(len(detections), bool)
    in_itc[region >= 0] = region_is_itc[region[region >= 0]]
    is_tp = (region >= 0) & ~in_itc & positive
    is_fp = (region < 0) & positive
    return DetectionMatch(region, lesion_region, region_is_itc, is_tp, is_fp, ~(is_tp | is_fp))


def sensitivity_at(
    fps_per_slide: np.ndarray,
    sensitivity: np.ndarray,
    rate: float,
    rule: Literal["official", "at_most"] = "official",
) -> float:
    """Read a sensitivity off an FROC curve (ascending FP rates) at ``rate`` FPs per slide.

    ``official``: the first point whose FP rate is >= ``rate`` (the last point if none), as the
    official ``compute_score`` (``bisect_left``). ``at_most``: the last point whose FP rate is <= ``rate``
    (the best sensitivity reachable without exceeding it).
    """
    fps = np.asarray(fps_per_slide, np.float64)
    sens = np.asarray(sensitivity, np.float64)
    if rule == "official":
        index = min(int(np.searchsorted(fps, rate, side="left")), len(fps) - 1)
    elif rule == "at_most":
        index = max(int(np.searchsorted(fps, rate, side="right")) - 1, 0)
    else:
        raise ValueError(f"rule must be 'official' or 'at_most', got {rule!r}")
    return float(sens[index])


def froc(
    slides: Sequence[SlideDetections],
    *,
    rates: Sequence[float] = TARGET_FP_RATES,
    rule: Literal["official", "at_most"] = "official",
    dilation_um: float = DILATION_UM,
    itc_diameter_um: float = ITC_DIAMETER_UM,
) -> FrocResult:
    """CAMELYON16 lesion-level FROC over ``slides`` (normal slides included: they count in the FP rate).

    Raises ValueError when there are no slides or no non-ITC lesion in the whole set.
    """
    if len(slides) == 0:
        raise ValueError("FROC needs at least one slide")
    if rule not in ("official", "at_most"):
        raise ValueError(f"rule must be 'official' or 'at_most', got {rule!r}")
    names = [s.name for s in slides]
    if len(set(names)) != len(names):
        raise ValueError("slide names must be unique")
    fp_probs: list[np.ndarray] = []
    tp_probs: list[np.ndarray] = []
    n_lesions = n_itc = 0
    per_slide: dict[str, DetectionMatch] = {}
    for slide in slides:
        match = match_detections(slide, dilation_um, itc_diameter_um)
        per_slide[slide.name] = match
        probability = _detections(slide)[:, 2]
        fp_probs.append(probability[match.is_fp])
        best = np.zeros(match.n_regions, np.float64)
        np.maximum.at(best, match.region[match.is_tp], probability[match.is_tp])
        tp_probs.append(best[(best > 0) & ~match.region_is_itc])
        n_itc += int(match.region_is_itc.sum())
        n_lesions += int((~match.region_is_itc).sum())
    if n_lesions == 0:
        raise ValueError(
            f"FROC is undefined: the {len(slides)} slides have no lesion to detect"
            + (f" ({n_itc} isolated-tumour-cell regions only, which do not count)" if n_itc else "")
        )
    fp = np.sort(np.concatenate(fp_probs))
    tp = np.sort(np.concatenate(tp_probs))
    thresholds = np.unique(np.concatenate([fp, tp]))[::-1]  # descending, all > 0
    fp_count = len(fp) - np.searchsorted(fp, thresholds, side="left")
    tp_count = len(tp) - np.searchsorted(tp, thresholds, side="left")
    fps_per_slide = np.concatenate([[0.0], fp_count / len(slides)])
    sensitivity = np.concatenate([[0.0], tp_count / n_lesions])
    at_rates = {float(rate): sensitivity_at(fps_per_slide, sensitivity, rate, rule) for rate in rates}
    return FrocResult(
        fps_per_slide=fps_per_slide,
        sensitivity=sensitivity,
        thresholds=np.concatenate([[np.inf], thresholds]),
        score=float(np.mean(list(at_rates.values()))),
        at_rates=at_rates,
        n_slides=len(slides),
        n_lesions=n_lesions,
        n_itc=n_itc,
        rule=rule,
        per_slide=per_slide,
    )


# ---------------------------------------------------------------------------------------------------
# tiles -> detections


def tile_detections(
    x: np.ndarray, y: np.ndarray, size0: float, scores: np.ndarray, min_distance_tiles: float = 2
) -> np.ndarray:
    """Per-tile scores -> (k, 3) detections (x, y, score) at tile centres, by greedy non-maximum suppression.

    ``x``, ``y``: level-0 top-left corners of square tiles of side ``size0``. The highest-scoring tile
    is kept and every other tile whose centre lies within ``min_distance_tiles * size0`` of it
    (Euclidean, with 1 % of a tile of slack for the integer rounding of tile corners) is dropped; then
    the next highest remaining one, and so on. Rows come out by decreasing score (ties: input order).
    """
    x = np.asarray(x, np.float64).reshape(-1)
    y = np.asarray(y, np.float64).reshape(-1)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if not (len(x) == len(y) == len(scores)):
        raise ValueError(f"x, y and scores differ in length ({len(x)}, {len(y)}, {len(scores)})")
    if not (np.isfinite(size0) and size0 > 0):
        raise ValueError(f"size0 must be a positive number, got {size0}")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    centres = np.stack([x + size0 / 2.0, y + size0 / 2.0], axis=1)
    order = np.argsort(-scores, kind="stable")
    if min_distance_tiles <= 0 or len(order) == 0:
        keep = order
    else:
        radius = (min_distance_tiles + 0.01) * size0
        tree = cKDTree(centres)
        suppressed = np.zeros(len(order), bool)
        kept: list[int] = []
        for index in order:
            if suppressed[index]:
                continue
            kept.append(int(index))
            suppressed[tree.query_ball_point(centres[index], radius)] = True
        keep = np.asarray(kept, np.int64)
    return np.column_stack([centres[keep], scores[keep]]) if len(keep) else np.zeros((0, 3), np.float64)
