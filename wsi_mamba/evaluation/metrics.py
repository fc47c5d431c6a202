"""Slide-level metrics: ROC AUC with a stratified bootstrap interval, the Youden threshold, accuracy.

Labels are 0/1 (bools are fine), scores any finite numbers where higher means "more likely tumour";
a slide is called positive when ``score >= threshold`` (the convention of ``sklearn.metrics.roc_curve``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score, roc_curve

ArrayLike = np.ndarray | Sequence[float]


def _check(labels: ArrayLike, scores: ArrayLike, *, both_classes: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Validate and return (labels as int64 0/1, scores as float64), both 1-D and of the same length."""
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D, got shapes {y.shape} and {s.shape}")
    if len(y) != len(s):
        raise ValueError(f"labels and scores differ in length ({len(y)} vs {len(s)})")
    if len(y) == 0:
        raise ValueError("no slides: labels and scores are empty")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0/1, got values {np.unique(y)[:5].tolist()}")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite (found NaN or inf)")
    y = y.astype(np.int64)
    if both_classes:
        n_pos = int(y.sum())
        if n_pos == 0 or n_pos == len(y):
            only = "positive" if n_pos else "negative"
            raise ValueError(f"ROC analysis needs both positive and negative slides; all {len(y)} slides are {only}")
    return y, s


def slide_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve (ties count one half). ValueError when only one class is present."""
    y, s = _check(labels, scores)
    return float(roc_auc_score(y, s))


def bootstrap_auc_ci(
    labels: ArrayLike, scores: ArrayLike, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of the AUC over ``n_boot`` stratified bootstrap resamples.

    Positives and negatives are resampled separately (with replacement, keeping their counts), so every
    resample has both classes. Deterministic for a given ``seed``.
    """
    y, s = _check(labels, scores)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    pos, neg = s[y == 1], s[y == 0]
    n_pos, n_neg = len(pos), len(neg)
    rng = np.random.default_rng(seed)
    aucs = np.empty(n_boot, np.float64)
    # Mann-Whitney: AUC = (rank sum of the positives - n_pos (n_pos + 1) / 2) / (n_pos n_neg), average
    # ranks for ties. Replicates are ranked a block at a time (rows of positives then negatives).
    block = max(1, 2_000_000 // (n_pos + n_neg))
    for start in range(0, n_boot, block):
        b = min(block, n_boot - start)
        sample = np.concatenate(
            [pos[rng.integers(0, n_pos, (b, n_pos))], neg[rng.integers(0, n_neg, (b, n_neg))]], axis=1
        )
        rank_sum = rankdata(sample, axis=1)[:, :n_pos].sum(axis=1)
        aucs[start : start + b] = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    alpha = (1.0 - level) / 2
    low, high = np.quantile(aucs, [alpha, 1.0 - alpha])
    return float(low), float(high)


def youden_threshold(labels: ArrayLike, scores: ArrayLike) -> float:
    """The score threshold maximising Youden's J = TPR - FPR on the ROC curve (``score >= t`` is positive).

    Only finite thresholds are considered (``roc_curve``'s first one is +inf); among equally good ones
    the highest threshold is returned.
    """
    y, s = _check(labels, scores)
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    finite = np.isfinite(thresholds)
    j = np.where(finite, tpr - fpr, -np.inf)
    return float(thresholds[int(np.argmax(j))])


def accuracy_at(labels: ArrayLike, scores: ArrayLike, threshold: float) -> float:
    """Fraction of slides classified correctly when ``score >= threshold`` means positive."""
    y, s = _check(labels, scores, both_classes=False)
    return float(np.mean((s >= threshold) == (y == 1)))


def _rates(y: np.ndarray, s: np.ndarray, threshold: float) -> tuple[float, float]:
    """(sensitivity, specificity) at ``threshold``."""
    predicted = s >= threshold
    sensitivity = float(predicted[y == 1].mean())
    specificity = float((~predicted[y == 0]).mean())
    return sensitivity, specificity


def summarize(labels: ArrayLike, scores: ArrayLike, n_boot: int = 2000, seed: int = 0) -> dict:
    """Slide-level summary as a JSON-serialisable dict of plain ints and floats.

    Keys: ``n``, ``n_positive``, ``auc``, ``auc_ci_low``, ``auc_ci_high`` (95 % stratified bootstrap),
    ``accuracy_at_0.5``, ``youden_threshold``, ``accuracy_at_youden``, ``sensitivity_at_youden``,
    ``specificity_at_youden``.
    """
    y, s = _check(labels, scores)
    low, high = bootstrap_auc_ci(y, s, n_boot=n_boot, seed=seed)
    threshold = youden_threshold(y, s)
    sensitivity, specificity = _rates(y, s, threshold)
    return {
        "n": len(y),
        "n_positive": int(y.sum()),
        "auc": slide_auc(y, s),
        "auc_ci_low": low,
        "auc_ci_high": high,
        "accuracy_at_0.5": accuracy_at(y, s, 0.5),
        "youden_threshold": threshold,
        "accuracy_at_youden": accuracy_at(y, s, threshold),
        "sensitivity_at_youden": sensitivity,
        "specificity_at_youden": specificity,
    }
