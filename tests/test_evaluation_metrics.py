"""Slide-level metrics: AUC, stratified bootstrap interval, Youden threshold, accuracy, summary."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wsi_mamba.evaluation import accuracy_at, bootstrap_auc_ci, slide_auc, summarize, youden_threshold


def pairwise_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Brute force: the fraction of (positive, negative) pairs ranked correctly, ties one half."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def normal_scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], n)
    scores = np.concatenate([rng.normal(0.0, 1.0, n), rng.normal(1.0, 1.0, n)])
    return labels, scores


def test_auc_hand_made_case() -> None:
    # positives 0.8, 0.6, 0.4 vs negatives 0.5, 0.4, 0.1: 9 pairs; 0.8 and 0.6 beat all 3 (6 wins),
    # 0.4 beats 0.1 and ties 0.4 (1.5): 7.5 / 9
    labels = np.array([1, 1, 1, 0, 0, 0])
    scores = np.array([0.8, 0.6, 0.4, 0.5, 0.4, 0.1])
    assert slide_auc(labels, scores) == pytest.approx(7.5 / 9)
    assert slide_auc(labels.astype(bool), scores.tolist()) == pytest.approx(7.5 / 9)


def test_auc_matches_pairwise_count_with_ties() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 60)
    labels[:2] = [0, 1]
    scores = np.round(rng.normal(labels * 0.7, 1.0), 1)  # rounding makes ties
    assert slide_auc(labels, scores) == pytest.approx(pairwise_auc(labels, scores))


def test_bootstrap_interval_contains_auc_and_narrows() -> None:
    labels, scores = normal_scores(30, seed=2)
    auc = slide_auc(labels, scores)
    low, high = bootstrap_auc_ci(labels, scores, n_boot=500, seed=0)
    assert 0.0 <= low < auc < high <= 1.0
    labels_big, scores_big = normal_scores(300, seed=3)
    low_big, high_big = bootstrap_auc_ci(labels_big, scores_big, n_boot=500, seed=0)
    assert low_big < slide_auc(labels_big, scores_big) < high_big
    assert high_big - low_big < 0.6 * (high - low)


def test_bootstrap_is_deterministic_and_level_widens() -> None:
    labels, scores = normal_scores(25, seed=4)
    assert bootstrap_auc_ci(labels, scores, n_boot=300, seed=7) == bootstrap_auc_ci(labels, scores, n_boot=300, seed=7)
    low90, high90 = bootstrap_auc_ci(labels, scores, n_boot=300, level=0.90)
    low99, high99 = bootstrap_auc_ci(labels, scores, n_boot=300, level=0.99)
    assert low99 <= low90 and high90 <= high99


def test_bootstrap_matches_sklearn_on_the_same_resamples() -> None:
    # the vectorised rank-sum AUC equals the pairwise count on each stratified resample; the implementation
    # draws all positive indices, then all negative indices, from default_rng(seed) (one block here)
    labels, scores = normal_scores(12, seed=5)
    pos, neg = scores[labels == 1], scores[labels == 0]
    n_boot = 300
    rng = np.random.default_rng(0)
    pos_index = rng.integers(0, len(pos), (n_boot, len(pos)))
    neg_index = rng.integers(0, len(neg), (n_boot, len(neg)))
    p, n = pos[pos_index][:, :, None], neg[neg_index][:, None, :]
    aucs = ((p > n) + 0.5 * (p == n)).mean(axis=(1, 2))
    low, high = bootstrap_auc_ci(labels, scores, n_boot=n_boot, seed=0)
    assert low == pytest.approx(np.quantile(aucs, 0.025), abs=1e-12)
    assert high == pytest.approx(np.quantile(aucs, 0.975), abs=1e-12)


def test_youden_on_separable_case() -> None:
    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.6, 0.7])
    threshold = youden_threshold(labels, scores)
    assert threshold == pytest.approx(0.6)  # the highest threshold with TPR - FPR = 1
    assert np.isfinite(threshold)
    assert accuracy_at(labels, scores, threshold) == 1.0
    assert accuracy_at(labels, scores, 0.5) == 1.0
    assert accuracy_at(labels, scores, 0.65) == pytest.approx(0.8)  # score >= threshold is positive


def test_youden_on_inverted_scores_is_finite() -> None:
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.9, 0.8, 0.2, 0.1])
    assert np.isfinite(youden_threshold(labels, scores))


@pytest.mark.parametrize("labels", [[1, 1, 1], [0, 0, 0]])
def test_one_class_raises(labels: list[int]) -> None:
    scores = [0.1, 0.5, 0.9]
    for function in (slide_auc, bootstrap_auc_ci, youden_threshold, summarize):
        with pytest.raises(ValueError, match="both positive and negative"):
            function(labels, scores)


def test_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="length"):
        slide_auc([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="0/1"):
        slide_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="finite"):
        slide_auc([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="empty"):
        slide_auc([], [])


def test_summarize_is_json_serialisable() -> None:
    labels, scores = normal_scores(20, seed=6)
    probabilities = 1 / (1 + np.exp(-scores))
    summary = summarize(labels, probabilities, n_boot=200)
    assert set(summary) == {
        "n",
        "n_positive",
        "auc",
        "auc_ci_low",
        "auc_ci_high",
        "accuracy_at_0.5",
        "youden_threshold",
        "accuracy_at_youden",
        "sensitivity_at_youden",
        "specificity_at_youden",
    }
    assert json.loads(json.dumps(summary)) == summary
    assert type(summary["n"]) is int and type(summary["n_positive"]) is int
    assert all(type(v) is float for k, v in summary.items() if k not in ("n", "n_positive"))
    assert summary["n"] == 40 and summary["n_positive"] == 20
    assert summary["auc_ci_low"] <= summary["auc"] <= summary["auc_ci_high"]
    sensitivity, specificity = summary["sensitivity_at_youden"], summary["specificity_at_youden"]
    assert summary["accuracy_at_youden"] == pytest.approx((sensitivity + specificity) / 2)  # balanced classes
