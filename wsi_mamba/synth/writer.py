"""Writing slides: pyramidal TIFF/SVS generated tile by tile from a renderer, atomically.

Pixels come from a renderer (default ``procedural.render``, a seeded function of level-0 position), so slides
of any size are written tile by tile (tifffile takes a generator of tiles) without holding the image in
memory, and the same seed gives the same files.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np
import tifffile

from ..outputs.atomic import atomic_path
from .procedural import MPP, render

__all__ = ["COMPRESSIONS", "FLAVOURS", "TILE", "Renderer", "SlideLike", "tile_count", "write_slide"]

APP_MAG = 40  # at MPP; other resolutions get the objective power in proportion (0.972 µm/px: 10x)
TILE = 256
SVS_HEADER = "Aperio Image Library v12.0.15"  # the first line of every SVS ImageDescription
FLAVOURS = ("svs", "tiff")
COMPRESSIONS = {"jpeg": "jpeg", "lossless": "zlib"}


class SlideLike(Protocol):
    """What the writer needs of a slide description (``SlideSpec`` or another generator's)."""

    width: int
    height: int
    mpp: float
    seed: int


Renderer = Callable[[SlideLike, float, float, int, int, float], np.ndarray]
"""``render(spec, x0, y0, width, height, downsample)`` → (height, width, 3) uint8, as :func:`render`."""


def _levels(width: int, height: int, factor: int) -> list[tuple[int, int, int]]:
    """(w, h, downsample) per level, down to a level whose longer side is ≤ 256 px."""
    levels = [(width, height, 1)]
    while max(levels[-1][:2]) > 256:
        ds = levels[-1][2] * factor
        levels.append((max(1, width // ds), max(1, height // ds), ds))
    return levels


def _tiles(
    spec: SlideLike, width: int, height: int, ds: int, tick: Callable[[], None] | None, renderer: Renderer = render
) -> Iterator[np.ndarray]:
    """Tiles of one level in row-major order, rendered on a few threads with a bounded look-ahead."""
    origins = ((tx * ds, ty * ds) for ty in range(0, height, TILE) for tx in range(0, width, TILE))
    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        pending: deque[Future[np.ndarray]] = deque()
        for x, y in origins:
            pending.append(pool.submit(renderer, spec, x, y, TILE, TILE, ds))
            if len(pending) >= 2 * workers:
                yield _done(pending.popleft(), tick)
        while pending:
            yield _done(pending.popleft(), tick)


def _done(future: Future[np.ndarray], tick: Callable[[], None] | None) -> np.ndarray:
    """The future's tile, counted before it is handed on (the consumer may stop after the last one)."""
    tile = future.result()
    if tick is not None:
        tick()
    return tile


def tile_count(width: int, height: int, flavour: str) -> int:
    """Tiles written for a slide of this size (for progress bars)."""
    return sum(
        math.ceil(w / TILE) * math.ceil(h / TILE)
        for w, h, _ in _levels(width, height, 4 if flavour == "svs" else 2)
    )


def write_slide(
    spec: SlideLike,
    path: str | os.PathLike[str],
    flavour: str = "tiff",
    quality: int = 85,
    tick: Callable[[], None] | None = None,
    renderer: Renderer = render,
    compression: str = "jpeg",
) -> Path:
    """Write ``spec`` as a JPEG-tiled pyramidal TIFF: flavour "svs" (Aperio layout and description, 4×
    levels, thumbnail/label/macro) or "tiff" (generic, resolution tags, 2× levels). Atomic (temp + rename).
    ``renderer`` gives the pixels (default: the procedural :func:`render`); ``compression="lossless"``
    writes deflate tiles instead of JPEG."""
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {FLAVOURS}, got {flavour!r}")
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {tuple(COMPRESSIONS)}, got {compression!r}")
    path = Path(path)
    w0, h0 = spec.width, spec.height
    levels = _levels(w0, h0, 4 if flavour == "svs" else 2)
    common = dict(
        photometric="rgb",
        compression=COMPRESSIONS[compression],
        compressionargs={"level": quality if compression == "jpeg" else 6},
        metadata=None,
    )
    tiled = dict(common, tile=(TILE, TILE), dtype=np.uint8)
    if flavour == "tiff":
        res = 1e4 / spec.mpp
        tiled.update(resolution=(res, res), resolutionunit="CENTIMETER")
    bigtiff = w0 * h0 * 3 > 2**31
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tw:
        for index, (w, h, ds) in enumerate(levels):
            description, subfiletype = _level_tags(spec, flavour, index, w, h, quality)
            tw.write(
                _tiles(spec, w, h, ds, tick, renderer),
                shape=(h, w, 3),
                description=description,
                subfiletype=subfiletype,
                **tiled,
            )
            if flavour == "svs" and index == 0:
                _write_thumbnail(tw, spec, SVS_HEADER, common, renderer)
        if flavour == "svs":
            _write_label_macro(tw, spec, SVS_HEADER, common, renderer)
    return path


def _level_tags(spec: SlideLike, flavour: str, index: int, w: int, h: int, quality: int) -> tuple[str | None, int]:
    """ImageDescription and NewSubfileType of pyramid level ``index`` (w × h): Aperio's for SVS (the base level
    names the tile size, quality, AppMag and MPP), none and reduced-resolution for generic TIFF."""
    if flavour != "svs":
        return None, (1 if index else 0)
    w0, h0 = spec.width, spec.height
    if index:
        return f"{SVS_HEADER}\r\n{w0}x{h0} -> {w}x{h}", 0
    return (
        f"{SVS_HEADER}\r\n{w0}x{h0} [0,0 {w0}x{h0}] ({TILE}x{TILE}) JPEG/RGB Q={quality}"
        f"|AppMag = {max(1, round(APP_MAG * MPP / spec.mpp))}|MPP = {spec.mpp}",
        0,
    )


def _write_thumbnail(
    tw: tifffile.TiffWriter, spec: SlideLike, header: str, common: dict, renderer: Renderer = render
) -> None:
    ds = max(spec.width, spec.height) / 768
    w, h = max(1, round(spec.width / ds)), max(1, round(spec.height / ds))
    tw.write(
        renderer(spec, 0, 0, w, h, ds),
        description=f"{header}\r\n{spec.width}x{spec.height} -> {w}x{h}",
        rowsperstrip=16,
        **common,
    )


def _write_label_macro(
    tw: tifffile.TiffWriter, spec: SlideLike, header: str, common: dict, renderer: Renderer = render
) -> None:
    rng = np.random.default_rng(spec.seed)
    label = np.full((300, 300, 3), 250, np.uint8)
    label[40:260, 40:260] = np.where(rng.random((220, 1, 1)) < 0.5, 20, 250).astype(np.uint8)  # a barcode
    tw.write(
        label,
        description=f"{header}\r\nlabel 300x300",
        subfiletype=1,
        rowsperstrip=64,
        photometric="rgb",
        compression="lzw",
        metadata=None,
    )
    ds = max(spec.width, spec.height) / 600
    macro = np.full((400, 1000, 3), 240, np.uint8)
    w, h = min(600, round(spec.width / ds)), min(400, round(spec.height / ds))
    macro[:h, 380 : 380 + w] = renderer(spec, 0, 0, w, h, ds)
    macro[:, :300] = 230
    tw.write(macro, description=f"{header}\r\nmacro 1000x400", subfiletype=9, rowsperstrip=16, **common)
