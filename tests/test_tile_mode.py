"""Tile mode's engine (reader threads, colour statistics on the feeder thread, encoding here through the device
runner) against a plain sequential loop: the same features, colour statistics and decode errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from slide_fixtures import synthetic_slide

from wsi_mamba.evaluation.colour import tile_colour_stats
from wsi_mamba.features.encode import encode_slide
from wsi_mamba.features.modes import TileMode
from wsi_mamba.features.options import ReadOptions
from wsi_mamba.features.runner import DeviceRunner
from wsi_mamba.features.tile_mode import encode_tiles
from wsi_mamba.models.encoder import TileEncoder, load_encoder
from wsi_mamba.slide import open_slide, stream
from wsi_mamba.slide.base import Slide
from wsi_mamba.slide.errors import TileDecodeError
from wsi_mamba.slide.tiling import TileGrid, make_tile_grid, read_tile
from wsi_mamba.slide.tissue import detect_tissue


@pytest.fixture(scope="module")
def encoder() -> TileEncoder:
    return load_encoder("vmamba_pico", seed=3, tile_px=64, mpp=1.0)


def sequential(
    slide: Slide, grid: TileGrid, encoder: TileEncoder, batch_size: int, bad: frozenset[int] = frozenset()
) -> tuple[np.ndarray, np.ndarray]:
    """The reference: each batch of grid indices read tile by tile in this thread, then encoded (tiles in
    ``bad`` left out of their batch, their rows zero)."""
    features = np.zeros((len(grid), encoder.dim), np.float32)
    colour = np.zeros((len(grid), 10), np.float32)
    for start in range(0, len(grid), batch_size):
        indices = [i for i in range(start, min(start + batch_size, len(grid))) if i not in bad]
        tiles = np.stack([read_tile(slide, grid, i) for i in indices])
        features[indices] = encoder.encode(tiles)
        colour[indices] = tile_colour_stats(tiles)
    return features, colour


@pytest.mark.parametrize(("batch_size", "workers"), [(5, 3), (64, 4)])
def test_pipeline_matches_sequential_reference(
    tmp_path_factory: pytest.TempPathFactory, encoder: TileEncoder, batch_size: int, workers: int
) -> None:
    with open_slide(synthetic_slide(tmp_path_factory, "tiff")) as slide:
        grid = make_tile_grid(slide, encoder.tile_px, encoder.mpp, 0.25, tissue=detect_tissue(slide))
        assert len(grid) > 2 * batch_size or batch_size == 64
        counted: list[int] = []
        read = ReadOptions(batch_size=batch_size, read_threads=workers)
        found = encode_tiles(slide, grid, encoder, 1, read, on_batch=counted.append)
        features, colour, errors = found.features, found.colour, found.errors
        expected_features, expected_colour = sequential(slide, grid, encoder, batch_size)
        encoded = encode_slide(slide, encoder, TileMode(), read)
    assert not errors and sum(counted) == len(grid)
    np.testing.assert_array_equal(features, expected_features)
    np.testing.assert_array_equal(colour, expected_colour)
    assert np.abs(features).sum(axis=1).min() > 0  # every row written
    np.testing.assert_array_equal(encoded.features, expected_features)
    np.testing.assert_array_equal(encoded.colour, expected_colour)


def test_pipeline_leaves_out_undecodable_tiles_like_the_reference(
    tmp_path_factory: pytest.TempPathFactory, encoder: TileEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = frozenset({1, 7})

    def damaged(slide: Slide, grid: TileGrid, index: int) -> np.ndarray:
        if index in bad:
            raise TileDecodeError(slide.path, f"cannot decode tile {index}")
        return read_tile(slide, grid, index)

    with open_slide(synthetic_slide(tmp_path_factory, "tiff")) as slide:
        grid = make_tile_grid(slide, encoder.tile_px, encoder.mpp, 0.25, tissue=detect_tissue(slide))
        expected_features, expected_colour = sequential(slide, grid, encoder, 4, bad)
        monkeypatch.setattr(stream, "read_tile", damaged)
        found = encode_tiles(slide, grid, encoder, 1, ReadOptions(batch_size=4, read_threads=2))
    assert sorted(found.errors) == sorted(bad)
    np.testing.assert_array_equal(found.features, expected_features)
    np.testing.assert_array_equal(found.colour, expected_colour)


def test_stream_batches_prepare_runs_off_the_consumer_and_raises_there(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    import threading

    consumer = threading.get_ident()
    with open_slide(synthetic_slide(tmp_path_factory, "tiff")) as slide:
        grid = make_tile_grid(slide, 64, 1.0, 0.25)
        batches = list(stream.stream_batches(slide, grid, 4, workers=2, prepare=lambda t: (threading.get_ident(), t)))
        assert all(b.prepared[0] != consumer and b.prepared[1] is b.tiles for b in batches)
        np.testing.assert_array_equal(np.concatenate([b.indices for b in batches]), np.arange(len(grid)))

        def fail(tiles: np.ndarray) -> None:
            raise RuntimeError("prepare failed")

        with pytest.raises(RuntimeError, match="prepare failed"):
            list(stream.stream_batches(slide, grid, 4, workers=2, prepare=fail))


def test_cpu_runner_stages_tiles_as_they_are_and_brings_features_home_at_once() -> None:
    runner = DeviceRunner("cpu")
    tiles = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    assert runner.stage(tiles) is tiles  # no pinned copy without CUDA
    out = runner.compute(lambda x: x.double() * 0.5, torch.ones(2, 3))
    pending = runner.launch(out, keep=tiles)
    assert pending.done is None and pending.keep is None  # nothing in flight on the CPU
    home = runner.finish(pending)
    assert home.dtype == np.float32 and home.shape == (2, 3) and np.all(home == 0.5)
