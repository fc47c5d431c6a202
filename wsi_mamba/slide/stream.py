"""Streaming the tiles of a grid in batches: dask threads, a bounded prefetch window, fixed order."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import dask
import numpy as np

from .base import Slide
from .errors import TileDecodeError
from .tiling import TileGrid, read_tile

if TYPE_CHECKING:  # dask.array (~0.4 s with the scipy.sparse it pulls in) only where an array is asked for
    import dask.array as da

_DONE = object()


OnDecodeError = Callable[[int, TileDecodeError], None]


def _read_or_error(slide: Slide, grid: TileGrid, index: int) -> np.ndarray | TileDecodeError:
    try:
        return read_tile(slide, grid, index)
    except TileDecodeError as exc:
        return exc


def _read_batch(
    slide: Slide, grid: TileGrid, indices: np.ndarray, workers: int, on_error: OnDecodeError | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The tiles of ``indices`` and the indices read; a tile that cannot be decoded goes to ``on_error`` and is
    left out (raised when ``on_error`` is None)."""
    read = _read_or_error if on_error is not None else read_tile
    tasks = [dask.delayed(read)(slide, grid, int(i)) for i in indices]
    tiles = list(dask.compute(*tasks, scheduler="threads", num_workers=workers))
    good = [not isinstance(tile, TileDecodeError) for tile in tiles]
    for index, tile in zip(indices.tolist(), tiles, strict=True):
        if isinstance(tile, TileDecodeError):
            on_error(index, tile)  # type: ignore[misc]
    tiles = [tile for tile, ok in zip(tiles, good, strict=True) if ok]
    stacked = np.stack(tiles) if tiles else np.zeros((0, grid.tile_px, grid.tile_px, 3), np.uint8)
    return stacked, indices[np.asarray(good, bool)] if len(indices) else indices


def stream_tiles(
    slide: Slide,
    grid: TileGrid,
    batch_size: int = 64,
    prefetch: int = 2,
    workers: int = 4,
    on_error: OnDecodeError | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(tiles, indices)``: tiles (n, tile_px, tile_px, 3) uint8, indices into ``grid``, in grid
    order. A background thread reads up to ``prefetch`` batches ahead (each with ``workers`` dask
    threads), so memory stays at about (prefetch + 2) batches whatever the slide size. A tile whose pixels
    cannot be decoded (:class:`TileDecodeError`) raises, or, with ``on_error``, is passed to it (grid index,
    error; called in the reading thread) and left out of the batches."""
    if batch_size <= 0 or prefetch <= 0 or workers <= 0:
        raise ValueError("batch_size, prefetch and workers must be positive")
    results: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                results.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for start in range(0, len(grid), batch_size):
                indices = np.arange(start, min(start + batch_size, len(grid)), dtype=np.int64)
                tiles, read = _read_batch(slide, grid, indices, workers, on_error)
                if len(read) and not put((tiles, read)):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)
            return
        put(_DONE)

    producer = threading.Thread(target=produce, name="tile-prefetch", daemon=True)
    producer.start()
    try:
        while True:
            item = results.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        producer.join()


def tiles_to_dask(slide: Slide, grid: TileGrid) -> da.Array:
    """The grid's tiles as a lazy (N, tile_px, tile_px, 3) uint8 dask array, one chunk per tile."""
    import dask.array as da

    n, px = len(grid), grid.tile_px

    def block(block_info: dict | None = None) -> np.ndarray:
        index = block_info[None]["chunk-location"][0]  # type: ignore[index]
        return read_tile(slide, grid, index)[None]

    return da.map_blocks(
        block, chunks=((1,) * n, (px,), (px,), (3,)), dtype=np.uint8, meta=np.empty((0, 0, 0, 0), np.uint8)
    )
