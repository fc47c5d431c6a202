"""Colour-statistics baseline: per-tile statistics, slide pooling, logistic regression."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest

from wsi_mamba.evaluation import (
    COLOUR_STATS,
    baseline_predict,
    baseline_to_json,
    fit_colour_baseline,
    slide_auc,
    slide_colour_vector,
    tile_colour_stats,
)


def reference_stats(tile: np.ndarray) -> np.ndarray:
    """One tile, pixel by pixel in float64 with colorsys."""
    rgb = tile.reshape(-1, 3).astype(np.float64) / 255.0
    hsv = np.array([colorsys.rgb_to_hsv(*pixel) for pixel in rgb])
    return np.concatenate(
        [rgb.mean(0), rgb.std(0), [hsv[:, 1].mean(), hsv[:, 1].std(), hsv[:, 2].mean(), hsv[:, 2].std()]]
    )


def test_stats_match_per_tile_loop() -> None:
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, (70, 6, 5, 3), dtype=np.uint8)  # more than one block of 64 tiles
    tiles[0, :2] = 0  # black pixels: saturation 0
    tiles[1] = 255  # white tile
    stats = tile_colour_stats(tiles)
    assert stats.shape == (70, len(COLOUR_STATS)) == (70, 10) and stats.dtype == np.float32
    expected = np.stack([reference_stats(tile) for tile in tiles])
    np.testing.assert_allclose(stats, expected, atol=1e-6)


def test_stats_edge_cases() -> None:
    empty = tile_colour_stats(np.zeros((0, 8, 8, 3), np.uint8))
    assert empty.shape == (0, 10) and empty.dtype == np.float32
    with pytest.raises(TypeError, match="uint8"):
        tile_colour_stats(np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(n, h, w, 3\)"):
        tile_colour_stats(np.zeros((8, 8, 3), np.uint8))


def test_slide_vector() -> None:
    stats = np.arange(20, dtype=np.float32).reshape(2, 10)
    np.testing.assert_allclose(slide_colour_vector(stats), np.arange(5, 15))
    with pytest.raises(ValueError, match="no tiles"):
        slide_colour_vector(np.zeros((0, 10), np.float32))


def synthetic_slide(positive: bool, rng: np.random.Generator) -> np.ndarray:
    """A slide vector from 16 noisy 16 x 16 tiles: tumour tiles are darker and more purple."""
    base = np.array([150, 80, 170]) if positive else np.array([225, 170, 210])
    base = base + rng.normal(0, 18, 3)
    tiles = np.clip(base + rng.normal(0, 25, (16, 16, 16, 3)), 0, 255).astype(np.uint8)
    return slide_colour_vector(tile_colour_stats(tiles))


def test_baseline_separates_easy_case_and_is_deterministic() -> None:
    rng = np.random.default_rng(1)
    labels = rng.permutation(np.repeat([0, 1], 30))
    X = np.stack([synthetic_slide(bool(label), rng) for label in labels])
    train, test = slice(0, 40), slice(40, 60)
    model = fit_colour_baseline(X[train], labels[train])
    probabilities = baseline_predict(baseline_to_json(model), X[test])
    assert probabilities.shape == (20,) and ((probabilities >= 0) & (probabilities <= 1)).all()
    assert slide_auc(labels[test], probabilities) > 0.9
    again = baseline_predict(baseline_to_json(fit_colour_baseline(X[train], labels[train])), X[test])
    np.testing.assert_array_equal(probabilities, again)
    # bool labels work and give the same model
    np.testing.assert_array_equal(
        baseline_predict(baseline_to_json(fit_colour_baseline(X[train], labels[train].astype(bool))), X[test]),
        probabilities,
    )


def test_baseline_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="both"):
        fit_colour_baseline(np.zeros((4, 10)), np.ones(4))
