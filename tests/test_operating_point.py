"""The operating threshold: the rule on constructed validation scores (exact values, ties, edges, the 0.5
fallback), what ``train`` records in model.json, what ``evaluate`` reports at it, the CLI options."""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from workflow_fixtures import TRAINING, WorkflowData, workflow_data

from wsi_mamba.cli import build_parser
from wsi_mamba.features.store import read_store, store_path
from wsi_mamba.workflows.bundle import load_bundle
from wsi_mamba.workflows.inputs import read_labels
from wsi_mamba.workflows.reports.evaluate import evaluate, score_features
from wsi_mamba.workflows.training.configs import SlideTrainingConfig
from wsi_mamba.workflows.training.operating_point import (
    choose_operating_point,
    rates_at,
    specificity_threshold,
    threshold_line,
    threshold_report,
)
from wsi_mamba.workflows.training.slide_training import train_slide_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# ------------------------------------------------------------------------------------------------ the rule


@pytest.mark.parametrize(
    ("normals", "target", "expected"),
    [
        ([0.4, 0.1, 0.3, 0.2], 0.75, 0.35),  # 1 of 4 may be >= t: midway between 0.3 and 0.4
        ([0.1, 0.2, 0.3, 0.4], 1.0, 0.7),  # none may: midway between the highest and 1
        ([0.1, 0.2, 0.3, 0.4], 0.95, 0.7),  # 5 % of 4 is 0.2 slides: none may
        ([i / 100 for i in range(1, 21)], 0.95, 0.195),  # 1 of 20 may: (1 - 0.95) * 20 is exactly one
        ([0.2, 0.5, 0.5, 0.5], 0.75, 0.75),  # ties above: t must clear all three, midway to 1
        ([0.2, 0.2, 0.6, 0.9], 0.5, 0.4),  # ties below: midway between 0.2 and the next higher, 0.6
        ([0.3], 0.95, 0.65),
        ([1.0, 0.2], 0.95, 1.0),  # a normal scored 1.0 cannot be cleared: clipped to 1.0
    ],
)
def test_threshold_exact_values(normals: list[float], target: float, expected: float) -> None:
    assert specificity_threshold(normals, target) == pytest.approx(expected, abs=1e-12)


def test_threshold_is_the_lowest_that_meets_the_target() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        normals = np.round(0.98 * rng.random(rng.integers(1, 30)), 2)  # rounded: ties happen
        target = float(rng.choice([0.5, 0.8, 0.9, 0.95, 0.99, 1.0]))
        t = specificity_threshold(normals, target)
        allowed = np.floor((1 - target) * len(normals) + 1e-9)
        assert (normals >= t).sum() <= allowed
        # Just below the largest normal score under t, the target is missed: nothing lower would do.
        under = normals[normals < t].max() if (normals < t).any() else None
        if under is not None:
            assert (normals >= under).sum() > allowed
            assert t == pytest.approx((under + (normals[normals > under].min(initial=1.0))) / 2)


@pytest.mark.parametrize(("normals", "target"), [([], 0.95), ([0.1, float("nan")], 0.95), ([0.1], 0.0)])
def test_threshold_refuses_bad_input(normals: list[float], target: float) -> None:
    with pytest.raises(ValueError):
        specificity_threshold(normals, target)


def test_operating_point_records_validation_rates() -> None:
    scores = [0.1, 0.3, 0.45, 0.6, 0.2, 0.5, 0.9, 0.4]
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    point = choose_operating_point(scores, labels, 0.75)  # 1 of 4 normals may be >= t: t = (0.45 + 0.6) / 2
    assert point.threshold == pytest.approx(0.525)
    assert point.validation_specificity == 0.75 and point.validation_sensitivity == 0.25
    meta = point.to_meta()
    assert meta == {
        "threshold": point.threshold,
        "threshold_rule": {
            "target_specificity": 0.75,
            "chosen_on": "8 validation slides (4 normal)",
            "validation_specificity": 0.75,
            "validation_sensitivity": 0.25,
        },
    }


@pytest.mark.parametrize(
    ("scores", "labels", "reason", "sensitivity"),
    [([], [], "no validation slides", None), ([0.3, 0.8], [1, 1], "no normal slide among the 2", 0.5)],
)
def test_fallback_is_one_half_with_a_warning(scores, labels, reason: str, sensitivity: float | None) -> None:
    with pytest.warns(UserWarning, match=f"{reason}.*using 0.5"):
        point = choose_operating_point(scores, labels, 0.95)
    assert point.threshold == 0.5 and point.chosen_on.startswith("fallback 0.5: ") and reason in point.chosen_on
    assert point.validation_specificity is None and point.validation_sensitivity == sensitivity


def test_rates_and_report_at_a_threshold() -> None:
    labels, scores = [0, 0, 0, 1, 1], [0.1, 0.6, 0.7, 0.65, 0.2]
    assert rates_at(labels, scores, 0.65) == (0.5, 2 / 3)  # >= t is tumour: 0.65 counts
    assert rates_at([0], [0.2], 0.5) == (None, 1.0)
    rule = {"target_specificity": 0.95, "chosen_on": "4 validation slides (2 normal)"}
    report = threshold_report(labels, scores, 0.65, rule)
    assert report["tumour_called_tumour"] == "1 of 2" and report["normal_called_tumour"] == "1 of 3"
    assert report["provenance"] == rule
    assert "chosen on 4 validation slides (2 normal) for specificity 0.95" in threshold_line(report)
    assert "not recorded" in threshold_report(labels, scores, 0.5, None)["provenance"]


def test_cli_options_and_ranges() -> None:
    parser = build_parser()
    base = ["train", "--features", "f", "--labels", "l.csv", "--out", "m"]
    args = parser.parse_args(base)
    assert (args.target_specificity, args.topk) == (0.95, 0)
    args = parser.parse_args([*base, "--target-specificity", "0.9", "--topk", "2"])
    assert (args.target_specificity, args.topk) == (0.9, 2)
    for option, value in [("--target-specificity", "0"), ("--target-specificity", "1.5"), ("--topk", "-1")]:
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([*base, option, value])
        assert exc.value.code == 2
    with pytest.raises(ValueError, match="target_specificity"):
        SlideTrainingConfig(target_specificity=0.0)


# ----------------------------------------------------------------------------- train and evaluate record it


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> WorkflowData:
    return workflow_data(tmp_path_factory)


def store_scores(bundle, features: Path, names: list[str]) -> list[float]:
    return [score_features(bundle, read_store(store_path(features, n)))[0] for n in names]


def test_train_records_the_threshold_chosen_on_its_validation_slides(data: WorkflowData) -> None:
    meta = json.loads((data.model / "model.json").read_text())
    val_names = meta["training"]["slides"]["validation"]
    labels = read_labels(data.labels)
    normals = [n for n in val_names if labels[n] == 0]
    assert normals, "the fixture's validation split has a normal slide"
    rule = meta["threshold_rule"]
    assert rule["target_specificity"] == 0.95 == meta["training"]["config"]["target_specificity"]
    assert rule["chosen_on"] == f"{len(val_names)} validation slides ({len(normals)} normal)"
    bundle = load_bundle(data.model)
    scores = store_scores(bundle, data.features, val_names)
    expected = specificity_threshold([s for s, n in zip(scores, val_names, strict=True) if labels[n] == 0], 0.95)
    assert meta["threshold"] == pytest.approx(expected, abs=1e-5) and bundle.threshold == meta["threshold"]
    assert rule["validation_specificity"] == 1.0  # the rule clears every normal slide when few may be called


def test_train_without_validation_slides_falls_back(data: WorkflowData, tmp_path: Path) -> None:
    """--val-fraction 0: no validation slide (a validation set of one class is refused before training)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # only the fallback's warning is of interest here
        with pytest.warns(UserWarning, match="no validation slides: .*using 0.5"):
            model = train_slide_model(
                data.features,
                data.labels,
                tmp_path / "model",
                cfg=replace(TRAINING, epochs=1, val_fraction=0.0),
                progress=False,
            )
    meta = json.loads((model / "model.json").read_text())
    assert meta["threshold"] == 0.5 and meta["threshold_rule"]["chosen_on"] == "fallback 0.5: no validation slides"
    assert meta["threshold_rule"]["validation_specificity"] is None


def test_cross_validation_chooses_on_out_of_fold_scores(data: WorkflowData, tmp_path: Path) -> None:
    model = train_slide_model(
        data.features, data.labels, tmp_path / "cv", cfg=replace(TRAINING, epochs=1, folds=2), progress=False
    )
    meta = json.loads((model / "model.json").read_text())
    slides = len(read_labels(data.labels))
    assert meta["threshold_rule"]["chosen_on"] == (
        f"{slides} out-of-fold validation slides of the 2 fold models ({slides // 2} normal)"
    )
    fold = json.loads((model / "fold-1" / "model.json").read_text())
    assert re.fullmatch(r"\d validation slides \(\d normal\)", fold["threshold_rule"]["chosen_on"])


def test_evaluate_reports_rates_at_the_models_threshold(data: WorkflowData, tmp_path: Path) -> None:
    metrics = evaluate(data.model, data.features, data.labels, tmp_path / "eval", n_boot=20, progress=False)
    bundle = load_bundle(data.model)
    at = metrics["at_model_threshold"]
    assert at["threshold"] == bundle.threshold and at["provenance"] == bundle.meta["threshold_rule"]
    names = sorted(read_labels(data.labels))
    labels = read_labels(data.labels)
    scores = store_scores(bundle, data.features, names)
    expected = rates_at([labels[n] for n in names], scores, bundle.threshold)
    assert (at["sensitivity"], at["specificity"]) == pytest.approx(expected)
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["at_model_threshold"]["normal_called_tumour"].endswith(f"of {len(names) - sum(labels.values())}")
