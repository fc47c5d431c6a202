"""Writing slides: pyramidal TIFF/SVS generated tile by tile from a renderer, atomically.

Pixels come from a renderer (default ``procedural.render``, a seeded function of level-0 position), so slides
of any size are written tile by tile (tifffile takes a generator of tiles) without holding the image in
memory, and the same seed gives the same files. With ``pyramid="downsample"`` only the finest levels are drawn:
each coarser level is the area average of the one above, computed while that one is written (``cascade``).
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import imagecodecs
import numpy as np
import tifffile

from ..outputs.atomic import atomic_path
from .cascade import LevelCascade
from .procedural import MPP, render

__all__ = ["COMPRESSIONS", "FLAVOURS", "PYRAMIDS", "TILE", "Renderer", "SlideLike", "tile_count", "write_slide"]

APP_MAG = 40  # at MPP; other resolutions get the objective power in proportion (0.972 µm/px: 10x)
TILE = 256
SVS_HEADER = "Aperio Image Library v12.0.15"  # the first line of every SVS ImageDescription
FLAVOURS = ("svs", "tiff")
COMPRESSIONS = {"jpeg": "jpeg", "lossless": "zlib"}
PYRAMIDS = ("render", "downsample")  # coarser levels drawn by the renderer, or averaged from the level above
HOLD_PIXELS = 32_000_000  # downsample: the largest coarser level kept whole for the SVS thumbnail and macro


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
    spec: SlideLike,
    width: int,
    height: int,
    ds: int,
    tick: Callable[[], None] | None,
    renderer: Renderer = render,
    sink: Callable[[np.ndarray], None] | None = None,
) -> Iterator[np.ndarray]:
    """Tiles of one level in row-major order, rendered on a few threads with a bounded look-ahead; each is
    given to ``sink`` too (in order) before it is handed on."""
    origins = ((tx * ds, ty * ds) for ty in range(0, height, TILE) for tx in range(0, width, TILE))
    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        pending: deque[Future[np.ndarray]] = deque()
        for x, y in origins:
            pending.append(pool.submit(renderer, spec, x, y, TILE, TILE, ds))
            if len(pending) >= 2 * workers:
                yield _done(pending.popleft(), tick, sink)
        while pending:
            yield _done(pending.popleft(), tick, sink)


def _done(
    future: Future[np.ndarray], tick: Callable[[], None] | None, sink: Callable[[np.ndarray], None] | None
) -> np.ndarray:
    """The future's tile, sunk and counted before it is handed on (the consumer may stop after the last one)."""
    tile = future.result()
    if sink is not None:
        sink(tile)
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
    pyramid: str = "render",
    drawn: int = 1,
) -> Path:
    """Write ``spec`` as a JPEG-tiled pyramidal TIFF: flavour "svs" (Aperio layout and description, 4×
    levels, thumbnail/label/macro) or "tiff" (generic, resolution tags, 2× levels). Atomic (temp + rename).
    ``renderer`` gives the pixels (default: the procedural :func:`render`); ``compression="lossless"``
    writes deflate tiles instead of JPEG. ``pyramid="downsample"`` draws only the levels at downsample ≤
    ``drawn`` with the renderer and each coarser level as the area average of the one above (for renderers
    whose every level costs as much as level 0; memory: a band of tiles per level)."""
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {FLAVOURS}, got {flavour!r}")
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {tuple(COMPRESSIONS)}, got {compression!r}")
    if pyramid not in PYRAMIDS:
        raise ValueError(f"pyramid must be one of {PYRAMIDS}, got {pyramid!r}")
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
    cascade, first = None, 0  # the levels after ``first`` come from the cascade
    if pyramid == "downsample":
        first = max(i for i, (_, _, ds) in enumerate(levels) if ds <= max(1, drawn))
    if pyramid == "downsample" and first + 1 < len(levels):
        sizes = [(w, h) for w, h, _ in levels[first:]]
        encode = _tile_encoder(compression, quality)
        hold = HOLD_PIXELS if flavour == "svs" else 0
        factor = levels[1][2]
        cascade = LevelCascade(sizes, factor, TILE, encode, path.parent, hold, base_downsample=levels[first][2])
    try:
        with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tw:
            for index, (w, h, ds) in enumerate(levels):
                description, subfiletype = _level_tags(spec, flavour, index, w, h, quality)
                if cascade is not None and index > first:
                    data: Iterator = cascade.tiles(index - first, tick)
                else:
                    sink = _sink(cascade) if cascade is not None and index == first else None
                    data = _tiles(spec, w, h, ds, tick, renderer, sink)
                tw.write(data, shape=(h, w, 3), description=description, subfiletype=subfiletype, **tiled)
                if flavour == "svs" and index == 0:
                    small = renderer if cascade is None else cascade.renderer(renderer)
                    _write_thumbnail(tw, spec, SVS_HEADER, common, small)
            if flavour == "svs":
                small = renderer if cascade is None else cascade.renderer(renderer)
                _write_label_macro(tw, spec, SVS_HEADER, common, small)
    finally:
        if cascade is not None:
            cascade.close()
    return path


def _sink(cascade: LevelCascade) -> Callable[[np.ndarray], None]:
    return lambda tile: cascade.add(0, tile)


def _tile_encoder(compression: str, quality: int) -> Callable[[np.ndarray], bytes]:
    """A (TILE, TILE, 3) uint8 tile as ``tw.write(..., **tiled)`` below stores it: tifffile's own encoder with
    the arguments it derives (JPEG: YCbCr 2×2 subsampled at ``quality``; lossless: deflate level 6), through
    imagecodecs, the codec library tifffile itself calls for them."""
    if compression == "jpeg":
        return lambda tile: imagecodecs.jpeg_encode(
            tile, level=quality, subsampling=(2, 2), colorspace="RGB", outcolorspace="YCBCR"
        )
    return lambda tile: imagecodecs.deflate_encode(tile, level=6)


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
