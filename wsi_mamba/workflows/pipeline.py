"""Tile mode's encoding pipeline: tiles read and decoded on threads, encoded on the device in this thread.

:func:`encode_tiles` consumes :func:`~wsi_mamba.slide.stream.stream_batches`: a pool of reader threads decodes
tiles ahead of the encoder (bounded queue), and the feeder thread computes each batch's colour statistics (and,
on CUDA, copies its tiles into pinned memory), so the thread that drives the encoder only encodes. On CUDA the
tiles go to the device with non-blocking copies and the features come back the same way, one batch in flight:
the GPU encodes batch k while this thread hands it batch k + 1. Features are those of
``encoder.encode`` on the same batches (tests/test_pipeline.py compares with a plain sequential loop).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..devices import autocast
from ..evaluation.colour import COLOUR_STATS, tile_colour_stats
from ..models.encoder import TileEncoder
from ..slide.base import Slide
from ..slide.errors import TileDecodeError
from ..slide.stream import stream_batches
from ..slide.tiling import TileGrid
from .configs import TileOptions

Prepared = tuple[np.ndarray, "torch.Tensor | None"]
"""What the feeder thread makes of a batch: its colour statistics and (CUDA) its tiles in pinned memory."""

InFlight = tuple[np.ndarray, "np.ndarray | torch.Tensor", "torch.cuda.Event | None", "torch.Tensor | None"]
"""A launched batch: grid indices, features (a pinned host tensor being filled on CUDA), the event that ends it,
and its pinned tiles (kept until then)."""


def prepare_batch(pin: bool) -> Callable[[np.ndarray], Prepared]:
    """The feeder thread's work on each batch: colour statistics, and the tiles pinned when ``pin``."""

    def prepare(tiles: np.ndarray) -> Prepared:
        return tile_colour_stats(tiles), torch.from_numpy(tiles).pin_memory() if pin else None

    return prepare


@torch.inference_mode()
def launch(encoder: TileEncoder, tiles: np.ndarray, pinned: torch.Tensor | None, views: int = 1) -> tuple:
    """Start encoding a batch (features averaged over ``views`` dihedral views): on the CPU the finished (n, dim)
    features and no event; on CUDA the features copying (non-blocking) into a pinned host tensor and the event
    recorded after the copy."""
    if pinned is None:
        return encoder.encode(tiles, views), None
    x = encoder.preprocess(pinned)  # non-blocking host-to-device copy from pinned memory
    with autocast(x.device):
        out = encoder.view_features(x, views)
    host = torch.empty(tuple(out.shape), dtype=torch.float32, pin_memory=True)
    host.copy_(out.float(), non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return host, event


def encode_tiles(
    slide: Slide,
    grid: TileGrid,
    encoder: TileEncoder,
    options: TileOptions = TileOptions(),
    on_batch: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[int, TileDecodeError]]:
    """Features (n, dim) float32 and colour statistics (n, K) float32 of every tile of ``grid`` (rows of tiles
    that cannot be decoded stay zero) and the decode errors by grid index. ``on_batch(k)`` after each batch."""
    features = np.zeros((len(grid), encoder.dim), np.float32)
    colour = np.zeros((len(grid), len(COLOUR_STATS)), np.float32)
    errors: dict[int, TileDecodeError] = {}
    if not len(grid):
        return features, colour, errors
    cuda = encoder.device.type == "cuda"

    def finish(item: InFlight) -> None:
        indices, out, event, _ = item
        if event is not None:
            event.synchronize()
        features[indices] = out.numpy() if isinstance(out, torch.Tensor) else out
        if on_batch is not None:
            on_batch(len(indices))

    in_flight: InFlight | None = None
    batches = stream_batches(
        slide, grid, options.batch_size, workers=options.workers, on_error=errors.__setitem__,
        prepare=prepare_batch(cuda),
    )
    for batch in batches:
        stats, pinned = batch.prepared
        colour[batch.indices] = stats
        launched = (batch.indices, *launch(encoder, batch.tiles, pinned, options.views or 1), pinned)
        if in_flight is not None:
            finish(in_flight)  # the previous batch's features, while the device works on this one
        in_flight = launched
    if in_flight is not None:
        finish(in_flight)
    return features, colour, errors
