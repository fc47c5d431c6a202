"""Streaming the tiles of a grid in batches: a pool of reader threads, a bounded prefetch window, fixed order."""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .base import Slide
from .errors import TileDecodeError
from .tiling import TileGrid, read_tile

if TYPE_CHECKING:  # dask.array (~0.4 s with the scipy.sparse it pulls in) only where an array is asked for
    import dask.array as da

_DONE = object()


OnDecodeError = Callable[[int, TileDecodeError], None]


@dataclass
class TileBatch:
    """A batch of tiles in grid order: ``tiles`` (n, tile_px, tile_px, 3) uint8, their ``indices`` into the grid,
    and what ``prepare`` returned for them (None without one)."""

    tiles: np.ndarray
    indices: np.ndarray
    prepared: Any = None


def _read_or_error(slide: Slide, grid: TileGrid, index: int) -> np.ndarray | TileDecodeError:
    try:
        return read_tile(slide, grid, index)
    except TileDecodeError as exc:
        return exc


def _gather(
    grid: TileGrid, indices: np.ndarray, futures: list[Future], on_error: OnDecodeError | None
) -> tuple[np.ndarray, np.ndarray]:
    """The tiles of ``indices`` (their reads in ``futures``) stacked, and the indices read; a tile that cannot be
    decoded goes to ``on_error`` and is left out (raised when ``on_error`` is None)."""
    tiles = [future.result() for future in futures]
    good = [not isinstance(tile, TileDecodeError) for tile in tiles]
    for index, tile in zip(indices.tolist(), tiles, strict=True):
        if isinstance(tile, TileDecodeError):
            on_error(index, tile)  # type: ignore[misc]
    tiles = [tile for tile, ok in zip(tiles, good, strict=True) if ok]
    stacked = np.stack(tiles) if tiles else np.zeros((0, grid.tile_px, grid.tile_px, 3), np.uint8)
    return stacked, indices[np.asarray(good, bool)] if len(indices) else indices


def stream_batches(
    slide: Slide,
    grid: TileGrid,
    batch_size: int = 64,
    prefetch: int = 2,
    workers: int = 4,
    on_error: OnDecodeError | None = None,
    prepare: Callable[[np.ndarray], Any] | None = None,
) -> Iterator[TileBatch]:
    """Yield :class:`TileBatch` es in grid order, read ahead of the consumer: a pool of ``workers`` threads reads
    tiles (the next batch's reads are queued before this one is gathered, so the pool never idles at a batch
    boundary), a feeder thread stacks each batch and runs ``prepare(tiles)`` on it (work taken off the
    consumer: colour statistics, pinning for a device copy), and up to ``prefetch`` finished batches wait in a
    bounded queue. Memory stays at about (prefetch + 3) batches whatever the slide size. A tile whose pixels
    cannot be decoded (:class:`TileDecodeError`) raises, or, with ``on_error``, is passed to it (grid index,
    error; called in the feeder thread) and left out of the batches. Other errors (and those of ``prepare``)
    are raised in the consumer."""
    if batch_size <= 0 or prefetch <= 0 or workers <= 0:
        raise ValueError("batch_size, prefetch and workers must be positive")
    results: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()
    read = _read_or_error if on_error is not None else read_tile

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                results.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        starts = iter(range(0, len(grid), batch_size))
        pending: deque[tuple[np.ndarray, list[Future]]] = deque()
        with ThreadPoolExecutor(workers, thread_name_prefix="tile-read") as pool:

            def submit_next() -> None:
                start = next(starts, None)
                if start is not None:
                    indices = np.arange(start, min(start + batch_size, len(grid)), dtype=np.int64)
                    pending.append((indices, [pool.submit(read, slide, grid, int(i)) for i in indices]))

            try:
                submit_next()
                while pending and not stop.is_set():
                    indices, futures = pending.popleft()
                    submit_next()  # the pool reads the next batch while this one is gathered and prepared
                    tiles, kept = _gather(grid, indices, futures, on_error)
                    if len(kept) and not put(TileBatch(tiles, kept, prepare(tiles) if prepare else None)):
                        break
                else:
                    put(_DONE)
            except BaseException as exc:  # handed to the consumer, raised there
                put(exc)
            finally:
                for _, futures in pending:
                    for future in futures:
                        future.cancel()

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


def stream_tiles(
    slide: Slide,
    grid: TileGrid,
    batch_size: int = 64,
    prefetch: int = 2,
    workers: int = 4,
    on_error: OnDecodeError | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(tiles, indices)``: tiles (n, tile_px, tile_px, 3) uint8, indices into ``grid``, in grid order,
    read ahead by :func:`stream_batches` (same arguments, same memory bound, same ``on_error``)."""
    batches = stream_batches(slide, grid, batch_size, prefetch, workers, on_error)
    try:
        for batch in batches:
            yield batch.tiles, batch.indices
    finally:
        batches.close()  # stops the reader threads now, not when the generator is collected


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
