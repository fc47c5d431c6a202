"""Per-lesion-class rates in evaluation (cohorts from ``synth --from-patches`` name each slide's class)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wsi_mamba.workflows.inputs import read_label_column, read_labels
from wsi_mamba.workflows.reports.evaluate import rates_by_class


def test_lesion_class_column(tmp_path: Path) -> None:
    csv = tmp_path / "reference.csv"
    csv.write_text("image,label,lesion_class\ntest_001.tif,Tumor,macro\ntest_002.tif,Normal,none\n")
    assert read_labels(csv) == {"test_001": 1, "test_002": 0}
    assert read_label_column(csv, "lesion_class") == {"test_001": "macro", "test_002": "none"}
    assert read_label_column(csv, "absent") == {}
    (tmp_path / "plain.csv").write_text("image,label\na,1\n")
    assert read_label_column(tmp_path / "plain.csv", "lesion_class") == {}


def test_rates_by_class() -> None:
    names = ["a", "b", "c", "d", "e"]
    classes = {"a": "macro", "b": "macro", "c": "itc", "d": "none", "e": "none"}
    rates = rates_by_class(names, np.array([0.9, 0.4, 0.2, 0.6, 0.1]), classes, 0.5)
    assert rates["macro"] == {"slides": 2, "sensitivity": 0.5, "threshold": 0.5}
    assert rates["itc"]["sensitivity"] == 0.0
    assert rates["none"]["false_positive_rate"] == pytest.approx(0.5)
