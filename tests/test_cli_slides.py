"""``wsi-mamba info | tiles | synth``: exit codes, one-line errors, outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from slide_fixtures import synthetic_slide, write_pyramid

from wsi_mamba.cli import main


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, path: Path, problem: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {path}: ") and problem in lines[0]
    assert "Traceback" not in err


def test_help_shows_examples(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and "wsi-mamba tiles slide.svs --mpp 0.5" in out
    code, out, _ = run(["tiles", "--help"], capsys)
    assert code == 0 and "example:" in out


def test_info_text_and_json(
    tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    path = synthetic_slide(tmp_path_factory, "svs")
    code, out, err = run(["info", str(path)], capsys)
    assert code == 0 and err == ""
    assert "vendor: aperio" in out and "mpp: 0.243" in out and "level 2:" in out and "label" in out
    code, out, _ = run(["info", str(path), "--json", "--backend", "openslide"], capsys)
    info = json.loads(out)
    assert code == 0 and info["backend"] == "openslide" and info["level_count"] == 3
    assert info["mpp"] == pytest.approx(0.243) and info["objective_power"] == 40


def test_info_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.svs"
    code, _, err = run(["info", str(missing)], capsys)
    assert code == 1
    assert_one_line_error(err, missing, "no such file")
    text = tmp_path / "notes.svs"
    text.write_text("hello\n")
    code, _, err = run(["info", str(text)], capsys)
    assert code == 1
    assert_one_line_error(err, text, "not a slide")


def test_truncated_tiff_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_pyramid(tmp_path / "full.tif", compression="none").read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) // 3])
    code, _, err = run(["info", str(cut)], capsys)
    assert code == 1
    assert_one_line_error(err, cut, "truncated")


def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["tiles"], capsys)[0] == 2
    assert run(["tiles", "x.svs", "--mpp", "-1"], capsys)[0] == 2
    assert run(["nonsense"], capsys)[0] == 2


def test_tiles_preview(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    path = synthetic_slide(tmp_path_factory, "tiff")
    preview = tmp_path / "preview.png"
    code, out, err = run(["tiles", str(path), "--mpp", "0.5", "--tile", "128", "--out", str(preview)], capsys)
    assert code == 0 and err == ""
    assert out.split()[0].isdigit() and int(out.split()[0]) > 0 and "tiles of 128 px at 0.5" in out
    assert preview.exists()
    code, out, _ = run(["tiles", str(path), "--json"], capsys)
    summary = json.loads(out)
    assert code == 0 and summary["tiles"] > 0 and summary["tile_px"] == 256


def test_tiles_needs_mpp(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_pyramid(tmp_path / "nompp.tif", mpp=None)
    code, _, err = run(["tiles", str(path)], capsys)
    assert code == 1
    assert_one_line_error(err, path, "no microns-per-pixel")
    code, out, _ = run(["tiles", str(path), "--slide-mpp", "0.5", "--min-tissue", "0"], capsys)
    assert code == 0 and out.startswith("12 tiles")


def test_tiles_without_tissue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "blank.tif"
    tifffile.imwrite(
        path,
        np.full((512, 512, 3), 244, np.uint8),
        tile=(256, 256),
        photometric="rgb",
        resolution=(2e4, 2e4),
        resolutionunit="CENTIMETER",
        metadata=None,
    )
    code, out, err = run(["tiles", str(path)], capsys)
    assert code == 0 and out.startswith("0 tiles") and "no tissue found" in err


def test_synth_writes_cohort(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        ["synth", str(tmp_path / "c"), "--slides", "3", "--seed", "1", "--size", "512"], capsys
    )
    assert code == 0 and "wrote 3 slides" in out
    assert (tmp_path / "c" / "training" / "labels.csv").exists()
    assert (tmp_path / "c" / "testing" / "images" / "test_001.tif").exists()


def test_subprocess_error_and_exit_code(tmp_path: Path) -> None:
    missing = tmp_path / "gone.svs"
    result = subprocess.run(
        [sys.executable, "-m", "wsi_mamba", "info", str(missing)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert_one_line_error(result.stderr, missing, "no such file")
