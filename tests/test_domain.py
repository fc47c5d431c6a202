"""Out-of-domain statistics and warnings."""

from __future__ import annotations

import numpy as np

from wsi_mamba.workflows.domain import domain_statistics, domain_warnings


def training_slides(rng: np.random.Generator, n: int = 6) -> tuple[list[np.ndarray], list[np.ndarray]]:
    features = [rng.normal(0, 1, (200, 16)) for _ in range(n)]
    colours = [rng.normal(0.7, 0.02, (200, 10)) for _ in range(n)]
    return features, colours


def test_in_domain_slide_gets_no_warning() -> None:
    rng = np.random.default_rng(0)
    stats = domain_statistics(*training_slides(rng))
    features, colours = training_slides(np.random.default_rng(1), 1)
    assert domain_warnings(stats, features[0], colours[0], 0.97, 0.972) == []


def test_far_features_colour_and_resolution_warn() -> None:
    stats = domain_statistics(*training_slides(np.random.default_rng(0)))
    rng = np.random.default_rng(2)
    shifted = rng.normal(3, 1, (150, 16))
    reasons = domain_warnings(stats, shifted, rng.normal(0.7, 0.02, (150, 10)), None, 0.972)
    assert len(reasons) == 1 and "unlike the training tiles" in reasons[0]
    pale = rng.normal(0.95, 0.02, (150, 10))
    assert any("colour" in r for r in domain_warnings(stats, rng.normal(0, 1, (150, 16)), pale, None, 0.972))
    assert any("coarser" in r for r in domain_warnings(stats, rng.normal(0, 1, (150, 16)), pale, 2.0, 0.972))


def test_joint_colour_distance() -> None:
    """With enough training slides, a slide whose colour statistics are each in range but jointly unlike the
    training slides' (two correlated statistics moving apart) is out of domain; held-out in-domain slides are not."""
    rng = np.random.default_rng(0)

    def colours(n: int, flip: bool = False) -> list[np.ndarray]:
        out = []
        for _ in range(n):
            tone = rng.normal(0, 0.03)  # a per-slide shade moving statistics 0 and 1 together
            base = np.full(10, 0.7) + rng.normal(0, 0.005, 10)
            base[:2] += (tone, -tone) if flip else (tone, tone)
            out.append(base + rng.normal(0, 0.01, (100, 10)))
        return out

    features = [rng.normal(0, 1, (100, 8)) for _ in range(40)]
    stats = domain_statistics(features, colours(40))
    assert {"colour_mean", "colour_precision", "colour_distance_max"} <= set(stats)
    in_domain = [domain_warnings(stats, features[0], c, None, 0.972) for c in colours(10)]
    assert in_domain == [[]] * 10
    low, high = np.array(stats["colour_min"]), np.array(stats["colour_max"])
    odd = next(
        c
        for c in colours(100, flip=True)
        if abs(c[:, 0].mean() - c[:, 1].mean()) > 0.1 and ((c.mean(0) >= low) & (c.mean(0) <= high)).all()
    )  # each statistic within the training range, the two moving apart
    reasons = domain_warnings(stats, features[0], odd, None, 0.972)
    assert len(reasons) == 1 and "unlike the training slides'" in reasons[0]
    few = domain_statistics(features[:6], colours(6))  # too few slides for a 10 × 10 covariance
    assert "colour_precision" not in few


def test_without_statistics_only_resolution_is_checked() -> None:
    assert domain_warnings(None, np.zeros((3, 4)), np.zeros((3, 10)), 0.25, 0.5) == []
    assert len(domain_warnings(None, np.zeros((3, 4)), np.zeros((3, 10)), 4.0, 0.5)) == 1


def test_shipped_models_by_name(tmp_path) -> None:
    from wsi_mamba.workflows.bundle import default_model_path, model_path, shipped_models

    names = shipped_models()
    assert "synthetic-camelyon" in names and default_model_path().name in names
    assert model_path(None) == default_model_path()
    assert model_path("synthetic-camelyon") == names["synthetic-camelyon"]
    assert model_path(tmp_path) == tmp_path  # an existing path wins over a name
