"""Real-tissue cohorts mosaicked from labelled patches (``synth --from-patches``): layout, CSVs, patch cells,
lesion classes and annotations, determinism, resume, patch-disjoint cohorts, CLI errors, real PCam data."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.path import Path as MplPath
from PIL import Image

from wsi_mamba.cli import main
from wsi_mamba.data.dihedral import dihedral
from wsi_mamba.data.patches import open_patches
from wsi_mamba.slide import open_slide
from wsi_mamba.slide.annotations import rasterize, read_asap_xml
from wsi_mamba.slide.tiling import make_tile_grid
from wsi_mamba.synth.appearance import APPEARANCE_BINS, DEFAULT_COMPOSITION, mean_optical_density, normal_tissue
from wsi_mamba.synth.from_patches import MANIFEST, write_patch_cohort
from wsi_mamba.synth.geometry import clean_cells, diameter_um, outline
from wsi_mamba.synth.lesions import lesion_class
from wsi_mamba.synth.patch_plan import CohortSpec, plan_patch_cohort
from wsi_mamba.workflows.inputs import read_labels

PCAM = Path(__file__).resolve().parents[2] / "shared" / "data" / "pcam"
PX, MPP = 96, 0.972
SMALL = CohortSpec(slides=4, seed=5, max_cells=16, stain=0.0, compression="lossless", classes=("micro", "itc"))


def write_patches(root: Path, seed: int, normal: int = 24, tumor: int = 16) -> Path:
    """Random H&E-coloured textures (every patch and every transform of it distinct) as PNGs in 0/ and 1/."""
    rng = np.random.default_rng(seed)
    for label, count, base in (("0", normal, (225, 150, 190)), ("1", tumor, (130, 70, 165))):
        (root / label).mkdir(parents=True)
        for i in range(count):
            colour = np.asarray(base) + rng.integers(-25, 26, 3)
            texture = rng.normal(0, 18, (PX, PX, 3)) + np.linspace(-12, 12, PX)[:, None, None]
            pixels = np.clip(colour + texture, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / label / f"p{seed}_{i:03d}.png")
    return root


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def manifest(out: Path) -> list[list[str]]:
    lines = (out / MANIFEST).read_text().splitlines()
    assert lines[0].startswith("# patches of ")
    return [line.split("\t") for line in lines[1:]]


@pytest.fixture(scope="module")
def patches_a(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_patches(tmp_path_factory.mktemp("patches_a"), seed=1)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory, patches_a: Path) -> tuple[Path, list]:
    out = tmp_path_factory.mktemp("cohort")
    plan = write_patch_cohort(out, patches_a, SMALL)
    return out, plan


def test_layout_and_csvs(cohort: tuple[Path, list]) -> None:
    out, plan = cohort
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    slides = [f for f in files if f.endswith(".tif")]
    assert slides == [
        "testing/images/test_001.tif",
        "training/normal/normal_001.tif",
        "training/normal/normal_002.tif",
        "training/tumor/tumor_001.tif",
    ]
    assert {"training/labels.csv", "testing/reference.csv", MANIFEST} <= set(files)
    assert "training/lesion_annotations/tumor_001.xml" in files and "testing/lesion_annotations/test_001.xml" in files
    assert not [f for f in files if ".tmp" in f]
    rows = read_rows(out / "training" / "labels.csv") + read_rows(out / "testing" / "reference.csv")
    assert [r["image"] for r in rows] == ["normal_001", "tumor_001", "normal_002", "test_001"]
    for row, item in zip(rows, plan, strict=True):
        assert row["label"] == ("Tumor" if row["lesion_class"] != "none" else "Normal")
        assert row["lesion_class"] == item.spec.metastasis and row["metastasis"] == row["lesion_class"].capitalize()
        assert lesion_class(float(row["largest_lesion_um"])) == row["lesion_class"] or row["lesion_class"] == "none"
        assert float(row["mpp"]) == MPP and int(row["width"]) % PX == 0 and int(row["height"]) % PX == 0
        assert int(row["tissue_tiles"]) == len(item.spec.cells) and int(row["tumor_tiles"]) == item.spec.tumor.sum()
    # micro and ITC alternate over each split's tumour slides (a balanced, seeded mix)
    assert {rows[1]["lesion_class"], rows[3]["lesion_class"]} <= {"micro", "itc"}
    # the existing label readers accept both CSVs
    assert read_labels(out / "training" / "labels.csv") == {"normal_001": 0, "tumor_001": 1, "normal_002": 0}
    assert read_labels(out / "testing" / "reference.csv") == {"test_001": 1}


def test_tile_grid_lands_on_patch_cells(cohort: tuple[Path, list], patches_a: Path) -> None:
    _, plan = cohort
    source = open_patches(patches_a)
    for item in plan:
        spec = item.spec
        with open_slide(item.path) as slide:
            assert slide.mpp == pytest.approx(MPP, rel=1e-6)
            assert slide.dimensions == (spec.width, spec.height)
            grid = make_tile_grid(slide, PX, MPP)
            assert (grid.level, grid.read_px, grid.size0) == (0, PX, PX)
            kept = set(zip(grid.rows.tolist(), grid.cols.tolist(), strict=True))
            cells = {(int(r), int(c)) for r, c in spec.cells}
            interior = {(int(r), int(c)) for r, c in spec.cells[spec.interior]}
            assert interior <= kept <= cells  # tissue tiles are the section's cells
            for i in np.flatnonzero(spec.interior)[:: max(1, spec.interior.sum() // 40)]:
                r, c = spec.cells[i]
                tile = slide.read_region((int(c) * PX, int(r) * PX), 0, (PX, PX))
                expected = dihedral(source.read_one(int(spec.patches[i])), int(spec.transforms[i]))
                np.testing.assert_array_equal(tile, expected)
            # background around the section is light glass
            corner = slide.read_region((0, 0), 0, (PX, PX)).astype(float)
            assert corner.mean() > 215 and np.ptp(corner.mean(axis=(0, 1))) < 10
        labels = source.labels[spec.patches]
        assert (labels[spec.tumor] == 1).all() and (labels[~spec.tumor] == 0).all()


def test_lesions_inside_tissue_and_classes(cohort: tuple[Path, list]) -> None:
    _, plan = cohort
    for item in plan:
        spec = item.spec
        xml = item.path.parents[1] / "lesion_annotations" / f"{item.name}.xml"
        if not spec.lesions:
            assert not xml.exists()
            continue
        annotations = read_asap_xml(xml)
        assert len(annotations.lesions) == len(spec.lesions)
        rows, cols = spec.grid_shape
        interior = np.zeros((rows, cols), bool)
        interior[spec.cells[spec.interior, 0], spec.cells[spec.interior, 1]] = True
        tumour = np.zeros((rows, cols), bool)
        tumour[spec.cells[spec.tumor, 0], spec.cells[spec.tumor, 1]] = True
        assert not (tumour & ~interior).any()  # lesions lie on whole patches inside the section
        r, c = np.mgrid[:rows, :cols]
        centres = np.stack([(c.ravel() + 0.5) * PX, (r.ravel() + 0.5) * PX], axis=1)
        inside = np.zeros(rows * cols, bool)
        for polygon in annotations.lesions:
            inside |= MplPath(polygon.points).contains_points(centres)
        np.testing.assert_array_equal(inside.reshape(rows, cols), tumour)  # one polygon around each lesion's cells
        mask = rasterize(annotations, (spec.width, spec.height), PX / 8)  # 8 samples per cell side
        blocks = mask[: rows * 8, : cols * 8].reshape(rows, 8, cols, 8).mean(axis=(1, 3))
        assert (blocks[tumour] > 0.8).all() and (blocks[~tumour] <= 0.25).all()  # edges may touch a neighbour
        diameters = []
        for polygon in annotations.lesions:
            d = polygon.points[:, None] - polygon.points[None]
            diameters.append(float(np.sqrt((d**2).sum(-1)).max()) * MPP)
        assert lesion_class(max(diameters)) == spec.metastasis
        for lesion, diameter in zip(spec.lesions, diameters, strict=True):
            assert diameter == pytest.approx(lesion.diameter_um, abs=0.1)
            if lesion.kind == "itc":
                assert len(lesion.cells) in (1, 2) and diameter < 200


def test_deterministic_per_seed_and_resumable(cohort: tuple[Path, list], patches_a: Path, tmp_path: Path) -> None:
    out, plan = cohort
    again = tmp_path / "again"
    write_patch_cohort(again, patches_a, SMALL)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for name in files:
        assert digest(out / name) == digest(again / name), name
    # resume: a deleted slide comes back identical, the others are kept as they are
    victim = again / "training" / "tumor" / "tumor_001.tif"
    victim.unlink()
    kept = (again / "training" / "normal" / "normal_001.tif").stat().st_mtime_ns
    ticks: list[int] = []
    write_patch_cohort(again, patches_a, SMALL, tick=lambda: ticks.append(1))
    assert len(ticks) == 4 and digest(victim) == digest(out / "training" / "tumor" / "tumor_001.tif")
    assert (again / "training" / "normal" / "normal_001.tif").stat().st_mtime_ns == kept
    other_spec = CohortSpec(4, seed=6, max_cells=16, classes=("itc",))
    other = plan_patch_cohort(tmp_path / "x", open_patches(patches_a), other_spec)
    assert all(not np.array_equal(a.spec.patches, b.spec.patches) for a, b in zip(plan, other, strict=True))


def test_cohorts_from_different_folders_share_no_patch(
    cohort: tuple[Path, list], tmp_path_factory: pytest.TempPathFactory, patches_a: Path
) -> None:
    out_a, _ = cohort
    patches_b = write_patches(tmp_path_factory.mktemp("patches_b"), seed=2)
    out_b = tmp_path_factory.mktemp("cohort_b")
    write_patch_cohort(out_b, patches_b, CohortSpec(slides=2, seed=5, max_cells=12, classes=("itc",)))
    used_a, used_b = manifest(out_a), manifest(out_b)
    assert {r[0] for r in used_a}.isdisjoint(r[0] for r in used_b)
    assert {r[2] for r in used_a}.isdisjoint(r[2] for r in used_b)
    for root, used in ((patches_a, used_a), (patches_b, used_b)):
        for patch_id, label, sha in used:
            pixels = np.asarray(Image.open(root / patch_id).convert("RGB"))
            assert patch_id.split("/")[0] == label and hashlib.sha1(pixels.tobytes()).hexdigest() == sha


def test_stain_and_jpeg(patches_a: Path, tmp_path: Path) -> None:
    """Default settings: JPEG tiles and a per-slide stain shift; tiles stay close to a transformed patch."""
    spec = CohortSpec(slides=2, seed=9, max_cells=12, test_fraction=0, classes=("itc",))
    plan = write_patch_cohort(tmp_path, patches_a, spec)
    source = open_patches(patches_a)
    shifts = []
    for item in plan:
        spec = item.spec
        assert spec.stain_alpha != (1.0, 1.0, 1.0)
        i = int(np.flatnonzero(spec.interior)[0])
        r, c = spec.cells[i]
        with open_slide(item.path) as slide:
            tile = slide.read_region((int(c) * PX, int(r) * PX), 0, (PX, PX)).astype(float)
        patch = source.read_one(int(spec.patches[i]))
        candidates = [dihedral(patch, k).astype(float) for k in range(8)]
        errors = [np.abs((tile - tile.mean((0, 1))) - (p - p.mean((0, 1)))).mean() for p in candidates]
        assert int(np.argmin(errors)) == spec.transforms[i]  # the same patch, same transform ...
        shifts.append(tile.mean((0, 1)) - candidates[int(spec.transforms[i])].mean((0, 1)))
    assert np.abs(shifts[0] - shifts[1]).max() > 1  # ... with a different stain per slide


def test_lesion_size_classes_balanced() -> None:
    """Planning only (no pixels): macro slides hold a > 2 mm lesion, micro 0.2–2 mm, ITC one or two patches."""
    source = _FakeSource(normal=50, tumor=50)
    plan = plan_patch_cohort("unused", source, CohortSpec(slides=12, seed=3, max_cells=40, test_fraction=0.5))  # type: ignore[arg-type]
    for split in ("training", "testing"):
        kinds = [p.spec.metastasis for p in plan if p.split == split and p.spec.lesions]
        assert sorted(kinds) == ["itc", "macro", "micro"]
    for item in plan:
        spec = item.spec
        assert 29 <= spec.width // PX <= 40 and spec.height < spec.width
        assert 1 <= len(spec.lesions) <= 3 or item.spec.metastasis == "none"
        largest = max((lesion.diameter_um for lesion in spec.lesions), default=0)
        assert {
            "macro": largest >= 2000,
            "micro": 200 <= largest < 2000,
            "itc": 0 < largest < 200,
            "none": largest == 0,
        }[spec.metastasis]
        assert 150 <= len(spec.cells) <= 1500


def test_lesionoutline() -> None:
    """A lesion is one simple polygon around its cells: corner-only neighbours dropped, holes filled, convex
    corners cut by a quarter cell (concave ones kept)."""
    mask = np.array([[1, 0, 0, 0], [0, 1, 1, 1], [0, 1, 0, 1], [0, 1, 1, 1]], bool)
    cleaned = clean_cells(mask)
    expected = np.zeros((4, 4), bool)
    expected[1:, 1:] = True
    np.testing.assert_array_equal(cleaned, expected)
    r, c = np.mgrid[:4, :4]
    centres = np.stack([(c.ravel() + 0.5) * PX, (r.ravel() + 0.5) * PX], axis=1)
    for cells in (cleaned, np.array([[0, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]], bool)):
        polygon = outline(np.argwhere(cells), PX)
        np.testing.assert_array_equal(MplPath(polygon).contains_points(centres).reshape(4, 4), cells)
    assert len(outline(np.argwhere(cleaned), PX)) == 8  # a square: 4 cut corners
    assert len(outline(np.array([[1, 1], [2, 1], [2, 2]]), PX)) == 11  # an L: 5 cut corners, 1 concave
    assert (
        diameter_um(outline(np.array([[0, 0], [0, 1]]), PX), MPP)
        < 200
        <= diameter_um(outline(np.array([[0, 0], [0, 1], [1, 0], [1, 1]]), PX), MPP)
    )


class _FakeSource:
    """Labels and geometry only: enough to plan a cohort."""

    def __init__(self, normal: int, tumor: int) -> None:
        from wsi_mamba.data.patches import PCAM_GEOMETRY

        self.labels = np.array([0] * normal + [1] * tumor, np.int64)
        self.geometry = PCAM_GEOMETRY
        self.description = "fake"

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Flat patches whose grey level is the index (darker with higher index)."""
        grey = (250 - np.asarray(indices) * 200 // max(1, len(self.labels))).astype(np.uint8)
        return np.broadcast_to(grey[:, None, None, None], (len(grey), 4, 4, 3)).copy()


def test_cli_from_patches(patches_a: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "c"
    code = main(["synth", str(out), "--from-patches", str(patches_a), "--slides", "1", "--size", "1152"])
    captured = capsys.readouterr()
    assert code == 0 and "wrote 1 slides of real tissue" in captured.out
    assert (out / "training" / "normal" / "normal_001.tif").exists() and (out / MANIFEST).exists()
    with open_slide(out / "training" / "normal" / "normal_001.tif") as slide:
        assert max(slide.dimensions) <= 1152 and slide.mpp == pytest.approx(MPP)
    # a tumour slide may be a macro-metastasis (> 2 mm): too small slides are refused up front
    code = main(["synth", str(tmp_path / "small"), "--from-patches", str(patches_a), "--slides", "2", "--size", "1152"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "cannot hold a macro-metastasis" in err[0]

    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    Image.fromarray(np.zeros((PX, PX, 3), np.uint8)).save(unlabelled / "a.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    only_normal = tmp_path / "only_normal"
    (only_normal / "0").mkdir(parents=True)
    Image.fromarray(np.zeros((PX, PX, 3), np.uint8)).save(only_normal / "0" / "a.png")
    for folder, words in ((unlabelled, "no labelled patches"), (empty, "no images"), (only_normal, "no tumour")):
        code = main(["synth", str(tmp_path / "bad"), "--from-patches", str(folder), "--slides", "2"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
    assert not (tmp_path / "bad").exists() and not (tmp_path / "small").exists()


@pytest.mark.skipif(not (PCAM / "valid").is_dir(), reason=f"real PCam patches not found at {PCAM}")
def test_real_pcam_valid_slide(tmp_path: Path) -> None:
    """One small tumour slide from PCam's valid split: real patches on the cells, manifest ids in valid/."""
    plan = write_patch_cohort(
        tmp_path,
        PCAM / "valid",
        CohortSpec(slides=2, seed=0, test_fraction=0, max_cells=14, stain=0, compression="lossless", classes=["micro"]),
    )
    source = open_patches(PCAM / "valid")
    spec = plan[1].spec
    assert spec.metastasis == "micro" and spec.mpp == source.geometry.mpp
    i = int(np.flatnonzero(spec.interior & spec.tumor)[0])
    r, c = spec.cells[i]
    with open_slide(plan[1].path) as slide:
        tile = slide.read_region((int(c) * PX, int(r) * PX), 0, (PX, PX))
    expected = dihedral(source.read_one(int(spec.patches[i])), int(spec.transforms[i]))
    np.testing.assert_array_equal(tile, expected)
    for patch_id, label, _ in manifest(tmp_path):
        assert (PCAM / "valid" / patch_id).is_file() and patch_id.split("/")[0] == label


def _mean_density(spec, source: _FakeSource) -> float:
    normal = spec.patches[~spec.tumor]
    return float(mean_optical_density(source.read(normal)).mean())


def test_tissue_composition_varies_between_slides() -> None:
    """Each slide draws its normal tissue from its own mix of appearance bins, so normal slides differ in mean
    colour as real nodes do; composition 0 draws uniformly (every slide's mean nearly the same)."""
    source = _FakeSource(normal=400, tumor=50)
    spread = {}
    for composition in (0.0, 0.5):
        plan = plan_patch_cohort(
            "unused",
            source,  # type: ignore[arg-type]
            CohortSpec(slides=8, seed=3, max_cells=30, test_fraction=0, composition=composition, classes=("itc",)),
        )
        spread[composition] = np.std([_mean_density(item.spec, source) for item in plan])
        mixes = [item.spec.tissue_mix for item in plan]
        assert all(len(m) == (1 if composition == 0 else APPEARANCE_BINS) for m in mixes)
        assert all(abs(sum(m) - 1) < 1e-3 for m in mixes)
    assert spread[0.5] > 5 * spread[0.0]
    again_spec = CohortSpec(8, 3, max_cells=30, test_fraction=0, composition=0.5, classes=("itc",))
    again = plan_patch_cohort("unused", source, again_spec)  # type: ignore[arg-type]
    assert [i.spec.tissue_mix for i in again] == mixes and all(
        np.array_equal(a.spec.patches, b.spec.patches) for a, b in zip(again, plan, strict=True)
    )


class _ShuffledGreySource(_FakeSource):
    """Flat patches whose grey levels are a seeded shuffle of 80 distinct levels (index order says nothing)."""

    def __init__(self) -> None:
        super().__init__(normal=80, tumor=0)
        self.grey = np.random.default_rng(7).permutation(np.arange(80) * 3 + 10).astype(np.uint8)

    def read(self, indices: np.ndarray) -> np.ndarray:
        grey = self.grey[np.asarray(indices)]
        return np.broadcast_to(grey[:, None, None, None], (len(grey), 4, 4, 3)).copy()


def test_normal_tissue_bins_by_density() -> None:
    """Bins hold the patches by brightness, lightest (least optical density) first: with 80 patches in 8 bins,
    bin k is exactly the patches ranked 10k…10k+9 by grey level, brightest first."""
    source = _ShuffledGreySource()
    tissue = normal_tissue(source, np.arange(80), composition=1.0, seed=0)  # type: ignore[arg-type]
    by_brightness = np.argsort(-source.grey.astype(int))  # independent of the optical-density arithmetic
    expected = [sorted(by_brightness[10 * k : 10 * k + 10].tolist()) for k in range(8)]
    assert APPEARANCE_BINS == 8 and [sorted(b.tolist()) for b in tissue.bins] == expected
    assert not np.array_equal(expected[0], np.arange(10))  # the index order alone would fail this
    assert normal_tissue(source, np.arange(80), composition=0.0, seed=0).bins[0].tolist() == list(range(80))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="composition must be"):
        normal_tissue(source, np.arange(80), composition=-1.0, seed=0)  # type: ignore[arg-type]


def test_cli_composition_default_and_bad_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from wsi_mamba.cli import build_parser

    args = build_parser().parse_args(["synth", "out", "--from-patches", "p"])
    assert args.composition == DEFAULT_COMPOSITION and args.stain == 1.0
    root = write_patches(tmp_path / "p", seed=1)
    for flag in ("--composition", "--stain"):
        code = main(["synth", str(tmp_path / "o"), "--from-patches", str(root), "--slides", "1", flag, "-1"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code != 0 and len(err) == 1 and "must be ≥ 0" in err[0]
        assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("compression", "png", "compression must be one of"),
        ("flavour", "ndpi", "flavour must be mixed, svs or tiff"),
        ("classes", ("macro", "huge"), "classes must be a non-empty subset"),
        ("classes", (), "classes must be a non-empty subset"),
        ("stain", -0.5, "stain must be ≥ 0"),
    ],
)
def test_cohort_spec_refuses_bad_values(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CohortSpec(**{field: value})  # type: ignore[arg-type]


def test_a_plan_is_written_with_its_own_spec(patches_a: Path, tmp_path: Path) -> None:
    """The plan carries the spec it was made from: synth.json records that spec, and the tiles use its
    compression (lossless: each interior tile is exactly its transformed patch)."""
    from wsi_mamba.synth.from_patches import write_planned_cohort

    spec = CohortSpec(slides=1, seed=4, max_cells=14, stain=0, compression="lossless", classes=("itc",))
    source = open_patches(patches_a)
    plan = write_planned_cohort(plan_patch_cohort(tmp_path, source, spec))
    recorded = json.loads((tmp_path / "synth.json").read_text())
    assert {k: recorded[k] for k in ("seed", "max_cells", "compression", "classes")} == {
        "seed": 4, "max_cells": 14, "compression": "lossless", "classes": ["itc"]
    }
    (item,) = plan
    i = int(np.flatnonzero(item.spec.interior)[0])
    r, c = item.spec.cells[i]
    with open_slide(item.path) as slide:
        tile = slide.read_region((int(c) * PX, int(r) * PX), 0, (PX, PX))
    patch = source.read_one(int(item.spec.patches[i]))
    np.testing.assert_array_equal(tile, dihedral(patch, int(item.spec.transforms[i])))
