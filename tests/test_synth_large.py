"""Large real-tissue slides (issue 22, item 1): several sections on CAMELYON16-shaped grids, level 0 upsampled
to 20x / 40x from 10x patches, and slides drawn tile by tile in bounded memory."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from workflow_fixtures import write_smooth_patches

from wsi_mamba.cli import main
from wsi_mamba.data.dihedral import dihedral
from wsi_mamba.data.patches import open_patches
from wsi_mamba.slide import open_slide
from wsi_mamba.slide.tiling import make_tile_grid
from wsi_mamba.synth.geometry import MULTI_SECTION_CELLS
from wsi_mamba.synth.patch_plan import CohortSpec, plan_patch_cohort, plan_slide
from wsi_mamba.synth.patch_tiles import PatchTileRenderer
from wsi_mamba.synth.writer import write_slide

PX, MPP = 96, 0.972


@pytest.fixture(scope="module")
def patches(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_smooth_patches(tmp_path_factory.mktemp("patches"), 20, 12, seed=7, px=PX)


def test_large_grids_hold_several_sections_and_small_ones_do_not() -> None:
    pool = np.arange(100)
    large = plan_slide(3, 0, None, pool, pool, PX, MPP, max_cells=MULTI_SECTION_CELLS + 20, stain=0)
    rows, cols = large.grid_shape
    assert cols >= MULTI_SECTION_CELLS and 0.38 <= rows / cols <= 0.57  # CAMELYON16-shaped
    assert len(large.ovals) >= 2
    tissue = np.zeros((rows, cols), bool)
    tissue[large.cells[:, 0], large.cells[:, 1]] = True
    assert ndimage.label(tissue)[1] >= 2  # sections apart, with glass between them
    assert tissue.mean() > 0.35
    small = plan_slide(3, 0, None, pool, pool, PX, MPP, max_cells=60, stain=0)
    assert len(small.ovals) <= 2 and small.upsample == 1 and small.patch_px == 0


def test_fixed_shape_and_lesions_on_a_large_grid() -> None:
    pool = np.arange(100)
    spec = plan_slide(1, 1, "micro", pool, pool, PX, MPP, stain=0, upsample=2, shape=(80, 170))
    assert spec.grid_shape == (80, 170) and (spec.width, spec.height) == (170 * 192, 80 * 192)
    assert spec.metastasis == "micro" and spec.tumor.any()
    assert spec.mpp == pytest.approx(MPP / 2) and spec.px == 192 and spec.upsample == 2


@pytest.mark.parametrize(("upsample", "flavour"), [(2, "tiff"), (4, "svs")])
def test_upsampled_level0_reads_back_as_the_patches(patches: Path, tmp_path: Path, upsample: int, flavour: str) -> None:
    spec = CohortSpec(
        slides=1,
        seed=2,
        test_fraction=0,
        max_cells=12,
        stain=0,
        compression="lossless",
        flavour=flavour,
        upsample=upsample,
    )
    plan = plan_patch_cohort(tmp_path / "cohort", open_patches(patches), spec)
    item = plan[0]
    assert item.spec.upsample == upsample and item.spec.mpp == pytest.approx(MPP / upsample)
    source = open_patches(patches)
    renderer = PatchTileRenderer(item.spec, source, 4 if flavour == "svs" else 2)
    item.path.parent.mkdir(parents=True)
    write_slide(item.spec, item.path, flavour, renderer=renderer, compression="lossless")
    i = int(np.flatnonzero(item.spec.interior)[len(item.spec.cells) // 3])
    r, c = (int(v) for v in item.spec.cells[i])
    expected = dihedral(source.read_one(int(item.spec.patches[i])), int(item.spec.transforms[i])).astype(float)
    cell = PX * upsample
    with open_slide(item.path) as slide:
        assert slide.dimensions == (item.spec.width, item.spec.height)
        assert slide.mpp == pytest.approx(MPP / upsample, rel=1e-3)
        if flavour == "svs":
            assert slide.objective_power == pytest.approx(10 * upsample)
        level0 = slide.read_region((c * cell, r * cell), 0, (cell, cell)).astype(float)
        assert level0.shape == (cell, cell, 3)
        reduced = level0.reshape(PX, upsample, PX, upsample, 3).mean(axis=(1, 3))
        assert np.abs(reduced - expected).mean() < 3.0  # upsampled (bilinear), not blocks of copies
        assert np.abs(np.diff(level0, axis=0)).mean() < np.abs(np.diff(expected, axis=0)).mean()
        grid = make_tile_grid(slide, PX, MPP, 0.5)
        assert grid.size0 == pytest.approx(cell)
        k = int(np.flatnonzero((grid.rows == r) & (grid.cols == c))[0])
        assert (grid.x[k], grid.y[k]) == (c * cell, r * cell)  # the model's grid lands on the cells


def test_tile_renderer_memory_is_far_below_the_level(patches: Path, tmp_path: Path) -> None:
    """An 8064 px 20x slide (level 0: 74 MB of RGB) written while tracemalloc watches: the peak stays a
    small fraction of one level, so no level-sized array is ever allocated."""
    pool = np.arange(20)
    source = open_patches(patches)
    spec = plan_slide(4, 0, None, pool, pool, PX, MPP, stain=0.5, upsample=2, shape=(16, 42))
    level_bytes = spec.width * spec.height * 3
    assert spec.width >= 8000 and level_bytes > 70e6
    renderer = PatchTileRenderer(spec, source, 2, in_memory_pixels=1_000_000)
    tracemalloc.start()
    try:
        write_slide(spec, tmp_path / "big.tif", "tiff", renderer=renderer)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < level_bytes / 4, f"peak {peak / 1e6:.0f} MB against a {level_bytes / 1e6:.0f} MB level"
    with open_slide(tmp_path / "big.tif") as slide:
        assert slide.dimensions == (spec.width, spec.height) and slide.level_count >= 5
        thumb = np.asarray(slide.get_thumbnail((256, 256)))
        assert (thumb.std(axis=(0, 1)) > 5).all()  # tissue drawn on the coarse levels, not blank


def test_cli_magnification(patches: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "c20"
    argv = ["synth", str(out), "--from-patches", str(patches), "--slides", "1", "--test-fraction", "0"]
    assert main([*argv, "--size", "2304", "--magnification", "20", "--flavour", "tiff"]) == 0
    with open_slide(out / "training" / "normal" / "normal_001.tif") as slide:
        assert slide.mpp == pytest.approx(MPP / 2, rel=1e-3) and max(slide.dimensions) <= 2304
    capsys.readouterr()
    assert main([*argv, "--magnification", "15"]) == 2
    assert "--magnification 15: the patches are 10x; use 10, 20, 40" in capsys.readouterr().err
    assert main([*argv, "--size", "300000"]) == 1
