"""The shipped models: the real-tissue default and the synthetic demo model, and the out-of-domain warning."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from slide_fixtures import synthetic_slide

from wsi_mamba.cli import main
from wsi_mamba.workflows.bundle import default_model_path, load_bundle, shipped_models

PCAM = Path(__file__).resolve().parents[2] / "shared" / "data" / "pcam"


def test_default_is_the_real_tissue_model() -> None:
    assert default_model_path().name == "pcam-camelyon"
    bundle = load_bundle()
    assert bundle.encoder.tile_px == 96 and 0.9 < bundle.encoder.mpp < 1.0
    assert "domain" in bundle.meta and bundle.meta["domain"]["tiles"] > 1000
    card = (default_model_path() / "README.md").read_text()
    assert "Research use only" in card and "not a diagnostic device" in card.lower()
    assert set(shipped_models()) >= {"pcam-camelyon", "synthetic-camelyon"}


def test_procedural_slide_is_out_of_domain_for_the_real_tissue_model(
    tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None, capsys: pytest.CaptureFixture[str]
) -> None:
    slide = synthetic_slide(tmp_path_factory, "tiff", tumor=True)
    with pytest.warns(UserWarning, match="out of domain for model pcam-camelyon") as caught:
        code = main(["predict", str(slide), "--json", "--threads", "1"])
    out, _ = capsys.readouterr()
    result = json.loads(out)[0]
    assert code == 0 and result["score"] is not None
    assert result["warnings"], "a procedural slide must be flagged as unlike the training slides"
    assert len([w for w in caught if "out of domain" in str(w.message)]) == 1
    code = main(["predict", str(slide), "--json", "--model", "synthetic-camelyon", "--threads", "1"])
    out, _ = capsys.readouterr()
    assert code == 0 and json.loads(out)[0]["model"] == "synthetic-camelyon"


@pytest.mark.skipif(not PCAM.is_dir(), reason=f"real PCam patches not found at {PCAM}")
def test_real_tissue_slide_is_in_domain(tmp_path: Path, one_torch_thread: None, capsys) -> None:
    code = main(["synth", str(tmp_path / "c"), "--from-patches", str(PCAM / "valid"), "--slides", "1",
                 "--seed", "5", "--test-fraction", "0"])
    assert code == 0
    slide = next((tmp_path / "c").rglob("*.tif"))
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any out-of-domain warning fails the test
        code = main(["predict", str(slide), "--json", "--threads", "1"])
    out, err = capsys.readouterr()
    assert code == 0 and json.loads(out)[0]["warnings"] == [], err
