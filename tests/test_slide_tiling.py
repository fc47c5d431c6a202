"""Tissue detection, tile grids and the tile streamer."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from slide_fixtures import shared_file, synthetic_slide, write_pyramid

from wsi_mamba.slide import SlideError, open_slide
from wsi_mamba.slide.stream import stream_tiles, tiles_to_dask
from wsi_mamba.slide.tiling import make_tile_grid, read_tile, region_fractions
from wsi_mamba.slide.tissue import TissueParams, detect_tissue, otsu_threshold


def blank_slide(path: Path, value: int = 245) -> Path:
    tifffile.imwrite(
        path,
        np.full((1024, 1024, 3), value, np.uint8),
        tile=(256, 256),
        photometric="rgb",
        resolution=(1e4 / 0.5, 1e4 / 0.5),
        resolutionunit="CENTIMETER",
        metadata=None,
    )
    return path


def test_otsu_separates_two_populations() -> None:
    values = np.concatenate([np.full(1000, 10), np.full(500, 200)]).astype(np.uint8)
    assert 10 <= otsu_threshold(values) < 200


def test_tissue_on_synthetic_slide(tmp_path_factory: pytest.TempPathFactory) -> None:
    with open_slide(synthetic_slide(tmp_path_factory, "tiff")) as s:
        tissue = detect_tissue(s)
        assert tissue.mpp == pytest.approx(8.0, rel=0.05)
        assert tissue.mask.shape == (round(1536 / tissue.downsample), round(2048 / tissue.downsample))
        assert 0.05 < tissue.fraction < 0.9
        # the background corner is not tissue; the grid agrees with the mask
        assert not tissue.mask[:3, :3].any()
        coarse = detect_tissue(s, TissueParams(mask_mpp=16.0))
        assert coarse.mask.shape[0] == pytest.approx(tissue.mask.shape[0] / 2, abs=1)


def test_no_tissue_gives_empty_mask_and_grid(tmp_path: Path) -> None:
    with open_slide(blank_slide(tmp_path / "blank.tif")) as s:
        tissue = detect_tissue(s)
        assert not tissue.mask.any()
        with pytest.warns(UserWarning, match="no tissue found"):
            grid = make_tile_grid(s, 256, 0.5, tissue=tissue)
        assert len(grid) == 0 and grid.shape == (4, 4)
        assert list(stream_tiles(s, grid)) == []


def test_grid_geometry_with_exact_level(tmp_path: Path) -> None:
    with open_slide(write_pyramid(tmp_path / "p.tif", mpp=0.25)) as s:
        grid = make_tile_grid(s, tile_px=128, target_mpp=0.5, min_tissue=0)
        assert grid.level == 1 and grid.read_px == 128 and grid.size0 == 256
        assert grid.shape == (3, 4) and len(grid) == 12
        tile = grid[5]
        assert (tile.row, tile.col, tile.x, tile.y) == (1, 1, 256, 256)
        np.testing.assert_array_equal(read_tile(s, grid, 5), s.read_region((256, 256), 1, (128, 128)))


def test_grid_resizes_when_no_level_matches(tmp_path_factory: pytest.TempPathFactory) -> None:
    with open_slide(synthetic_slide(tmp_path_factory, "svs")) as s:
        grid = make_tile_grid(s, tile_px=256, target_mpp=0.5, min_tissue=0.1)
        assert grid.level == 0 and grid.read_px == round(256 * 0.5 / 0.243)
        assert grid.shape == (int(np.ceil(1536 / grid.size0)), int(np.ceil(2048 / grid.size0)))
        assert len(grid) > 0 and (grid.tissue >= 0.1).all()
        assert read_tile(s, grid, 0).shape == (256, 256, 3)
        assert grid.occupancy().sum() == len(grid)


def test_grid_needs_mpp(tmp_path: Path) -> None:
    path = write_pyramid(tmp_path / "nompp.tif", mpp=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slide = open_slide(path)
    with slide, pytest.raises(SlideError, match=r"nompp\.tif: no microns-per-pixel"):
        make_tile_grid(slide)
    with open_slide(path, mpp=0.5) as s:
        assert len(make_tile_grid(s, 256, 1.0, min_tissue=0)) == 4


def test_region_fractions() -> None:
    mask = np.zeros((10, 10), bool)
    mask[:5, :] = True
    fractions = region_fractions(mask, 2.0, np.array([0, 0, 10]), np.array([0, 10, 0]), 10.0)
    np.testing.assert_allclose(fractions, [1.0, 0.0, 1.0])


def test_stream_order_batches_and_content(tmp_path_factory: pytest.TempPathFactory) -> None:
    with open_slide(synthetic_slide(tmp_path_factory, "tiff")) as s:
        grid = make_tile_grid(s, tile_px=128, target_mpp=0.5, min_tissue=0.05)
        assert len(grid) > 10
        batches = list(stream_tiles(s, grid, batch_size=4, prefetch=2, workers=2))
        indices = np.concatenate([i for _, i in batches])
        np.testing.assert_array_equal(indices, np.arange(len(grid)))
        assert all(t.shape == (len(i), 128, 128, 3) and t.dtype == np.uint8 for t, i in batches)
        assert max(len(i) for _, i in batches) == 4
        tiles = np.concatenate([t for t, _ in batches])
        for k in (0, len(grid) // 2, len(grid) - 1):
            np.testing.assert_array_equal(tiles[k], read_tile(s, grid, k))
        again = np.concatenate([t for t, _ in stream_tiles(s, grid, batch_size=7, workers=3)])
        np.testing.assert_array_equal(tiles, again)
        lazy = tiles_to_dask(s, grid)
        assert lazy.shape == (len(grid), 128, 128, 3)
        np.testing.assert_array_equal(lazy[1:3].compute(), tiles[1:3])


def test_stream_stops_early_and_propagates_errors(tmp_path_factory: pytest.TempPathFactory) -> None:
    with open_slide(synthetic_slide(tmp_path_factory, "tiff")) as s:
        grid = make_tile_grid(s, tile_px=64, target_mpp=0.5, min_tissue=0)
        stream = stream_tiles(s, grid, batch_size=2, prefetch=1)
        next(stream)
        stream.close()  # the prefetch thread ends
    with pytest.raises(ValueError):
        next(stream_tiles(s, grid, batch_size=0))


def test_stream_raises_slide_error_on_corrupt_tiles() -> None:
    path = shared_file("openslide-unreadable.svs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slide = open_slide(path)
    with slide:
        grid = make_tile_grid(slide, tile_px=8, target_mpp=slide.mpp, min_tissue=0)
        with pytest.raises(SlideError, match="openslide-unreadable"):
            list(stream_tiles(slide, grid))


def test_tiles_on_real_svs() -> None:
    with open_slide(shared_file("CMU-1-Small-Region.svs")) as s:
        grid = make_tile_grid(s, 256, 0.5)
        assert 20 < len(grid) < grid.shape[0] * grid.shape[1]
