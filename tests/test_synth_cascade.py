"""Coarser pyramid levels averaged from the level above while it is written (``pyramid="downsample"``, issue 26
item 2): each level equals the area average of the one above (exactly when lossless, within JPEG noise
otherwise), the file reads as before through both backends, and memory stays far below one level."""

from __future__ import annotations

import itertools
import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile
from workflow_fixtures import write_smooth_patches

from wsi_mamba.data.dihedral import dihedral
from wsi_mamba.data.patches import open_patches
from wsi_mamba.data.stain import hed_scale_shift
from wsi_mamba.slide import open_slide
from wsi_mamba.synth.cascade import LevelCascade, block_mean
from wsi_mamba.synth.from_patches import write_patch_slide
from wsi_mamba.synth.patch_plan import PatchSlideSpec
from wsi_mamba.synth.patch_tiles import PatchTileRenderer
from wsi_mamba.synth.procedural import make_spec
from wsi_mamba.synth.writer import write_slide

PX = 96


def _levels(path: Path) -> list[np.ndarray]:
    with tifffile.TiffFile(path) as tif:
        return [level.asarray() for level in tif.series[0].levels]


def _assert_block_means(levels: list[np.ndarray], factor: int, tolerance: float) -> None:
    """Every level against the ``factor`` × ``factor`` average of the one above (mean absolute difference)."""
    assert len(levels) >= 3
    for above, level in itertools.pairwise(levels):
        h, w = level.shape[:2]
        assert (h, w) == (above.shape[0] // factor, above.shape[1] // factor)
        expected = block_mean(above[: h * factor, : w * factor], factor).astype(int)
        assert np.abs(level.astype(int) - expected).mean() <= tolerance


@pytest.mark.parametrize(("factor", "width", "height"), [(2, 1100, 700), (4, 2100, 300)])
def test_cascade_levels_are_block_means(factor: int, width: int, height: int) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    sizes = [(width, height)]
    while max(sizes[-1]) > 64:
        sizes.append((sizes[-1][0] // factor, sizes[-1][1] // factor))
    tile = 64
    cascade = LevelCascade(sizes, factor, tile, lambda t: t.tobytes(), hold_pixels=20_000)
    padded = np.zeros((math.ceil(height / tile) * tile, math.ceil(width / tile) * tile, 3), np.uint8)
    padded[:height, :width] = image
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            cascade.add(0, padded[y : y + tile, x : x + tile])
    levels = [image]
    for k, (w, h) in enumerate(sizes[1:], start=1):
        rows, cols = math.ceil(h / tile), math.ceil(w / tile)
        tiles = [np.frombuffer(b, np.uint8).reshape(tile, tile, 3) for b in cascade.tiles(k)]
        assert len(tiles) == rows * cols
        whole = np.concatenate([np.concatenate(tiles[r * cols : (r + 1) * cols], axis=1) for r in range(rows)])
        levels.append(whole[:h, :w])
    _assert_block_means(levels, factor, 0.0)
    held = cascade.held_level
    assert held is not None and sizes[held][0] * sizes[held][1] <= 20_000
    assert cascade.held is not None and np.array_equal(cascade.held, levels[held])
    cascade.close()


@pytest.mark.parametrize("flavour", ["tiff", "svs"])
def test_downsampled_pyramid_of_a_procedural_slide(tmp_path: Path, flavour: str) -> None:
    spec = make_spec(0, 1, 2300, 1500, tumor=True)
    factor = 4 if flavour == "svs" else 2
    lossless = write_slide(spec, tmp_path / f"l.{flavour}", flavour, compression="lossless", pyramid="downsample")
    _assert_block_means(_levels(lossless), factor, 0.0)
    jpeg = write_slide(spec, tmp_path / f"j.{flavour}", flavour, pyramid="downsample")
    drawn = write_slide(spec, tmp_path / f"d.{flavour}", flavour)
    levels, drawn_levels = _levels(jpeg), _levels(drawn)
    _assert_block_means(levels, factor, 3.0)  # JPEG noise only
    assert np.array_equal(levels[0], drawn_levels[0])
    assert [x.shape for x in levels] == [x.shape for x in drawn_levels]
    with tifffile.TiffFile(jpeg) as a, tifffile.TiffFile(drawn) as b:
        assert len(a.pages) == len(b.pages)
        for page_a, page_b in zip(a.pages, b.pages, strict=True):
            assert page_a.shape == page_b.shape and page_a.compression == page_b.compression
    with pytest.raises(ValueError, match="pyramid must be one of"):
        write_slide(spec, tmp_path / "x.tif", flavour, pyramid="nearest")


@pytest.fixture(scope="module")
def patches(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_smooth_patches(tmp_path_factory.mktemp("patches"), 16, 8, seed=3, px=PX)


@pytest.fixture(scope="module")
def patch_slide(patches: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[PatchSlideSpec, Path, int]:
    """A 10x real-tissue slide of 66 megapixels (level 0: 199 MB of RGB) written tile by tile while tracemalloc
    watches: its plan, path and peak traced bytes."""
    path = tmp_path_factory.mktemp("slide") / "s.tif"
    tracemalloc.start()
    try:
        spec = write_patch_slide(path, patches, shape=(60, 120), lesion="micro", seed=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return spec, path, peak


def test_large_patch_slide_levels_averaged(patch_slide: tuple[PatchSlideSpec, Path, int]) -> None:
    """Level 0 drawn, every coarser level the average of the one above, and no level-sized array allocated."""
    spec, path, peak = patch_slide
    level_bytes = spec.width * spec.height * 3
    assert spec.width == 120 * PX and level_bytes > 190e6
    assert peak < level_bytes / 4, f"peak {peak / 1e6:.0f} MB against a {level_bytes / 1e6:.0f} MB level"
    assert path.with_suffix(".xml").exists()
    x, y, side = 4096, 2048, 2048  # a window over the tissue, aligned on every level's 2 x 2 blocks
    with open_slide(path) as slide:
        crops = [
            slide.read_region((x, y), k, (side >> k, side >> k)) for k in range(slide.level_count) if side >> k >= 16
        ]
    _assert_block_means(crops, 2, 8.0)  # JPEG noise (4:2:0 chroma), larger on all-tissue crops


@pytest.mark.parametrize("flavour", ["tiff", "svs"])
def test_upsampled_patch_slide_keeps_the_patches(patches: Path, tmp_path: Path, flavour: str) -> None:
    """At 20x the levels down to the patches' own 10x are drawn (level 1 of a TIFF holds their pixels), the
    coarser ones averaged; all match the levels drawn from the patches (as before) within JPEG noise."""
    path = tmp_path / f"a.{flavour}"
    spec = write_patch_slide(path, patches, shape=(12, 20), lesion="micro", seed=2, upsample=2, flavour=flavour)
    factor = 4 if flavour == "svs" else 2
    renderer = PatchTileRenderer(spec, open_patches(patches), factor)
    drawn = write_slide(spec, tmp_path / f"b.{flavour}", flavour, renderer=renderer)
    levels = _levels(path)
    assert len(levels) >= 3
    for level, before in zip(levels, _levels(drawn), strict=True):
        assert level.shape == before.shape
        assert np.abs(level.astype(int) - before).mean() < 2.0
    if flavour == "tiff":
        i = int(np.flatnonzero(spec.interior)[len(spec.cells) // 2])
        r, c = (int(v) for v in spec.cells[i])
        patch = dihedral(open_patches(patches).read_one(int(spec.patches[i])), int(spec.transforms[i]))
        expected = hed_scale_shift(patch, spec.stain_alpha, spec.stain_beta).astype(int)
        assert np.abs(levels[1][r * PX : (r + 1) * PX, c * PX : (c + 1) * PX] - expected).mean() < 3.0
        _assert_block_means(levels[1:], 2, 5.0)
    with open_slide(path, backend="openslide") as slide:
        assert (np.asarray(slide.get_thumbnail((128, 128))).std(axis=(0, 1)) > 5).all()


@pytest.mark.parametrize("backend", ["tifffile", "openslide"])
def test_large_patch_slide_reads(patch_slide: tuple[PatchSlideSpec, Path, int], backend: str) -> None:
    spec, path, _ = patch_slide
    levels = _levels(path)
    with open_slide(path, backend=backend) as slide:
        assert slide.level_count == len(levels) and slide.dimensions == (spec.width, spec.height)
        r, c = (int(v) for v in spec.cells[np.flatnonzero(spec.interior)[0]])
        cell = slide.read_region((c * PX, r * PX), 1, (PX // 2, PX // 2)).astype(int)
        assert np.abs(cell - levels[1][r * PX // 2 : (r + 1) * PX // 2, c * PX // 2 : (c + 1) * PX // 2]).mean() < 1.0
        thumb = np.asarray(slide.get_thumbnail((256, 256)))
        assert (thumb.std(axis=(0, 1)) > 5).all()  # tissue on the coarsest levels, not blank
