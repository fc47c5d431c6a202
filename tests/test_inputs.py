"""Workflow inputs: slide discovery and the label formats (header CSV, CAMELYON16 reference.csv, folders)."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsi_mamba.workflows.inputs import find_slides, read_labels


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_labels_from_a_header_csv_and_from_reference_csv(tmp_path: Path) -> None:
    header = tmp_path / "labels.csv"
    header.write_text("image,label,other\nnormal_001.tif,Normal,x\ntumor_001,TUMOR,y\nb,1,z\n")
    assert read_labels(header) == {"normal_001": 0, "tumor_001": 1, "b": 1}
    reference = tmp_path / "reference.csv"  # CAMELYON16: no header
    reference.write_text("Test_001,Tumor,Macro,None\nTest_002,Normal,,\n")
    assert read_labels(reference) == {"Test_001": 1, "Test_002": 0}


def test_labels_from_tumor_and_normal_folders(tmp_path: Path) -> None:
    _touch(tmp_path / "training" / "tumor" / "tumor_001.tif")
    _touch(tmp_path / "training" / "normal" / "normal_001.svs")
    _touch(tmp_path / "training" / "other" / "x_001.tif")  # neither: left out
    _touch(tmp_path / "training" / "lesion_annotations" / "tumor_001.xml")  # not a slide
    assert read_labels(tmp_path / "training") == {"tumor_001": 1, "normal_001": 0}
    _touch(tmp_path / "flat" / "a.tif")
    with pytest.raises(ValueError, match="no slides under folders named tumor/ or normal/"):
        read_labels(tmp_path / "flat")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("image,label\na,maybe\n", r"labels\.csv:2: label 'maybe'"),
        ("image,label\na,1\na,0\n", r"labels\.csv:3: a listed twice"),
        ("image,label\na\n", r"labels\.csv:2: too few columns"),
        ("slide_only\na\n", r"labels\.csv: expected an 'image' and a 'label' column"),
        ("", r"labels\.csv: no rows"),
    ],
)
def test_bad_labels_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_labels(path)


def test_missing_inputs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="labels file not found"):
        read_labels(tmp_path / "none.csv")
    with pytest.raises(ValueError, match="no such file or folder"):
        find_slides([tmp_path / "none.svs"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no slide files"):
        find_slides([tmp_path / "empty"])
    slide = _touch(tmp_path / "a" / "b.ndpi")
    assert find_slides([tmp_path / "a", slide]) == [slide, slide]  # folders searched, files taken as named
