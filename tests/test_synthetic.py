"""The synthetic CAMELYON16-style cohort: layout, determinism, OpenSlide compatibility, lesions."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import openslide
import pytest
from scipy import ndimage

from wsi_mamba.slide import open_slide
from wsi_mamba.slide.annotations import rasterize, read_asap_xml
from wsi_mamba.synth.cohort import plan_cohort, write_cohort
from wsi_mamba.synth.procedural import make_spec, render
from wsi_mamba.synth.writer import write_slide

SIZE = 1024


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cohort")
    write_cohort(out, slides=5, seed=3, size=SIZE)
    return out


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_camelyon_layout(cohort: Path) -> None:
    files = sorted(p.relative_to(cohort).as_posix() for p in cohort.rglob("*") if p.is_file())
    assert (
        files
        == [
            "synth.json",  # the generating parameters: a rerun with others is refused (issue 25)
            "testing/images/test_001.tif",
            "testing/reference.csv",
            "training/labels.csv",
            "training/lesion_annotations/tumor_001.xml",
            "training/lesion_annotations/tumor_002.xml",
            "training/normal/normal_001.tif",
            "training/normal/normal_002.tif",
            "training/tumor/tumor_001.tif",
            "training/tumor/tumor_002.tif",
        ]
        or "testing/lesion_annotations/test_001.xml" in files
    )
    with open(cohort / "training" / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == ["normal_001", "tumor_001", "normal_002", "tumor_002"]
    assert [r["label"] for r in rows] == ["Normal", "Tumor", "Normal", "Tumor"]
    with open(cohort / "testing" / "reference.csv") as f:
        reference = list(csv.DictReader(f))
    assert [r["image"] for r in reference] == ["test_001"] and reference[0]["label"] in ("Tumor", "Normal")


def test_cohort_is_deterministic(cohort: Path, tmp_path: Path) -> None:
    write_cohort(tmp_path, slides=2, seed=3, size=SIZE)
    for name in (
        "training/normal/normal_001.tif",
        "training/tumor/tumor_001.tif",
        "training/lesion_annotations/tumor_001.xml",
    ):
        assert digest(tmp_path / name) == digest(cohort / name)
    other = plan_cohort(tmp_path, slides=2, seed=4, size=SIZE)[1].spec
    assert other != plan_cohort(tmp_path, slides=2, seed=3, size=SIZE)[1].spec


@pytest.mark.parametrize("name", ["training/normal/normal_001.tif", "training/tumor/tumor_001.tif"])
def test_opens_in_openslide_itself(cohort: Path, name: str) -> None:
    slide = openslide.OpenSlide(str(cohort / name))
    try:
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.243)
        assert slide.level_count >= 2
        assert slide.dimensions[0] == SIZE
        assert slide.properties[openslide.PROPERTY_NAME_VENDOR] in ("aperio", "generic-tiff")
    finally:
        slide.close()


def test_both_flavours_written(cohort: Path) -> None:
    vendors = set()
    for path in cohort.rglob("*.tif"):
        with open_slide(path) as s:
            vendors.add(s.vendor)
    assert vendors == {"aperio", "generic-tiff"}


def test_annotations_match_tumor_texture(cohort: Path) -> None:
    ann = read_asap_xml(cohort / "training" / "lesion_annotations" / "tumor_001.xml")
    assert ann.lesions and not ann.exclusions
    with open_slide(cohort / "training" / "tumor" / "tumor_001.tif") as s:
        pixels = s.read_region((0, 0), 0, s.dimensions).astype(float).mean(axis=2)
        lesion = rasterize(ann, s.dimensions, 1.0)
    assert lesion.any()
    core = ndimage.binary_erosion(lesion, iterations=10)
    normal = ndimage.binary_erosion((pixels < 215) & ~ndimage.binary_dilation(lesion, iterations=10), iterations=10)
    assert core.any() and normal.any()
    # colour-matched (a mean-colour classifier must not find the tumour) but with much larger nuclei
    assert abs(pixels[core].mean() - pixels[normal].mean()) < 15
    assert _nucleus_area(pixels, core) > 2.5 * _nucleus_area(pixels, normal)


def _nucleus_area(grey: np.ndarray, region: np.ndarray) -> float:
    """Mean area (px) of the dark blobs (nuclei or their rims) inside ``region``."""
    labels, _ = ndimage.label(region & (grey < np.median(grey[region]) - 15))
    sizes = np.bincount(labels.ravel())[1:]
    return float(sizes[sizes >= 5].mean())


def test_lesion_size_mix() -> None:
    specs = [make_spec(0, i, 100_000, 80_000, tumor=True) for i in range(40)]
    kinds = [s.metastasis for s in specs]
    assert 0.25 < kinds.count("micro") / len(kinds) < 0.75
    assert kinds.count("macro") + kinds.count("micro") == len(kinds)
    assert make_spec(0, 0, 4096, 4096, tumor=False).lesions == []


def test_render_is_a_function_of_position() -> None:
    spec = make_spec(1, 1, 4096, 4096, tumor=True)
    whole = render(spec, 1000, 1000, 512, 512)
    np.testing.assert_array_equal(whole[256:, 256:], render(spec, 1256, 1256, 256, 256))


def test_write_is_atomic(tmp_path: Path) -> None:
    spec = make_spec(0, 0, 512, 512, tumor=False)
    with pytest.raises(ValueError, match="flavour"):
        write_slide(spec, tmp_path / "x.tif", "png")
    path = write_slide(spec, tmp_path / "x.tif", "svs")
    assert path.exists() and not list(tmp_path.glob("*.tmp"))
