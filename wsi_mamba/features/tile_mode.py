"""Tile mode's engine: tiles read and decoded on threads, encoded on the device in this thread.

:func:`encode_tiles` consumes :func:`~wsi_mamba.slide.stream.stream_batches`: a pool of reader threads decodes
tiles ahead of the encoder (bounded queue), and the feeder thread computes each batch's colour statistics and
stages its tiles for the device (pinned memory on CUDA), so the thread that drives the encoder only encodes. The
:class:`~.runner.DeviceRunner` keeps one batch in flight on CUDA. Features are those of ``encoder.encode`` on the
same batches (tests/test_pipeline.py compares with a plain sequential loop). With views on demand a batch is
encoded in view 0 and only its tiles of uncertain first-view probability get the other views
(:meth:`~wsi_mamba.models.encoders.base.TileEncoder.views_on_demand`); the views each tile got are recorded.
On a CPU with two or more torch threads a large slide's batches go to worker processes of one thread each
instead (:mod:`.encoder_pool`; BENCHMARKS.md, "Encoding processes"), the reading and feeding staying here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..evaluation.colour import tile_colour_stats
from ..models.encoder import TileEncoder
from ..slide.base import Slide
from ..slide.stream import stream_batches
from ..slide.tiling import TileGrid
from .encoder_pool import BatchEncoding, EncoderPool, current_kept_pool, encode_batch, pool_processes
from .grid_features import GridFeatures
from .options import ReadOptions
from .runner import DeviceRunner, Pending


@dataclass(frozen=True)
class PreparedBatch:
    """The feeder thread's work on a batch: its colour statistics and its tiles staged for the device."""

    colour: np.ndarray
    staged: np.ndarray | torch.Tensor


@dataclass(frozen=True)
class InFlight:
    """A launched batch: the grid indices of its tiles, their features on the way home and the views each got."""

    indices: np.ndarray
    pending: Pending
    views: np.ndarray


@torch.inference_mode()
def encode_tiles(
    slide: Slide,
    grid: TileGrid,
    encoder: TileEncoder,
    views: int = 1,
    read: ReadOptions = ReadOptions(),
    runner: DeviceRunner | None = None,
    on_batch: Callable[[int], None] | None = None,
    normalise: Callable[[np.ndarray], np.ndarray] | None = None,
    on_demand: tuple[float, float] | None = None,
) -> GridFeatures:
    """Features of every tile of ``grid`` averaged over ``views`` dihedral views, their colour statistics, the
    views each tile got and the tiles that could not be decoded (:class:`~.grid_features.GridFeatures`).
    ``on_demand`` = (lo, hi): the other views only for tiles whose view-0 tumour probability is in [lo, hi].
    ``on_batch(k)`` after each batch. ``normalise`` (stain normalisation, uint8 → uint8) maps the tiles before
    the encoder, on the feeder thread; the colour statistics are of the tiles as read."""
    found = GridFeatures.zeros(len(grid), encoder.dim)
    if not len(grid):
        return found
    runner = runner or DeviceRunner(encoder.device)

    def prepare(tiles: np.ndarray) -> PreparedBatch:
        return PreparedBatch(tile_colour_stats(tiles), runner.stage(normalise(tiles) if normalise else tiles))

    def finish(batch: InFlight) -> None:
        found.features[batch.indices] = runner.finish(batch.pending)
        found.views[batch.indices] = batch.views
        if on_batch is not None:
            on_batch(len(batch.indices))

    how = BatchEncoding(views, on_demand, runner.cpu_precision)
    batches = stream_batches(
        slide, grid, read.batch_size, workers=read.read_threads, on_error=found.errors.__setitem__, prepare=prepare
    )
    processes = pool_processes(read.encode_processes, encoder, len(grid))
    kept = current_kept_pool()
    if processes > 1 and kept is not None:  # one pool for the run's slides
        pool = kept.pool_for(encoder, processes, how, _start_pool)
        if pool is not None:
            try:
                _encode_in_pool(pool, batches, found, on_batch)
            except BaseException:  # a worker failed, or the run stops: not left half-used for the next slide
                kept.drop()
                raise
            return found
    elif (pool := _start_pool(encoder, processes, how)) is not None:  # a pool for this slide
        with pool:
            _encode_in_pool(pool, batches, found, on_batch)
        return found
    in_flight: InFlight | None = None
    for batch in batches:
        prepared: PreparedBatch = batch.prepared
        found.colour[batch.indices] = prepared.colour
        # on CUDA a non-blocking copy from pinned memory; with views on demand the device waits for the first
        # view (the band is chosen on it: no overlap inside a batch)
        out, used = encode_batch(encoder, runner, prepared.staged, how)
        launched = InFlight(batch.indices, runner.launch(out, keep=prepared.staged), used)
        if in_flight is not None:
            finish(in_flight)  # the previous batch's features, while the device works on this one
        in_flight = launched
    if in_flight is not None:
        finish(in_flight)
    return found


def _start_pool(encoder: TileEncoder, processes: int, how: BatchEncoding) -> EncoderPool | None:
    """An :class:`EncoderPool` of ``processes`` workers, or None for one process or when the workers cannot start
    (an encoder that cannot be sent to another process, no process spawning here): then a warning, and the slide
    is encoded in this process."""
    if processes <= 1:
        return None
    try:
        return EncoderPool(encoder, processes, how)
    except Exception as error:  # pickling (a user's encoder), OSError (no /dev/shm, process limits), ...
        warnings.warn(
            f"encoding in this process: the {processes} encoding workers could not start "
            f"({type(error).__name__}: {error})",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


def _encode_in_pool(
    pool: EncoderPool, batches: Iterable, found: GridFeatures, on_batch: Callable[[int], None] | None
) -> None:
    """Every batch of ``batches`` through ``pool`` (:meth:`EncoderPool.encode_all`), into ``found``."""
    indices: dict[int, np.ndarray] = {}

    def tiles() -> Iterator[tuple[int, np.ndarray]]:
        for key, batch in enumerate(batches):
            found.colour[batch.indices] = batch.prepared.colour
            indices[key] = batch.indices
            yield key, batch.prepared.staged

    for key, features, views in pool.encode_all(tiles()):
        done = indices.pop(key)
        found.features[done], found.views[done] = features, views
        if on_batch is not None:
            on_batch(len(done))
