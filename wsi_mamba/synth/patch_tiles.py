"""A planned real-tissue slide drawn tile by tile: the ``write_slide`` renderer for slides too large to hold
(CAMELYON16 size, 10^5 × 2·10^5 px) and for level 0 upsampled from the patches (20x or 40x from 10x patches).

Pyramid levels whose downsample divides the cell side are drawn from the cells directly (each patch resized
to the cell's size at that level, dihedral transform and the slide's stain shift applied, boundary cells cut
by the outline's opacity at that level, glass with seeded noise elsewhere); the first of them small enough to
hold (``in_memory_pixels``) is drawn once, band by band, and the coarser levels, thumbnail and macro come from
it. Memory is a few tiles, the processed patches of a few cell rows and that small level: it does not grow
with the slide's area. The real-tissue writers (``from_patches``) ask it only for the levels down to the
patches' own resolution and average the coarser ones from those (``write_slide(..., pyramid="downsample")``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from ..data.dihedral import dihedral
from ..data.patches import PatchSource
from ..data.stain import hed_scale_shift
from ..slide.tile_cache import TileCache
from .level_pyramid import LevelPyramid
from .patch_plan import PatchSlideSpec
from .writer import TILE

__all__ = ["IN_MEMORY_PIXELS", "PatchTileRenderer"]

IN_MEMORY_PIXELS = 32_000_000  # the largest level drawn whole (96 MB of RGB), for the coarse levels
BAND = 256  # rows of the in-memory level drawn at a time
GLASS = 512  # regions take the slide's glass texture (2 GLASS a side) at offsets below GLASS
CELL_CACHE_BYTES = 64 << 20  # cells resized to the level being drawn, most recent kept (at most a cell row)
SOURCE_CACHE_BYTES = 96 << 20  # stained source patches, most recent kept: large slides repeat a pool's patches


class PatchTileRenderer:
    """``renderer(spec, x0, y0, width, height, downsample)`` for :func:`~wsi_mamba.synth.writer.write_slide`
    over ``spec``'s patches from ``source``; ``factor`` is the flavour's level factor (svs 4, tiff 2).
    Thread-safe (the writer draws a few tiles at once)."""

    def __init__(
        self,
        spec: PatchSlideSpec,
        source: PatchSource,
        factor: int,
        in_memory_pixels: int = IN_MEMORY_PIXELS,
        workers: int = 2,
    ) -> None:
        self.spec, self.source, self.workers = spec, source, workers
        rows, cols = spec.grid_shape
        self.cell_index = np.full((rows, cols), -1, np.int64)
        self.cell_index[spec.cells[:, 0], spec.cells[:, 1]] = np.arange(len(spec.cells))
        fill = np.clip(np.round(spec.background), 2, 253).astype(np.uint8) - 2
        noise = np.random.default_rng([spec.seed, 2]).integers(0, 5, (2 * GLASS, 2 * GLASS, 1), dtype=np.uint8)
        self.glass = noise + fill  # the background colour ± 2 grey levels
        self.stained = spec.stain_alpha != (1.0, 1.0, 1.0) or spec.stain_beta != (0.0, 0.0, 0.0)
        self.memory_ds = _memory_downsample(spec, factor, in_memory_pixels)
        self._pyramid: LevelPyramid | None = None
        self._pyramid_lock = threading.Lock()
        self._patches: OrderedDict[int, np.ndarray] = OrderedDict()  # processed patches, least recent first
        self._patches_lock = threading.Lock()
        self._capacity = 3 * cols + 64  # a few cell rows: tiles are drawn row by row
        self._cells: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()  # (cell, size) → resized patch
        self._cells_bytes = 0
        self._sources = TileCache(SOURCE_CACHE_BYTES)  # source index → stained patch

    def __call__(self, spec: object, x0: float, y0: float, width: int, height: int, ds: float) -> np.ndarray:
        if ds < self.memory_ds:
            if ds != int(ds) or self.spec.px % int(ds):
                raise ValueError(f"downsample {ds} does not divide the {self.spec.px} px cells")
            return self.region(round(x0 / ds), round(y0 / ds), width, height, int(ds))
        m = self.memory_ds
        return self.pyramid()(spec, x0 / m, y0 / m, width, height, ds / m)

    def pyramid(self) -> LevelPyramid:
        """The in-memory level (downsample ``memory_ds``) and its coarser levels, drawn on first use."""
        with self._pyramid_lock:
            if self._pyramid is None:
                m, spec = self.memory_ds, self.spec
                w, h = spec.width // m, spec.height // m
                level = np.empty((h, w, 3), np.uint8)

                def band(top: int) -> None:
                    level[top : top + BAND] = self.region(0, top, w, min(BAND, h - top), m)

                with ThreadPoolExecutor(self.workers) as pool:
                    list(pool.map(band, range(0, h, BAND)))
                self._pyramid = LevelPyramid(level, 2, spec.background)
            return self._pyramid

    def region(self, x: int, y: int, width: int, height: int, ds: int) -> np.ndarray:
        """Pixels [y, y + height) × [x, x + width) of the level at integer downsample ``ds`` (which divides the
        cell side), (height, width, 3) uint8."""
        cell = self.spec.px // ds
        oy, ox = (hash((ds, x, y, k)) % GLASS for k in (0, 1))  # ints hash the same in every process
        if height <= GLASS and width <= GLASS:
            out = self.glass[oy : oy + height, ox : ox + width].copy()
        else:  # a band of the in-memory level
            out = self.glass[((oy + np.arange(height)) % GLASS)[:, None], (ox + np.arange(width)) % GLASS]
        rows, cols = self.cell_index.shape
        for r in range(y // cell, min(rows, (y + height - 1) // cell + 1)):
            for c in range(x // cell, min(cols, (x + width - 1) // cell + 1)):
                i = int(self.cell_index[r, c])
                if i >= 0:
                    self._paste(out, i, r * cell - y, c * cell - x, cell, ds)
        return out

    def _paste(self, out: np.ndarray, i: int, top: int, left: int, cell: int, ds: int) -> None:
        """Cell ``i`` (``cell`` px a side at this level) onto ``out`` with its top-left at (top, left)."""
        patch = self._resized(i, cell)
        t, lft = max(top, 0), max(left, 0)
        b, r = min(top + cell, out.shape[0]), min(left + cell, out.shape[1])
        piece = patch[t - top : b - top, lft - left : r - left]
        if self.spec.interior[i]:
            out[t:b, lft:r] = piece
            return
        alpha = self._alpha(i, ds)[t - top : b - top, lft - left : r - left, None]
        glass = out[t:b, lft:r].astype(np.float32)
        out[t:b, lft:r] = (alpha * piece + (1 - alpha) * glass + 0.5).astype(np.uint8)

    def _alpha(self, i: int, ds: int) -> np.ndarray:
        """Tissue opacity over cell ``i`` at downsample ``ds`` (block means of level 0's)."""
        spec = self.spec
        r, c = (int(v) for v in spec.cells[i])
        alpha = spec.alpha(c * spec.px, r * spec.px, spec.px, spec.px)
        n = spec.px // ds
        return alpha.reshape(n, ds, n, ds).mean(axis=(1, 3)) if ds > 1 else alpha

    def _resized(self, i: int, cell: int) -> np.ndarray:
        """Cell ``i``'s patch at ``cell`` px a side (upsampled bilinear, or box-reduced), recent ones cached:
        a cell spans up to four tiles."""
        patch = self._patch(i)
        if patch.shape[0] == cell:
            return patch
        key = (i, cell)
        with self._patches_lock:
            resized = self._cells.get(key)
            if resized is not None:
                self._cells.move_to_end(key)
                return resized
        filt = Image.Resampling.BILINEAR if cell > patch.shape[0] else Image.Resampling.BOX
        resized = np.asarray(Image.fromarray(patch).resize((cell, cell), filt))
        with self._patches_lock:
            if key not in self._cells:
                self._cells[key] = resized
                self._cells_bytes += resized.nbytes
            while self._cells_bytes > CELL_CACHE_BYTES or len(self._cells) > self._capacity // 3:
                self._cells_bytes -= self._cells.popitem(last=False)[1].nbytes
        return resized

    def _patch(self, i: int) -> np.ndarray:
        """Cell ``i``'s patch, transformed and stained at the patches' resolution (cached for a few cell rows)."""
        with self._patches_lock:
            patch = self._patches.get(i)
            if patch is not None:
                self._patches.move_to_end(i)
                return patch
        spec = self.spec
        patch = np.ascontiguousarray(dihedral(self._stained(int(spec.patches[i])), int(spec.transforms[i])))
        with self._patches_lock:
            self._patches[i] = patch
            while len(self._patches) > self._capacity:
                self._patches.popitem(last=False)
        return patch

    def _stained(self, index: int) -> np.ndarray:
        """Source patch ``index`` with the slide's stain (a pixel-wise map, so it commutes with the dihedral
        transform), read-only; recent ones cached: a large slide shows each patch of its pool many times."""

        def load() -> np.ndarray:
            patch = self.source.read_one(index)
            if self.stained:  # one stain for the whole slide (a centre effect)
                patch = hed_scale_shift(patch, self.spec.stain_alpha, self.spec.stain_beta)
            patch = np.ascontiguousarray(patch)
            patch.flags.writeable = False
            return patch

        return self._sources.get(index, load)


def _memory_downsample(spec: PatchSlideSpec, factor: int, limit: int) -> int:
    """The finest pyramid downsample (a power of ``factor`` dividing the cell side) whose level holds at most
    ``limit`` pixels: that level is drawn whole; the coarsest one dividing the cell side if none is small enough."""
    ds, best = 1, 1
    while spec.px % ds == 0:
        best = ds
        if (spec.width // ds) * (spec.height // ds) <= limit:
            return ds
        if max(spec.width // ds, spec.height // ds) <= TILE:
            break
        ds *= factor
    return best
