"""Tile encoding in worker processes of one torch thread each, on the CPU.

On the 2-core machine one process with 2 torch threads encodes 270 tiles/s and two processes of one thread 393
together (1.46×; BENCHMARKS.md, "Encoding processes"): the encoder's tensors are small (a 96 px tile is a
24 × 24 token map), so OpenMP's fork and join around every layer leaves the cores idle much of the time. A pool
starts ``processes`` spawned workers that each hold the encoder (its weights travel through torch's shared
memory), take batches of tiles from one queue and send back their features and the views each tile got; the
results come back in any order, tagged with their batch. :func:`encode_batch` is the one batch step both this
pool and the in-process engine (:mod:`.tile_mode`) run, so a tile's features do not depend on where it was
encoded (up to the last bits of a different thread count; tests/test_encoder_pool.py).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import signal
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..models.encoder import TileEncoder
from .options import MIN_POOL_TILES
from .runner import DeviceRunner

WORKER_TIMEOUT_S = 5.0
"""How often the wait for a result checks that every worker is still alive."""

READY = "ready"
"""The key of the message a worker sends once it holds the encoder (before any batch)."""


@dataclass(frozen=True)
class BatchEncoding:
    """How each batch is encoded: ``views`` dihedral views, the first-view band of views on demand (None: every
    view for every tile) and the CPU precision of :class:`~.runner.DeviceRunner`."""

    views: int = 1
    on_demand: tuple[float, float] | None = None
    precision: str = "fp32"


def encode_batch(
    encoder: TileEncoder, runner: DeviceRunner, tiles: np.ndarray | torch.Tensor, how: BatchEncoding
) -> tuple[torch.Tensor, np.ndarray]:
    """(features, the views each tile got as (n,) uint8) of one batch of uint8 tiles, on ``runner``'s device."""
    x = encoder.preprocess(tiles)
    if how.on_demand is None:
        out = runner.compute(lambda x: encoder.view_features(x, how.views), x)
        return out, np.full(len(x), how.views, np.uint8)
    out, chosen = runner.compute(lambda x: encoder.views_on_demand(x, how.views, how.on_demand), x)
    return out, chosen.numpy()


def pool_processes(requested: int | None, encoder: TileEncoder, tiles: int) -> int:
    """How many encoding processes for ``tiles`` tiles: ``requested`` when given (1: this process); else, on a
    CPU encoder with at least :data:`MIN_POOL_TILES` tiles (any number inside :func:`kept_pools`), one per torch
    thread; else 1. Always 1 inside a daemonic process (a cohort worker), which may not start children."""
    if multiprocessing.current_process().daemon:
        return 1
    if requested is not None:
        return requested
    small = tiles < MIN_POOL_TILES and current_kept_pool() is None  # a kept pool starts once for many slides
    if encoder.device.type != "cpu" or small:
        return 1
    return torch.get_num_threads()


def _serve(encoder: TileEncoder, how: BatchEncoding, tasks, results) -> None:
    """A worker: one torch thread, batches from ``tasks`` until None, (key, features, views, error) to ``results``.
    Ctrl-C is the parent's to handle (it stops the workers): a worker ignores it rather than print a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    runner = DeviceRunner("cpu", how.precision)
    results.put((READY, None, None, None))  # the encoder arrived: this worker can encode
    while (task := tasks.get()) is not None:
        key, tiles = task
        try:
            with torch.inference_mode():
                out, used = encode_batch(encoder, runner, tiles, how)
            results.put((key, out.float().numpy(), used, None))
        except Exception as error:  # sent home: the pool raises it in the parent, naming the worker's error
            results.put((key, None, None, f"{type(error).__name__}: {error}"))
            return


class EncoderPoolError(RuntimeError):
    """A worker process failed or died while encoding."""


class EncoderPool:
    """``processes`` spawned workers encoding batches of tiles with ``encoder`` as ``how`` says. ``submit`` a
    batch under a key, ``collect`` (key, features, views) of any finished one; ``outstanding`` batches are in
    the workers' hands. Use as a context manager: leaving it stops the workers."""

    def __init__(self, encoder: TileEncoder, processes: int, how: BatchEncoding) -> None:
        context = multiprocessing.get_context("spawn")  # fork would copy torch's OpenMP state mid-flight
        self.tasks, self.results = context.Queue(), context.Queue()
        self.outstanding = 0
        self.workers = [
            context.Process(
                target=_serve, args=(encoder, how, self.tasks, self.results), name=f"wsi-mamba-encode-{i}", daemon=True
            )
            for i in range(processes)
        ]
        try:
            for worker in self.workers:
                worker.start()
            self._wait_until_ready()
        except BaseException:  # the encoder could not be sent (pickling), no process could start, a worker died
            self.close()  # on start (the encoder cannot be rebuilt there: a missing module): stop the others
            raise

    def _wait_until_ready(self) -> None:
        """Wait for every worker's ready message; ``EncoderPoolError`` when one dies first."""
        for _ in self.workers:
            self._next_result("could not start")  # nothing was submitted yet: only ready messages

    def _next_result(self, death: str) -> tuple:
        """The next message of ``results``; ``EncoderPoolError`` ("encoding worker NAME {death} (exit code N)")
        when a worker is found dead while waiting for it."""
        while True:
            try:
                return self.results.get(timeout=WORKER_TIMEOUT_S)
            except queue.Empty:
                dead = [w for w in self.workers if not w.is_alive()]
                if dead:
                    raise EncoderPoolError(
                        f"encoding worker {dead[0].name} {death} (exit code {dead[0].exitcode})"
                    ) from None

    def submit(self, key: object, tiles: np.ndarray) -> None:
        self.tasks.put((key, tiles))
        self.outstanding += 1

    def collect(self) -> tuple[object, np.ndarray, np.ndarray]:
        """The next finished batch: (key, (n, D) float32 features, (n,) uint8 views). ``EncoderPoolError`` when a
        worker failed or died."""
        key, features, views, error = self._next_result("died")
        if error is not None:
            raise EncoderPoolError(f"encoding worker failed: {error}")
        self.outstanding -= 1
        return key, features, views

    def encode_all(
        self, batches: Iterable[tuple[object, np.ndarray]]
    ) -> Iterator[tuple[object, np.ndarray, np.ndarray]]:
        """(key, features, views) of every (key, tiles) of ``batches``, in the order they finish. At most two
        batches per worker wait at any time: the caller's reading keeps ahead of the workers without piling up."""
        waiting = 2 * len(self.workers)
        for key, tiles in batches:
            self.submit(key, tiles)
            while self.outstanding > waiting:
                yield self.collect()
        while self.outstanding:
            yield self.collect()

    def close(self) -> None:
        """Stop the workers: each gets an end marker; any still running after a short wait is terminated."""
        started = [worker for worker in self.workers if worker.pid is not None]
        for worker in started:
            if worker.is_alive():
                self.tasks.put(None)
        for worker in started:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.terminate()
                worker.join()
        self.tasks.close()
        self.results.close()

    def __enter__(self) -> EncoderPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _KeptPool:
    """The pool kept between slides inside :func:`kept_pools`, with what it was started for."""

    def __init__(self) -> None:
        self.pool: EncoderPool | None = None
        self.key: tuple | None = None
        self.unavailable = False  # the workers could not start once: the run's other slides stay in process

    def pool_for(
        self,
        encoder: TileEncoder,
        processes: int,
        how: BatchEncoding,
        start: Callable[[TileEncoder, int, BatchEncoding], EncoderPool | None],
    ) -> EncoderPool | None:
        """The kept pool when it was started for this encoder object, worker count and batch step; else one
        ``start`` makes (a different kept one is stopped first), kept for the next slide. None once a start
        failed in this run: the slides are then encoded in process."""
        key = (id(encoder), encoder.hash, processes, how)
        if self.key != key:
            self.drop()
            if self.unavailable:
                return None
            self.pool = start(encoder, processes, how)
            self.unavailable = self.pool is None
            self.key = key if self.pool is not None else None
        return self.pool

    def drop(self) -> None:
        """Stop the kept pool (after a worker's failure, or at the end of the run)."""
        if self.pool is not None:
            self.pool.close()
        self.pool, self.key = None, None


_kept: list[_KeptPool] = []


@contextlib.contextmanager
def kept_pools() -> Iterator[None]:
    """Within it, the encoding pool of one slide stays up for the next (the same encoder and settings), and slides
    of any size use it: a run over many slides (``extract`` of a cohort) pays the workers' start (a few seconds)
    once, and small slides, below :data:`MIN_POOL_TILES`, are encoded by the workers too. Leaving it stops them."""
    _kept.append(_KeptPool())
    try:
        yield
    finally:
        _kept.pop().drop()


def current_kept_pool() -> _KeptPool | None:
    """The innermost :func:`kept_pools` holder, or None outside one."""
    return _kept[-1] if _kept else None
