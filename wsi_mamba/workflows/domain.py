"""Out-of-domain checks: is a slide far from what the model was trained on?

``train`` stores statistics of its training slides in the model folder (``model.json`` → ``domain``):
the mean and spread of every tile-feature dimension, how far training tiles lie from that mean, and the
range of the slides' mean colour. ``predict`` compares a new slide with them and warns (one stderr line,
a ``warnings`` field in its JSON) when

- the slide's resolution is coarser than the model's (its tiles would be upsampled),
- many of its tiles lie further from the training tiles than almost any training tile did, or
- its mean colour is outside what the training slides showed: outside their range in some statistic, or
  (with enough training slides) far from them jointly — a Mahalanobis distance over the colour statistics,
  which catches a slide whose statistics are each in range but whose combination is not.

A warning does not change the score: it says the score is less trustworthy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

TILE_QUANTILE = 0.995  # a tile is atypical beyond this quantile of the training tiles' distances
MAX_ATYPICAL_FRACTION = 0.5  # ... and a slide with more atypical tiles than this is out of domain
COLOUR_MARGIN = 4.0  # slide mean colour more than this many training-slide sd outside the training range
MPP_COARSER = 1.25  # slide mpp above model mpp × this: tiles upsampled
COLOUR_DISTANCE_FACTOR = 1.5  # joint colour distance above this × the largest training slide's: out of domain
COLOUR_SHRINKAGE = 0.02  # covariance shrunk this far towards its diagonal (few slides, correlated statistics)
MIN_SLIDES_PER_STATISTIC = 2  # the joint check needs at least this many training slides per colour statistic


def _distances(features: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Mean squared z-score per tile (a diagonal Mahalanobis distance, per dimension)."""
    z = (np.asarray(features, np.float64) - mean) / std
    return (z**2).mean(axis=1)


def domain_statistics(features: Sequence[np.ndarray], colours: Sequence[np.ndarray]) -> dict:
    """Statistics of the training slides' tiles: ``features[i]`` (n_i, d) and ``colours[i]`` (n_i, K) of slide i."""
    tiles = [np.asarray(f, np.float64) for f in features if len(f)]
    if not tiles:
        raise ValueError("no tiles to compute domain statistics from")
    stacked = np.concatenate(tiles)
    mean = stacked.mean(axis=0)
    std = np.maximum(stacked.std(axis=0), 1e-6)
    distances = _distances(stacked, mean, std)
    threshold = float(np.quantile(distances, TILE_QUANTILE))
    per_slide = np.split(distances, np.cumsum([len(f) for f in tiles])[:-1])
    atypical = [float((d > threshold).mean()) for d in per_slide]
    slide_colours = np.stack([np.asarray(c, np.float64).mean(axis=0) for c in colours if len(c)])
    return {
        **_joint_colour_statistics(slide_colours),
        "feature_mean": mean.tolist(),
        "feature_std": std.tolist(),
        "tile_distance_threshold": threshold,
        "training_atypical_fraction_max": max(atypical),
        "colour_min": slide_colours.min(axis=0).tolist(),
        "colour_max": slide_colours.max(axis=0).tolist(),
        "colour_sd": np.maximum(slide_colours.std(axis=0), 1e-3).tolist(),
        "slides": len(tiles),
        "tiles": len(stacked),
    }


def _joint_colour_statistics(slide_colours: np.ndarray) -> dict:
    """Mean, (shrunk) precision matrix and largest training distance of the slides' mean colours; empty
    when there are too few slides for a covariance of that many statistics."""
    n, k = slide_colours.shape
    if n < MIN_SLIDES_PER_STATISTIC * k:
        return {}
    mean = slide_colours.mean(axis=0)
    cov = np.cov(slide_colours, rowvar=False)
    diagonal = np.maximum(np.diag(cov), 1e-8)
    cov = (1 - COLOUR_SHRINKAGE) * cov + COLOUR_SHRINKAGE * np.diag(diagonal)
    precision = np.linalg.inv(cov)
    return {
        "colour_mean": mean.tolist(),
        "colour_precision": precision.tolist(),
        "colour_distance_max": float(_mahalanobis(slide_colours, mean, precision).max()),
    }


def _mahalanobis(x: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    d = np.asarray(x, np.float64) - mean
    return np.sqrt(np.maximum(np.einsum("...i,ij,...j->...", d, precision, d), 0.0))


def _colour_reason(stats: dict, colour: np.ndarray) -> str | None:
    """Why the slide's mean colour is unlike the training slides', or None."""
    slide_colour = np.asarray(colour, np.float64).mean(axis=0)
    low, high = np.asarray(stats["colour_min"]), np.asarray(stats["colour_max"])
    margin = COLOUR_MARGIN * np.asarray(stats["colour_sd"])
    if ((slide_colour < low - margin) | (slide_colour > high + margin)).any():
        return "its colour statistics are outside those of the training slides"
    if "colour_precision" in stats:
        distance = float(
            _mahalanobis(slide_colour, np.asarray(stats["colour_mean"]), np.asarray(stats["colour_precision"]))
        )
        largest = stats["colour_distance_max"]
        if distance > COLOUR_DISTANCE_FACTOR * largest:
            return (
                f"its colour statistics are unlike the training slides' (distance {distance:.1f}; "
                f"training slides at most {largest:.1f})"
            )
    return None


def domain_warnings(
    stats: dict | None,
    features: np.ndarray,
    colour: np.ndarray,
    slide_mpp: float | None,
    model_mpp: float,
) -> list[str]:
    """Reasons why a slide (its tile ``features`` and ``colour`` statistics) looks unlike the training slides."""
    reasons = []
    if slide_mpp is not None and slide_mpp > model_mpp * MPP_COARSER:
        reasons.append(
            f"slide resolution {slide_mpp:.3g} µm/px is coarser than the model's {model_mpp:.3g} µm/px "
            "(tiles are upsampled)"
        )
    if not stats or not len(features):
        return reasons
    mean, std = np.asarray(stats["feature_mean"]), np.asarray(stats["feature_std"])
    if mean.shape[0] == features.shape[1]:
        atypical = float((_distances(features, mean, std) > stats["tile_distance_threshold"]).mean())
        if atypical > max(MAX_ATYPICAL_FRACTION, stats.get("training_atypical_fraction_max", 0.0)):
            reasons.append(
                f"{atypical:.0%} of its tiles are unlike the training tiles (at most "
                f"{stats.get('training_atypical_fraction_max', 0):.0%} on a training slide)"
            )
    reason = _colour_reason(stats, colour) if len(colour) else None
    if reason:
        reasons.append(reason)
    return reasons
