"""DeLong's test for two correlated ROC AUCs: two scorers on the same slides (DeLong, DeLong & Clarke-Pearson
1988), in the fast midrank form of Sun & Xu (2014, IEEE Signal Processing Letters 21:1389).

Each scorer's AUC is the Mann-Whitney statistic; its structural components (per positive: the fraction of
negatives it outranks, per negative: the fraction of positives that outrank it; ties count one half) give the
covariance of the two AUCs, and the difference over its standard error is compared with a standard normal.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import norm, rankdata

from .metrics import ArrayLike, _check


@dataclass(frozen=True)
class DeLongResult:
    """``auc_a - auc_b`` = ``difference`` with its standard error, 95 % interval, z and two-sided p-value."""

    n: int
    n_positive: int
    auc_a: float
    auc_b: float
    difference: float
    se: float
    ci_low: float
    ci_high: float
    z: float
    p_value: float

    def to_dict(self) -> dict:
        return asdict(self)


def delong_covariance(labels: ArrayLike, *scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(AUCs (k,), their covariance (k, k)) of ``k`` scorers of the same slides, by DeLong's method."""
    if not scores:
        raise ValueError("give at least one set of scores")
    checked = [_check(labels, s) for s in scores]
    y = checked[0][0]
    x = np.stack([s for _, s in checked])  # (k, n)
    pos, neg = x[:, y == 1], x[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    rank_pos = rankdata(pos, axis=1)
    rank_neg = rankdata(neg, axis=1)
    rank_all = rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    aucs = (rank_all[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    v_pos = (rank_all[:, :m] - rank_pos) / n  # per positive: fraction of negatives below it
    v_neg = 1.0 - (rank_all[:, m:] - rank_neg) / m  # per negative: fraction of positives above it
    cov_pos = np.atleast_2d(np.cov(v_pos)) if m > 1 else np.zeros((len(x), len(x)))
    cov_neg = np.atleast_2d(np.cov(v_neg)) if n > 1 else np.zeros((len(x), len(x)))
    return aucs, cov_pos / m + cov_neg / n


def delong_test(labels: ArrayLike, scores_a: ArrayLike, scores_b: ArrayLike, level: float = 0.95) -> DeLongResult:
    """DeLong's paired test of ``AUC(scores_a) == AUC(scores_b)`` on the same slides (two-sided); the interval
    is ``level`` for the difference. Identical AUCs with zero variance (e.g. both perfect) give p = 1."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    y, _ = _check(labels, scores_a)
    aucs, cov = delong_covariance(y, scores_a, scores_b)
    difference = float(aucs[0] - aucs[1])
    variance = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = math.sqrt(variance) if variance > 1e-15 else 0.0
    if se == 0.0:
        z = 0.0 if abs(difference) < 1e-12 else math.copysign(math.inf, difference)
    else:
        z = difference / se
    p_value = float(min(1.0, 2 * norm.sf(abs(z))))
    half = float(norm.ppf(0.5 + level / 2)) * se
    return DeLongResult(
        n=len(y),
        n_positive=int(y.sum()),
        auc_a=float(aucs[0]),
        auc_b=float(aucs[1]),
        difference=difference,
        se=se,
        ci_low=difference - half,
        ci_high=difference + half,
        z=float(z),
        p_value=p_value,
    )


def paired_permutation_p(
    labels: ArrayLike, scores_a: ArrayLike, scores_b: ArrayLike, n_perm: int = 2000, seed: int = 0
) -> float:
    """Two-sided p-value of ``AUC(a) - AUC(b)`` by swapping the two scorers' ranks slide by slide (each scorer's
    scores are turned into ranks first, so scorers on different scales are exchangeable under the null);
    a check of :func:`delong_test`, deterministic for a given ``seed``."""
    y, a = _check(labels, scores_a)
    _, b = _check(y, scores_b)
    a, b = rankdata(a) / len(a), rankdata(b) / len(b)
    aucs, _ = delong_covariance(y, a, b)
    observed = abs(aucs[0] - aucs[1])
    rng = np.random.default_rng(seed)
    swap = rng.random((n_perm, len(y))) < 0.5
    pa, pb = np.where(swap, b, a), np.where(swap, a, b)
    pos = y == 1
    m, n = int(pos.sum()), int((~pos).sum())

    def auc_rows(s: np.ndarray) -> np.ndarray:
        ranks = rankdata(s, axis=1)
        return (ranks[:, pos].sum(axis=1) - m * (m + 1) / 2) / (m * n)

    null = np.abs(auc_rows(pa) - auc_rows(pb))
    return float((1 + np.sum(null >= observed - 1e-12)) / (n_perm + 1))
