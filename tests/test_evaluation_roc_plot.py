"""ROC PNG: written atomically, readable, one curve per entry."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from wsi_mamba.evaluation import write_roc_png


def test_roc_png_written_atomically(tmp_path) -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 20)
    curves = {
        "slide model": (labels, rng.normal(labels * 1.5, 1.0)),
        "colour baseline": (labels.tolist(), rng.normal(labels * 0.5, 1.0).tolist()),
    }
    path = tmp_path / "reports" / "roc.png"
    assert write_roc_png(curves, path, title="CAMELYON16 test") == path
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100
    assert [p.name for p in path.parent.iterdir()] == ["roc.png"]
    # overwrite in place, str path, no title
    write_roc_png({"one": (labels, labels * 0.5)}, str(path))
    assert [p.name for p in path.parent.iterdir()] == ["roc.png"]


def test_roc_png_bad_input_leaves_nothing(tmp_path) -> None:
    with pytest.raises(ValueError, match="no curves"):
        write_roc_png({}, tmp_path / "roc.png")
    with pytest.raises(ValueError, match="both positive and negative"):
        write_roc_png({"x": ([1, 1], [0.2, 0.3])}, tmp_path / "roc.png")
    assert list(tmp_path.iterdir()) == []
