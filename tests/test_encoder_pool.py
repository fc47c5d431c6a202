"""Encoding in worker processes (:mod:`wsi_mamba.features.encoder_pool`) against the in-process engine: the same
features (to float32 rounding of a different thread count), colour statistics and views, views on demand
included; when the pool is used; a worker's failure or death raised in the parent, naming it."""

from __future__ import annotations

import copy
import multiprocessing
import operator
import os
import signal

import numpy as np
import pytest
import torch
from slide_fixtures import synthetic_slide

from wsi_mamba.features.encoder_pool import (
    BatchEncoding,
    EncoderPool,
    EncoderPoolError,
    current_kept_pool,
    kept_pools,
    pool_processes,
)
from wsi_mamba.features.options import MIN_POOL_TILES, ReadOptions
from wsi_mamba.features.tile_mode import encode_tiles
from wsi_mamba.models.encoder import TileEncoder, load_encoder
from wsi_mamba.slide import open_slide
from wsi_mamba.slide.tiling import make_tile_grid
from wsi_mamba.slide.tissue import detect_tissue


@pytest.fixture(scope="module")
def encoder() -> TileEncoder:
    enc = load_encoder("vmamba_pico", seed=0, tile_px=64, mpp=1.0, num_classes=1)
    with torch.no_grad():  # a head far from zero: first-view probabilities spread over (0, 1)
        enc.model.classifier.head.weight.normal_(0, 1, generator=torch.Generator().manual_seed(0))
    return enc


def first_view_middle(slide, grid, encoder: TileEncoder) -> float:
    """A probability halfway between the two middle first-view tumour probabilities of the grid's tiles: a band
    up to it splits them in two, no tile near its edge."""
    one = encode_tiles(slide, grid, encoder, 1, ReadOptions(encode_processes=1)).features
    with torch.no_grad():
        p = np.sort(torch.sigmoid(encoder.logits_from_features(torch.from_numpy(one))[:, 0]).numpy())
    return float(p[len(p) // 2 - 1] + p[len(p) // 2]) / 2


@pytest.mark.parametrize(("views", "on_demand"), [(1, False), (4, False), (4, True)])
def test_pool_matches_in_process_encoding(
    tmp_path_factory: pytest.TempPathFactory, encoder: TileEncoder, views: int, on_demand: bool
) -> None:
    with open_slide(synthetic_slide(tmp_path_factory, "tiff")) as slide:
        grid = make_tile_grid(slide, 64, 1.0, 0.25, tissue=detect_tissue(slide))
        band = (0.0, first_view_middle(slide, grid, encoder)) if on_demand else None
        found = {}
        for processes in (1, 2):
            counted: list[int] = []
            read = ReadOptions(batch_size=3, read_threads=2, encode_processes=processes)
            found[processes] = encode_tiles(slide, grid, encoder, views, read, on_batch=counted.append, on_demand=band)
            assert sum(counted) == len(grid)
    here, pool = found[1], found[2]
    assert len(grid) > 6 and not pool.errors
    np.testing.assert_allclose(pool.features, here.features, rtol=1e-5, atol=1e-6)
    assert np.abs(pool.features).sum(axis=1).min() > 0  # every row written
    np.testing.assert_array_equal(pool.colour, here.colour)
    np.testing.assert_array_equal(pool.views, here.views)
    if on_demand:  # the band split the tiles: some got one view, some four
        assert set(np.unique(pool.views)) == {1, 4}


def test_pool_is_used_for_large_cpu_slides_only(encoder: TileEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert pool_processes(None, encoder, MIN_POOL_TILES) == 2
    assert pool_processes(None, encoder, MIN_POOL_TILES - 1) == 1
    assert pool_processes(3, encoder, 10) == 3
    assert pool_processes(1, encoder, 10**6) == 1
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert pool_processes(None, encoder, 10**6) == 1
    monkeypatch.setattr(multiprocessing.current_process(), "daemon", True, raising=False)
    assert pool_processes(4, encoder, 10**6) == 1  # a daemonic process (cohort worker) may not start children


def test_read_options_refuse_zero_processes() -> None:
    with pytest.raises(ValueError, match="encode_processes"):
        ReadOptions(encode_processes=0)


def test_a_worker_error_is_raised_in_the_parent(encoder: TileEncoder) -> None:
    with EncoderPool(encoder, 1, BatchEncoding()) as pool:
        pool.submit(0, np.zeros((2, 64, 64), np.float32))  # not uint8 RGB tiles: the worker's preprocess refuses
        with pytest.raises(EncoderPoolError, match="encoding worker failed: ValueError: tiles must be"):
            pool.collect()


def test_a_dead_worker_is_raised_in_the_parent(encoder: TileEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("wsi_mamba.features.encoder_pool.WORKER_TIMEOUT_S", 0.2)
    with EncoderPool(encoder, 2, BatchEncoding()) as pool:
        os.kill(pool.workers[0].pid, signal.SIGKILL)
        pool.workers[0].join()
        with pytest.raises(EncoderPoolError, match="wsi-mamba-encode-0 died"):
            pool.collect()


def test_workers_that_cannot_start_fall_back_to_this_process(
    tmp_path_factory: pytest.TempPathFactory, encoder: TileEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object) -> None:
        raise OSError("no process spawning here")

    with open_slide(synthetic_slide(tmp_path_factory, "tiff")) as slide:
        grid = make_tile_grid(slide, 64, 1.0, 0.25, tissue=detect_tissue(slide))
        here = encode_tiles(slide, grid, encoder, 1, ReadOptions(batch_size=3, encode_processes=1))
        monkeypatch.setattr(EncoderPool, "__init__", refuse)
        with pytest.warns(RuntimeWarning, match="encoding in this process: the 2 encoding workers could not start"):
            fallback = encode_tiles(slide, grid, encoder, 1, ReadOptions(batch_size=3, encode_processes=2))
    np.testing.assert_array_equal(fallback.features, here.features)


def test_an_encoder_that_cannot_be_sent_leaves_no_worker_behind(encoder: TileEncoder) -> None:
    class Unpicklable(torch.nn.Module):
        def __reduce__(self):
            raise TypeError("cannot pickle this encoder")

    broken = copy.copy(encoder)
    broken.model = Unpicklable()
    with pytest.raises(TypeError, match="cannot pickle this encoder"):
        EncoderPool(broken, 2, BatchEncoding())
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("wsi-mamba-encode")]


def encode_workers() -> list:
    return [p for p in multiprocessing.active_children() if p.name.startswith("wsi-mamba-encode")]


def test_kept_pools_encode_many_slides_with_one_set_of_workers_small_slides_included(
    tmp_path_factory: pytest.TempPathFactory, encoder: TileEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[EncoderPool] = []
    original = EncoderPool.__init__

    def counting(self, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        started.append(self)

    monkeypatch.setattr(EncoderPool, "__init__", counting)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # two workers whatever the test machine says
    with open_slide(synthetic_slide(tmp_path_factory, "tiff")) as slide:
        grid = make_tile_grid(slide, 64, 1.0, 0.25, tissue=detect_tissue(slide))
        assert len(grid) < MIN_POOL_TILES  # a small slide: in process, outside kept_pools
        here = encode_tiles(slide, grid, encoder, 1, ReadOptions(batch_size=3, encode_processes=1))
        assert pool_processes(None, encoder, len(grid)) == 1 and current_kept_pool() is None
        with kept_pools():
            assert pool_processes(None, encoder, len(grid)) == 2
            first = encode_tiles(slide, grid, encoder, 1, ReadOptions(batch_size=3))
            pids = sorted(p.pid for p in encode_workers())
            second = encode_tiles(slide, grid, encoder, 1, ReadOptions(batch_size=3))
            assert len(started) == 1 and sorted(p.pid for p in encode_workers()) == pids and len(pids) == 2
            other = encode_tiles(slide, grid, encoder, 4, ReadOptions(batch_size=3))  # another batch step
            assert len(started) == 2 and len(encode_workers()) == 2  # the first pool stopped, a new one kept
        assert not encode_workers() and current_kept_pool() is None  # leaving stops them
    for found in (first, second):
        np.testing.assert_allclose(found.features, here.features, rtol=1e-5, atol=1e-6)
    assert (other.views == 4).all()


def test_kept_pools_that_cannot_start_try_once_and_encode_in_process(
    tmp_path_factory: pytest.TempPathFactory, encoder: TileEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    tries: list[int] = []

    def refuse(*args: object) -> None:
        tries.append(1)
        raise OSError("no process spawning here")

    with open_slide(synthetic_slide(tmp_path_factory, "tiff")) as slide:
        grid = make_tile_grid(slide, 64, 1.0, 0.25, tissue=detect_tissue(slide))
        here = encode_tiles(slide, grid, encoder, 1, ReadOptions(batch_size=3, encode_processes=1))
        monkeypatch.setattr(EncoderPool, "__init__", refuse)
        with kept_pools():
            with pytest.warns(RuntimeWarning, match="could not start"):
                first = encode_tiles(slide, grid, encoder, 1, ReadOptions(batch_size=3, encode_processes=2))
            second = encode_tiles(slide, grid, encoder, 1, ReadOptions(batch_size=3, encode_processes=2))
    assert len(tries) == 1
    np.testing.assert_array_equal(first.features, here.features)
    np.testing.assert_array_equal(second.features, here.features)


def test_a_kept_pool_whose_worker_fails_is_stopped_not_reused(
    tmp_path_factory: pytest.TempPathFactory, encoder: TileEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_slide(synthetic_slide(tmp_path_factory, "tiff")) as slide:
        grid = make_tile_grid(slide, 64, 1.0, 0.25, tissue=detect_tissue(slide))
        with kept_pools():
            encode_tiles(slide, grid, encoder, 1, ReadOptions(batch_size=3, encode_processes=2))
            kept = current_kept_pool()
            assert kept is not None and kept.pool is not None
            monkeypatch.setattr(EncoderPool, "collect", lambda self: (_ for _ in ()).throw(EncoderPoolError("boom")))
            with pytest.raises(EncoderPoolError, match="boom"):
                encode_tiles(slide, grid, encoder, 1, ReadOptions(batch_size=3, encode_processes=2))
            assert kept.pool is None and not encode_workers()


def test_workers_that_die_on_start_fall_back_to_this_process(
    tmp_path_factory: pytest.TempPathFactory, encoder: TileEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An encoder the parent can send but a worker cannot rebuild (a module that fails to import there, as
    torchvision can): the pool's start fails naming the worker and leaves none behind, and the slides are
    encoded in process, with one warning for the run."""

    class BreaksInTheWorker(torch.nn.Module):
        def __reduce__(self):
            return operator.truediv, (1, 0)  # pickles here; unpickling raises ZeroDivisionError in the worker

    broken = copy.copy(encoder)
    broken.model = BreaksInTheWorker()
    with pytest.raises(EncoderPoolError, match=r"wsi-mamba-encode-[01] could not start"):
        EncoderPool(broken, 2, BatchEncoding())
    assert not encode_workers()

    def dies(self: EncoderPool) -> None:
        raise EncoderPoolError("encoding worker wsi-mamba-encode-0 could not start (exit code 1)")

    monkeypatch.setattr(EncoderPool, "_wait_until_ready", dies)
    with open_slide(synthetic_slide(tmp_path_factory, "tiff")) as slide:
        grid = make_tile_grid(slide, 64, 1.0, 0.25, tissue=detect_tissue(slide))
        here = encode_tiles(slide, grid, encoder, 1, ReadOptions(batch_size=3, encode_processes=1))
        with kept_pools():
            with pytest.warns(RuntimeWarning, match="could not start"):
                first = encode_tiles(slide, grid, encoder, 1, ReadOptions(batch_size=3, encode_processes=2))
            again = encode_tiles(slide, grid, encoder, 1, ReadOptions(batch_size=3, encode_processes=2))
    for found in (first, again):
        np.testing.assert_array_equal(found.features, here.features)
    assert not encode_workers()
