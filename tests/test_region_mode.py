"""Region mode: whole regions through the encoder in one pass, the last feature map pooled into the tile cells."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from slide_fixtures import synthetic_slide

from wsi_mamba.features.encode import EncodedSlide, encode_slide
from wsi_mamba.features.modes import RegionMode, TileMode, mode_from_attrs, requested_mode, resolve
from wsi_mamba.features.options import ReadOptions
from wsi_mamba.features.region_mode import plan_regions, region_features
from wsi_mamba.features.store import check_same_encoder, read_attrs, store_path
from wsi_mamba.models.encoder import TileEncoder, load_encoder
from wsi_mamba.slide import open_slide
from wsi_mamba.slide.tiling import make_tile_grid, read_cell, read_tile
from wsi_mamba.workflows.bundle import check_manifest
from wsi_mamba.workflows.extract import extract_slides

TILE_PX = 64  # vmamba_pico: stride 32, so 2 x 2 feature pixels per cell


@pytest.fixture(scope="module")
def encoder() -> TileEncoder:
    return load_encoder("vmamba_pico", seed=0, tile_px=TILE_PX, mpp=1.0)


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_slide(tmp_path_factory, "tiff")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def encode(
    path: Path, encoder: TileEncoder, region_px: int | None = None, overlap_px: int | None = None
) -> EncodedSlide:
    mode = TileMode() if region_px is None else RegionMode(region_px, overlap_px)
    with open_slide(path) as slide:
        return encode_slide(slide, encoder, mode, ReadOptions(batch_size=16, read_threads=1))


@pytest.mark.parametrize(("n", "k", "overlap"), [(1, 4, 1), (4, 4, 1), (5, 4, 1), (13, 4, 1), (17, 8, 2), (9, 3, 0)])
def test_each_cell_takes_the_region_where_it_is_furthest_from_the_border(n: int, k: int, overlap: int) -> None:
    layout = plan_regions((n, 2), k, overlap)
    starts, size = layout.row_starts, layout.size[0]
    assert size == min(n, k) and starts[0] == 0 and starts[-1] + size == n
    assert np.all(np.diff(starts) <= k - overlap) and np.all(np.diff(starts) > 0)
    for cell in range(n):
        inside = [j for j, s in enumerate(starts) if s <= cell < s + size]
        distance = {j: min(cell - starts[j], starts[j] + size - 1 - cell) for j in inside}
        owner = int(layout.row_owner[cell])
        assert owner in inside and distance[owner] == max(distance.values())


def test_one_tile_region_gives_the_tile_features(slide_path: Path, encoder: TileEncoder) -> None:
    tiles = encode(slide_path, encoder)
    regions = encode(slide_path, encoder, TILE_PX)
    assert len(tiles.grid) > 4
    np.testing.assert_array_equal(regions.grid.rows, tiles.grid.rows)
    np.testing.assert_array_equal(regions.grid.cols, tiles.grid.cols)
    np.testing.assert_allclose(regions.features, tiles.features, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(regions.colour, tiles.colour)
    assert tiles.mode == TileMode() and tiles.mode.attrs() == {"mode": "tile"}
    assert regions.mode.attrs() == {"mode": "region", "region_px": TILE_PX, "region_overlap_px": 0}


def test_larger_regions_give_context_dependent_features_stitched_from_their_owners(
    slide_path: Path, encoder: TileEncoder
) -> None:
    tiles = encode(slide_path, encoder)
    regions = encode(slide_path, encoder, 4 * TILE_PX, TILE_PX)
    diff = np.abs(regions.features - tiles.features).max(axis=1)
    assert (diff > 1e-2).all(), diff  # every cell sees its neighbours
    assert np.allclose(regions.colour, tiles.colour)
    # each cell's feature is its owning region's, computed alone
    grid = regions.grid
    layout = plan_regions(grid.shape, 4, 1)
    r, c = int(grid.rows[0]), int(grid.cols[0])
    r0, c0 = int(layout.row_starts[layout.row_owner[r]]), int(layout.col_starts[layout.col_owner[c]])
    rows, cols = layout.size
    with open_slide(slide_path) as slide:
        level = slide.best_level_for_downsample(grid.size0 / TILE_PX)
        assert level == grid.level and grid.read_px == round(grid.size0 / slide.level_downsamples[level])
        pixels = np.concatenate(
            [
                np.concatenate(
                    [encode_cell(slide, grid, r0 + i, c0 + j) for j in range(cols)],
                    axis=1,
                )
                for i in range(rows)
            ],
            axis=0,
        )
    alone = region_features(encoder, pixels)
    np.testing.assert_allclose(regions.features[0], alone[r - r0, c - c0], atol=1e-5, rtol=0)


def encode_cell(slide, grid, row: int, col: int) -> np.ndarray:
    from wsi_mamba.slide.base import resize_rgb

    x, y = int(np.round(col * grid.size0)), int(np.round(row * grid.size0))
    return resize_rgb(slide.read_region((x, y), grid.level, (grid.read_px,) * 2), (TILE_PX, TILE_PX))


def test_a_cell_feature_changes_with_the_rest_of_its_region(encoder: TileEncoder) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (3 * TILE_PX, 3 * TILE_PX, 3), dtype=np.uint8)
    before = region_features(encoder, pixels)
    pixels[:TILE_PX, :TILE_PX] = 255 - pixels[:TILE_PX, :TILE_PX]  # only the top-left cell changes
    after = region_features(encoder, pixels)
    assert before.shape == (3, 3, encoder.dim)
    assert np.abs(after[2, 2] - before[2, 2]).max() > 1e-3  # the far corner sees it
    tile = region_features(encoder, pixels[-TILE_PX:, -TILE_PX:])[0, 0]
    np.testing.assert_allclose(tile, encoder.encode(pixels[None, -TILE_PX:, -TILE_PX:])[0], atol=1e-5, rtol=0)


def test_stores_record_the_mode_and_modes_never_mix(slide_path: Path, encoder: TileEncoder, tmp_path: Path) -> None:
    mode, read = RegionMode(2 * TILE_PX), ReadOptions(batch_size=16, read_threads=1)
    assert extract_slides([slide_path], tmp_path, encoder, mode, read, progress=False) == {"slide": "done"}
    attrs = read_attrs(store_path(tmp_path, "slide"))
    assert (attrs["mode"], attrs["region_px"], attrs["region_overlap_px"]) == ("region", 2 * TILE_PX, 0)
    tile_attrs = {**attrs, "mode": "tile"}
    mixed = r"b were extracted in region mode \(128 px, overlap 0 px\), but a uses tile mode"
    with pytest.raises(ValueError, match=mixed):
        check_same_encoder({"a": tile_attrs, "b": attrs})
    legacy = {k: v for k, v in attrs.items() if k not in ("mode", "region_px", "region_overlap_px")}
    check_same_encoder({"a": tile_attrs, "b": legacy}, expected_mode={"mode": "tile"})  # no mode: tile mode
    with pytest.raises(ValueError, match="extract them again in one mode"):
        check_same_encoder({"b": attrs}, (attrs["encoder"], attrs["encoder_hash"]), expected_mode={"mode": "tile"})
    # the same folder in tile mode: the region store is not taken as done
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = extract_slides([slide_path], tmp_path, encoder, TileMode(), read, progress=False)
    assert again["slide"].startswith("failed:") and "region mode" in again["slide"]
    assert extract_slides([slide_path], tmp_path, encoder, mode, read, progress=False) == {"slide": "skipped"}


def test_predict_takes_the_model_mode() -> None:
    region = {"mode": "region", "region_px": 256, "region_overlap_px": 64}
    assert resolve(None, None, "m") == TileMode(1)  # a model that records no mode: tile mode, one view
    assert resolve(None, region, "m") == RegionMode(256, 64)  # nothing asked: the model's mode
    assert resolve(RegionMode(256), region, "m") == RegionMode(256, 64)  # its size named, its overlap taken
    assert resolve(RegionMode(256, 64), region, "m") == RegionMode(256, 64)
    with pytest.raises(ValueError, match="trained on features of tile mode"):
        resolve(RegionMode(256), {"mode": "tile"}, "m")
    with pytest.raises(ValueError, match=r"region mode \(256 px, overlap 64 px\)"):
        resolve(RegionMode(512), region, "m")
    with pytest.raises(ValueError, match=r"region mode \(256 px, overlap 64 px\)"):
        resolve(RegionMode(256, 0), region, "m")  # another overlap is another mode
    check_manifest({"feature_mode": region})
    with pytest.raises(ValueError, match="region_px"):
        check_manifest({"feature_mode": {"mode": "region", "region_px": "big", "region_overlap_px": 0}})


@pytest.mark.parametrize(
    ("region_px", "overlap", "message"),
    [(100, None, "multiple of the encoder's tile_px"), (256, 32, "multiple of tile_px"), (256, 256, r"in \[0")],
)
def test_region_sizes_must_be_whole_tiles(encoder: TileEncoder, region_px: int, overlap, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RegionMode(region_px, overlap).check(encoder)


def test_tiles_must_be_whole_feature_pixels() -> None:
    odd = load_encoder("vmamba_pico", seed=0, tile_px=48, mpp=1.0)
    with pytest.raises(ValueError, match=r"multiple of its stride \(32"):
        RegionMode(96).check(odd)


def test_forward_last_map_is_the_map_that_forward_head_pools(encoder: TileEncoder) -> None:
    model = encoder.model
    x = torch.randn(1, 3, 2 * TILE_PX, 3 * TILE_PX, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        fmap = model.forward_last_map(x)
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
    assert model.feature_stride == 32  # four stages: 4 px from the stem, then three 2x downsamples
    assert tuple(fmap.shape) == (1, encoder.dim, 2 * TILE_PX // 32, 3 * TILE_PX // 32)
    torch.testing.assert_close(fmap.mean(dim=(2, 3)), pooled, atol=1e-5, rtol=0)


def test_read_cell_reads_kept_and_background_cells_where_the_grid_puts_them(slide_path: Path) -> None:
    with open_slide(slide_path) as slide:
        grid = make_tile_grid(slide, TILE_PX, 1.0, 0.25)
        for i in (0, len(grid) - 1):
            cell = read_cell(slide, grid, int(grid.rows[i]), int(grid.cols[i]))
            np.testing.assert_array_equal(cell, read_tile(slide, grid, i))
        row, col = map(int, np.argwhere(~grid.occupancy())[0])  # a background cell: not in the grid's tiles
        np.testing.assert_array_equal(read_cell(slide, grid, row, col), encode_cell(slide, grid, row, col))


def test_modes_round_trip_through_their_attributes_and_refuse_what_cannot_run() -> None:
    for mode in (TileMode(), TileMode(8), RegionMode(256, 64)):
        assert mode_from_attrs(mode.attrs()) == mode
    assert mode_from_attrs({}) == TileMode(1)  # a store older than modes
    assert RegionMode(256, 64).describe() == "region mode (256 px, overlap 64 px)"
    assert requested_mode(None, None, None) is None and requested_mode(None, 128, 4) == TileMode(4)
    assert requested_mode(256, None, 1) == RegionMode(256)
    with pytest.raises(ValueError, match="--views 4 is for tile mode"):
        requested_mode(256, None, 4)
    with pytest.raises(ValueError, match="views must be one of 1, 4, 8"):
        TileMode(3)
    plain = TileEncoder(torch.nn.Conv2d(3, 4, 1), "conv", tile_px=TILE_PX)
    assert TileMode(4).check(plain) == TileMode(4)
    with pytest.raises(ValueError, match="region mode needs a VMamba encoder"):
        RegionMode(2 * TILE_PX).check(plain)
