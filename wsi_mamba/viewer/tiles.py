"""Slide tiles for the viewer, made on demand: zoom ``z`` of a slide whose top zoom ``Z`` shows level-0 pixels
one to one cuts the slide into ``TILE_PX`` squares of ``2 ** (Z - z)`` level-0 px a side (zoom 0: one tile holds
the whole slide), as Deep Zoom and XYZ map tiles do. Each tile is read from the pyramid level that fits its
downsample, resized and JPEG-encoded; tiles live in a byte-bounded LRU cache. A tile whose read would be larger
than :data:`MAX_READ_PX` (a slide without a coarse enough level) is built from its four finer tiles instead, so
no request ever decodes a whole level.
"""

from __future__ import annotations

import io
import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..slide import Slide, open_slide
from ..slide.base import resize_rgb
from ..slide.tile_cache import TileCache

TILE_PX = 256
MAX_READ_PX = 4096 * 4096
"""Most pixels one tile may read from a slide level; above it the tile is made from its four finer tiles."""
DEFAULT_CACHE_BYTES = 256 << 20
"""Tile cache size (encoded tiles and the pixels of tiles built from finer ones)."""
MAX_OPEN_SLIDES = 8
"""Slides kept open at once (the least recently used idle one is closed beyond this)."""
JPEG_QUALITY = 85
BACKGROUND = 255  # outside the slide: white, as read_region pads


@dataclass(frozen=True)
class TilePyramid:
    """The tile layout of a ``width`` x ``height`` (level-0 px) slide."""

    width: int
    height: int
    tile_px: int = TILE_PX

    @property
    def max_zoom(self) -> int:
        """The zoom at which a tile pixel is a level-0 pixel."""
        return max(0, math.ceil(math.log2(max(self.width, self.height, 1) / self.tile_px)))

    def side0(self, zoom: int) -> int:
        """Level-0 px a tile of ``zoom`` spans on each side."""
        return self.tile_px * 2 ** (self.max_zoom - zoom)

    def grid(self, zoom: int) -> tuple[int, int]:
        """(columns, rows) of tiles at ``zoom``."""
        side = self.side0(zoom)
        return math.ceil(self.width / side), math.ceil(self.height / side)

    def contains(self, zoom: int, col: int, row: int) -> bool:
        """Whether tile (``col``, ``row``) of ``zoom`` exists (holds part of the slide)."""
        if not 0 <= zoom <= self.max_zoom:
            return False
        cols, rows = self.grid(zoom)
        return 0 <= col < cols and 0 <= row < rows


class SlideTiles:
    """JPEG tiles of the slides of a catalog, by slide id; thread-safe (the server reads in worker threads)."""

    def __init__(
        self,
        slide_paths: dict[str, Path],
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        max_open: int = MAX_OPEN_SLIDES,
        opener: Callable[[Path], Slide] = open_slide,
    ) -> None:
        self._paths = dict(slide_paths)
        self._cache = TileCache(cache_bytes)
        self._max_open = max_open
        self._opener = opener
        self._open: OrderedDict[str, Slide] = OrderedDict()
        self._users: dict[str, int] = {}
        self._lock = threading.Lock()

    # ---- open slides, bounded --------------------------------------------------------------------
    def _acquire(self, slide_id: str) -> Slide:
        with self._lock:
            slide = self._open.get(slide_id)
            if slide is None:
                slide = self._opener(self._paths[slide_id])
                self._open[slide_id] = slide
            self._open.move_to_end(slide_id)
            self._users[slide_id] = self._users.get(slide_id, 0) + 1
            return slide

    def _release(self, slide_id: str) -> None:
        with self._lock:
            self._users[slide_id] -= 1
            idle = [key for key in self._open if self._users.get(key, 0) == 0]
            while len(self._open) > self._max_open and idle:
                self._open.pop(idle.pop(0)).close()

    def close(self) -> None:
        """Close every open slide."""
        with self._lock:
            while self._open:
                self._open.popitem()[1].close()

    # ---- tiles -----------------------------------------------------------------------------------
    def pyramid(self, slide_id: str) -> TilePyramid:
        """The tile layout of slide ``slide_id`` (``KeyError`` for an id not served)."""
        slide = self._acquire(slide_id)
        try:
            return TilePyramid(*slide.dimensions)
        finally:
            self._release(slide_id)

    def tile(self, slide_id: str, zoom: int, col: int, row: int) -> bytes | None:
        """The JPEG bytes of a tile, None when the tile does not exist; ``KeyError`` for an unknown slide."""
        pyramid = self.pyramid(slide_id)
        if not pyramid.contains(zoom, col, row):
            return None
        key = ("jpeg", slide_id, zoom, col, row)
        encoded = self._cache.get(key, lambda: _jpeg(self._pixels(slide_id, pyramid, zoom, col, row)))
        return encoded.tobytes()

    def _pixels(self, slide_id: str, pyramid: TilePyramid, zoom: int, col: int, row: int) -> np.ndarray:
        """(TILE_PX, TILE_PX, 3) uint8 of a tile; white outside the slide."""
        side0 = pyramid.side0(zoom)
        x0, y0 = col * side0, row * side0
        w0, h0 = min(side0, pyramid.width - x0), min(side0, pyramid.height - y0)
        downsample = side0 / pyramid.tile_px
        out = np.full((pyramid.tile_px, pyramid.tile_px, 3), BACKGROUND, np.uint8)
        out_w, out_h = max(1, round(w0 / downsample)), max(1, round(h0 / downsample))
        slide = self._acquire(slide_id)
        try:
            level = slide.best_level_for_downsample(downsample)
            level_ds = slide.level_downsamples[level]
            read_w, read_h = math.ceil(w0 / level_ds), math.ceil(h0 / level_ds)
            if read_w * read_h <= MAX_READ_PX or zoom == pyramid.max_zoom:
                pixels = slide.read_region((x0, y0), level, (read_w, read_h))
                out[:out_h, :out_w] = resize_rgb(pixels, (out_w, out_h))
                return out
        finally:
            self._release(slide_id)
        return self._from_children(slide_id, pyramid, zoom, col, row)

    def _from_children(self, slide_id: str, pyramid: TilePyramid, zoom: int, col: int, row: int) -> np.ndarray:
        """A tile made of its four tiles at ``zoom + 1``, halved (for slides without a coarse enough level)."""
        half = pyramid.tile_px // 2
        out = np.full((pyramid.tile_px, pyramid.tile_px, 3), BACKGROUND, np.uint8)
        for dy in (0, 1):
            for dx in (0, 1):
                child = (zoom + 1, 2 * col + dx, 2 * row + dy)
                if pyramid.contains(*child):
                    key = ("rgb", slide_id, *child)
                    pixels = self._cache.get(key, lambda c=child: self._pixels(slide_id, pyramid, *c))
                    out[dy * half : (dy + 1) * half, dx * half : (dx + 1) * half] = resize_rgb(pixels, (half, half))
        return out


def _jpeg(pixels: np.ndarray) -> np.ndarray:
    """JPEG bytes of an RGB tile, as a uint8 array (the tile cache counts arrays' bytes)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return np.frombuffer(buffer.getvalue(), np.uint8)
