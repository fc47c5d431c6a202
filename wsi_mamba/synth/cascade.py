"""Coarser pyramid levels drawn from the level above while that level is written, instead of drawn again.

Each tile of a level is averaged over ``factor`` × ``factor`` blocks into the next level's current row of tiles
(one band ``tile`` rows high per coarser level); a completed row is encoded as the file stores it, spooled to
a temporary file and fed on to the level below. Once level 0 has been written every coarser level is ready
and the writer copies its encoded tiles. Memory: one band per coarser level (and, on request, the first
level small enough to hold whole, for thumbnails), whatever the slide's size.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from .level_pyramid import LevelPyramid, block_mean

__all__ = ["LevelCascade", "block_mean"]


class LevelCascade:
    """Levels 1.. of a pyramid of ``sizes`` ((width, height) per level, level 0 first; each ``factor`` times
    smaller than the one above) from level 0's tiles, given to :meth:`add` in row-major order. ``encode``
    turns a (tile, tile, 3) uint8 tile into the bytes the file stores; spools go to ``spool_dir``. With
    ``hold_pixels`` the first coarser level of at most that many pixels is also kept whole (:meth:`renderer`);
    ``base_downsample`` is level 0's downsample in the slide (when the cascade starts below its level 0).
    """

    def __init__(
        self,
        sizes: Sequence[tuple[int, int]],
        factor: int,
        tile: int,
        encode: Callable[[np.ndarray], bytes],
        spool_dir: str | os.PathLike[str] | None = None,
        hold_pixels: int = 0,
        base_downsample: int = 1,
    ) -> None:
        if tile % factor:
            raise ValueError(f"the level factor {factor} does not divide the {tile} px tiles")
        self.sizes, self.factor, self.tile, self.encode = list(sizes), factor, tile, encode
        self.base_downsample = base_downsample
        self.cols = [math.ceil(w / tile) for w, _ in self.sizes]
        self.rows = [math.ceil(h / tile) for _, h in self.sizes]
        self.bands = [np.zeros((tile, c * tile if k else 0, 3), np.uint8) for k, c in enumerate(self.cols)]
        self.seen = [0] * len(self.sizes)
        self.spools = [tempfile.TemporaryFile(dir=spool_dir) for _ in self.sizes[1:]]
        self.lengths: list[list[int]] = [[] for _ in self.sizes]
        small = [k for k, (w, h) in enumerate(self.sizes) if k and w * h <= hold_pixels]
        self.held_level = small[0] if small else None
        self.held: np.ndarray | None = None
        self._held_pyramid: LevelPyramid | None = None  # the held level's own pyramid, made once it is complete
        if self.held_level is not None:
            w, h = self.sizes[self.held_level]
            self.held = np.zeros((h, w, 3), np.uint8)

    def add(self, level: int, tile: np.ndarray) -> None:
        """The next tile of ``level`` (row-major): into the band of the level below, which is flushed once
        its row of tiles is complete."""
        ty, tx = divmod(self.seen[level], self.cols[level])
        self.seen[level] += 1
        t, f = self.tile, self.factor
        if level == self.held_level and self.held is not None:
            piece = self.held[ty * t : (ty + 1) * t, tx * t : (tx + 1) * t]
            piece[:] = tile[: piece.shape[0], : piece.shape[1]]
        if level + 1 == len(self.sizes):
            return
        band, s = self.bands[level + 1], t // f
        x = tx * s
        if x < band.shape[1] and ty // f < self.rows[level + 1]:
            reduced = block_mean(tile, f)
            band[(ty % f) * s : (ty % f + 1) * s, x : x + s] = reduced[:, : band.shape[1] - x]
        if tx == self.cols[level] - 1 and (ty % f == f - 1 or ty == self.rows[level] - 1):
            self._flush(level + 1, ty // f)

    def _flush(self, level: int, row: int) -> None:
        """Encode and spool row ``row`` of ``level``'s tiles, feed them to the level below, clear the band."""
        if row >= self.rows[level]:
            return
        band, t = self.bands[level], self.tile
        spool, lengths = self.spools[level - 1], self.lengths[level]
        for tx in range(self.cols[level]):
            tile = np.ascontiguousarray(band[:, tx * t : (tx + 1) * t])
            data = self.encode(tile)
            spool.write(data)
            lengths.append(len(data))
            self.add(level, tile)
        band[:] = 0

    def tiles(self, level: int, tick: Callable[[], None] | None = None) -> Iterator[bytes]:
        """The encoded tiles of ``level`` ≥ 1 in row-major order (after level 0 has been added whole)."""
        expected = self.rows[level] * self.cols[level]
        if len(self.lengths[level]) != expected:
            raise RuntimeError(f"level {level} has {len(self.lengths[level])} of its {expected} tiles")
        spool = self.spools[level - 1]
        spool.seek(0)
        for length in self.lengths[level]:
            data = spool.read(length)
            if tick is not None:
                tick()
            yield data

    def renderer(self, fallback: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        """A ``write_slide`` renderer for thumbnails (slide coordinates): the held level's pixels where it is
        complete and fine enough, else ``fallback``."""
        k = self.held_level
        if self.held is None or k is None or len(self.lengths[k]) < self.rows[k] * self.cols[k]:
            return fallback
        held_ds = self.base_downsample * self.factor**k
        if self._held_pyramid is None:  # the thumbnail and the label/macro images share it
            self._held_pyramid = LevelPyramid(self.held, 2, (255, 255, 255))
        pyramid = self._held_pyramid

        def render(spec: object, x0: float, y0: float, width: int, height: int, ds: float) -> np.ndarray:
            if ds < held_ds:
                return fallback(spec, x0, y0, width, height, ds)
            return pyramid(spec, x0 / held_ds, y0 / held_ds, width, height, ds / held_ds)

        return render

    def close(self) -> None:
        """Delete the spools."""
        for spool in self.spools:
            spool.close()
