"""The backend-independent ``Slide`` interface (OpenSlide-like) and the logic shared by backends."""

from __future__ import annotations

import math
import numbers
import warnings
from abc import ABC, abstractmethod
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .errors import SlideError


def positive_float_or_none(value: Any) -> float | None:
    """A metadata value as a positive float, or None (missing, unparsable, zero or negative)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None

if TYPE_CHECKING:  # dask.array (~0.4 s with the scipy.sparse it pulls in) only when to_dask is called
    import dask.array as da

# Levels bigger than this many pixels are downscaled band by band rather than read whole.
_MAX_WHOLE_LEVEL_PX = 64 * 1024 * 1024
_BAND_ROWS = 2048
_MAX_BAND_PX = 16 * 1024 * 1024


DEFAULT_MAX_PIXELS = 500_000_000
"""Default decoding limit: no level, region, tile or associated image bigger than this is decoded."""
_max_pixels = DEFAULT_MAX_PIXELS


def get_max_pixels() -> int:
    """The decoding limit in pixels (process-wide; the CLI's ``--max-pixels`` sets it)."""
    return _max_pixels


def set_max_pixels(limit: int | None) -> None:
    """Set the decoding limit (None restores :data:`DEFAULT_MAX_PIXELS`)."""
    global _max_pixels
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 1):
        raise ValueError(f"max_pixels must be a positive integer, got {limit!r}")
    _max_pixels = DEFAULT_MAX_PIXELS if limit is None else int(limit)


def check_pixels(path: Path, what: str, width: int, height: int) -> None:
    """``SlideError`` (one line) when decoding ``what`` of ``width`` x ``height`` px would exceed the limit:
    checked before any pixel is decoded, so a file whose tags claim 10^6 x 10^6 px costs nothing."""
    limit = get_max_pixels()
    pixels = int(width) * int(height)
    if pixels > limit:
        raise SlideError(
            path,
            f"{what} is {int(width)} x {int(height)} px ({_amount(pixels)}), over the decoding limit of "
            f"{_amount(limit)} (raise it with --max-pixels if the file is genuine)",
        )


def _amount(pixels: int) -> str:
    return f"{pixels / 1e6:,.0f} megapixels" if pixels >= 10_000_000 else f"{pixels:,} px"


MPP_RANGE = (0.05, 20.0)
"""Plausible microns per pixel for microscopy (a 100x objective to a low-power overview)."""

SQUARE_PIXEL_TOLERANCE = 0.01
"""X and Y resolutions further apart than this fraction (of the smaller) mean pixels that are not square."""


def objective_power_ok(value: float | None) -> bool | None:
    """None when unknown, else whether ``value`` is a plausible objective magnification (finite, 0 < x ≤ 1000)."""
    if value is None:
        return None
    return isinstance(value, numbers.Real) and math.isfinite(value) and 0 < value <= 1000


def level_downsamples(dimensions: list[tuple[int, int]]) -> tuple[float, ...]:
    """OpenSlide's rule: the mean of the width and height ratios to level 0."""
    w0, h0 = dimensions[0]
    return tuple((w0 / w + h0 / h) / 2.0 for w, h in dimensions)


def to_rgb_uint8(pixels: np.ndarray) -> np.ndarray:
    """Any (h, w[, c]) image as (h, w, 3) uint8: gray is repeated, alpha dropped, 16-bit scaled."""
    if pixels.dtype == np.uint16:
        pixels = (pixels >> 8).astype(np.uint8)
    elif pixels.dtype == bool:
        pixels = pixels.astype(np.uint8) * 255
    elif pixels.dtype != np.uint8:
        pixels = np.clip(pixels, 0, 255).astype(np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.shape[2] == 1:
        return np.repeat(pixels, 3, axis=2)
    return np.ascontiguousarray(pixels[:, :, :3])


class _LevelArray:
    """Array-like view of one level for ``dask.array.from_array``: slicing reads through the slide."""

    def __init__(self, slide: Slide, level: int) -> None:
        w, h = slide.level_dimensions[level]
        self.shape = (h, w, 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3
        self._slide = slide
        self._level = level

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        ys, xs = key[0], key[1]
        y0, y1, _ = ys.indices(self.shape[0])
        x0, x1, _ = xs.indices(self.shape[1])
        if y1 <= y0 or x1 <= x0:
            return np.zeros((max(y1 - y0, 0), max(x1 - x0, 0), 3), np.uint8)[
                (slice(None), slice(None), *key[2:])
            ]
        check_pixels(self._slide.path, f"a chunk of level {self._level}", x1 - x0, y1 - y0)
        tile = self._slide._read_level(self._level, x0, y0, x1 - x0, y1 - y0)
        return tile[(slice(None), slice(None), *key[2:])]


class Slide(ABC):
    """An open whole-slide image; coordinates given to ``read_region`` are level-0 pixels (as OpenSlide).

    Subclasses set ``path``, ``level_dimensions`` ((w, h) per level), ``vendor``, ``objective_power`` and
    ``native_mpp`` (or both axes' through ``_set_native_mpp_xy``), and implement ``_read_level``,
    ``_associated_images``, ``_tile_size`` and ``close``.
    """

    backend: str = ""
    path: Path
    level_dimensions: tuple[tuple[int, int], ...]
    vendor: str | None = None
    objective_power: float | None = None
    native_mpp: float | None = None
    native_mpp_xy: tuple[float, float] | None = None
    mpp_problem: str | None = None
    grayscale: bool = False  # the file holds one gray sample per pixel (rendered as R = G = B)

    def _set_native_mpp_xy(self, xy: tuple[float, float] | None) -> None:
        """Record the file's (x, y) microns per pixel; ``native_mpp`` is their mean (see ``_init_mpp``)."""
        self.native_mpp_xy = xy
        self.native_mpp = None if xy is None else (xy[0] + xy[1]) / 2.0

    def _native_mpp_problem(self) -> str | None:
        """Why the file's resolution cannot be used, or None: outside :data:`MPP_RANGE` (inf, 1e-300, a 72-dpi
        screen default: not a microscope's), or X and Y further apart than :data:`SQUARE_PIXEL_TOLERANCE`
        (pixels that are not square: their mean would be wrong both ways)."""
        low, high = MPP_RANGE
        if self.native_mpp_xy is not None:
            x, y = self.native_mpp_xy
            if math.isfinite(x) and math.isfinite(y) and abs(x - y) > SQUARE_PIXEL_TOLERANCE * min(x, y):
                return (
                    f"pixels are not square: the file's resolution is {x:g} µm/px across (X) and {y:g} µm/px "
                    f"down (Y), more than {SQUARE_PIXEL_TOLERANCE:.0%} apart"
                )
        native = self.native_mpp
        if native is not None and not (math.isfinite(native) and low <= native <= high):
            return f"the file's resolution ({native:g} µm/px) is not a microscope's (expected {low:g}-{high:g} µm/px)"
        return None

    def _init_mpp(self, mpp: float | None) -> None:
        """Apply a caller's mpp override; warn when the slide has none and none was given. A resolution in the
        file that cannot be used (:meth:`_native_mpp_problem`) is treated as missing, with one warning, and
        kept in ``mpp_problem`` for the error of whatever then needs an mpp."""
        low, high = MPP_RANGE
        self.mpp_problem = self._native_mpp_problem()
        if self.mpp_problem is not None:
            self.native_mpp = None
            if mpp is None:
                warnings.warn(
                    f"{self.path}: {self.mpp_problem}: ignored; pass mpp= (--slide-mpp) to set it", stacklevel=3
                )
        if objective_power_ok(self.objective_power) is False:
            self.objective_power = None
        if mpp is not None:
            if isinstance(mpp, bool) or not isinstance(mpp, numbers.Real) or not (
                math.isfinite(mpp) and low <= mpp <= high
            ):
                raise SlideError(
                    self.path, f"mpp must be a positive number within {low:g}-{high:g} µm/px, got {mpp!r}"
                )
            self.mpp: float | None = float(mpp)
        else:
            self.mpp = self.native_mpp
            if self.mpp is None and self.mpp_problem is None:
                warnings.warn(
                    f"{self.path}: no microns-per-pixel in the file; pass mpp= to set it",
                    stacklevel=3,
                )

    # ---- properties -------------------------------------------------------------------------
    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @cached_property
    def level_downsamples(self) -> tuple[float, ...]:
        return level_downsamples(list(self.level_dimensions))

    @cached_property
    def associated_images(self) -> dict[str, np.ndarray]:
        """Label, macro, thumbnail... as (h, w, 3) uint8 RGB arrays, by lower-case name."""
        return self._associated_images()

    def best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level whose downsample does not exceed ``downsample`` (1% tolerance)."""
        best = 0
        for i, ds in enumerate(self.level_downsamples):
            if ds <= downsample * 1.01:
                best = i
        return best

    def describe(self) -> dict[str, Any]:
        """The slide's properties as a JSON-serialisable dict (what ``wsi-mamba info`` prints)."""
        return {
            "path": str(self.path),
            "backend": self.backend,
            "vendor": self.vendor,
            "dimensions": list(self.dimensions),
            "level_count": self.level_count,
            "levels": [
                {"dimensions": list(d), "downsample": round(ds, 4)}
                for d, ds in zip(self.level_dimensions, self.level_downsamples, strict=True)
            ],
            "mpp": self.mpp,
            "objective_power": self.objective_power,
            "associated_images": {k: list(v.shape[1::-1]) for k, v in self.associated_images.items()},
        }

    # ---- pixels -----------------------------------------------------------------------------
    def _check_level(self, level: int) -> None:
        if not 0 <= level < self.level_count:
            raise SlideError(self.path, f"level {level} out of range (0..{self.level_count - 1})")

    def _check_region(self, level: int, size: tuple[int, int]) -> tuple[int, int]:
        """``size`` as ints (w, h) after the checks every backend's ``read_region`` makes: level in range, no
        negative size, under the decoding limit (``SlideError`` otherwise)."""
        self._check_level(level)
        w, h = int(size[0]), int(size[1])
        if w < 0 or h < 0:
            raise SlideError(self.path, f"negative region size {size}")
        check_pixels(self.path, f"a region of level {level}", w, h)
        return w, h

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Pixels of ``size`` (w, h) at ``level`` from level-0 ``location`` (x, y): (h, w, 3) uint8 RGB.

        Outside the image is white, as OpenSlide's transparent pixels composited on white.
        """
        w, h = self._check_region(level, size)
        ds = self.level_downsamples[level]
        lx, ly = math.floor(location[0] / ds), math.floor(location[1] / ds)
        return self._read_level_padded(level, lx, ly, w, h)

    def _read_level_padded(self, level: int, lx: int, ly: int, w: int, h: int) -> np.ndarray:
        """Level-coordinate read where the part outside the level is white."""
        lw, lh = self.level_dimensions[level]
        out = np.full((h, w, 3), 255, np.uint8)
        x0, y0, x1, y1 = max(lx, 0), max(ly, 0), min(lx + w, lw), min(ly + h, lh)
        if x1 > x0 and y1 > y0:
            out[y0 - ly : y1 - ly, x0 - lx : x1 - lx] = self._read_level(level, x0, y0, x1 - x0, y1 - y0)
        return out

    @abstractmethod
    def _read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """(h, w, 3) uint8 pixels of a region inside ``level``, in that level's coordinates."""

    @abstractmethod
    def _associated_images(self) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def _tile_size(self, level: int) -> tuple[int, int]:
        """(height, width) of the file's own tiles (chunks) at ``level``."""

    def read_level(self, level: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """A whole level, optionally resized to ``size`` (w, h); big levels are resized band by band."""
        self._check_level(level)
        lw, lh = self.level_dimensions[level]
        out_w, out_h = size or (lw, lh)
        check_pixels(self.path, f"level {level}", lw, lh)
        check_pixels(self.path, f"the resized level {level}", out_w, out_h)
        if lw * lh <= _MAX_WHOLE_LEVEL_PX:
            pixels = self._read_level(level, 0, 0, lw, lh)
            return resize_rgb(pixels, (out_w, out_h))
        out = np.empty((out_h, out_w, 3), np.uint8)
        rows = max(1, min(_BAND_ROWS, _MAX_BAND_PX // max(lw, 1)))  # bands of bounded size, whatever the width
        for y in range(0, lh, rows):
            oy0, oy1 = round(y * out_h / lh), round(min(y + rows, lh) * out_h / lh)
            if oy1 > oy0:
                band = self._read_level(level, 0, y, lw, min(rows, lh - y))
                out[oy0:oy1] = resize_rgb(band, (out_w, oy1 - oy0))
        return out

    def get_thumbnail(self, max_size: tuple[int, int] | int) -> Image.Image:
        """An RGB PIL image fitting in ``max_size`` (w, h) with the slide's aspect ratio (as OpenSlide)."""
        if isinstance(max_size, int):
            max_size = (max_size, max_size)
        w0, h0 = self.dimensions
        ds = max(w0 / max_size[0], h0 / max_size[1], 1.0)
        size = (max(1, round(w0 / ds)), max(1, round(h0 / ds)))
        level = self.best_level_for_downsample(ds)
        return Image.fromarray(self.read_level(level, size))

    def to_dask(self, level: int = 0) -> da.Array:
        """A lazy (H, W, 3) uint8 dask array of ``level``, chunked on the file's own tiles."""
        import dask.array as da

        self._check_level(level)
        th, tw = self._tile_size(level)
        name = f"slide-{self.backend}-{self.path}-{level}-{id(self):x}"
        return da.from_array(
            _LevelArray(self, level),
            chunks=(th, tw, 3),
            name=name,
            lock=False,
            asarray=False,
            meta=np.empty((0, 0, 0), np.uint8),
        )

    # ---- lifetime ---------------------------------------------------------------------------
    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        return f"{type(self).__name__}({str(self.path)!r}, {w}x{h}, mpp={self.mpp})"


def resize_rgb(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an (h, w, 3) uint8 image to ``size`` (w, h) with PIL's antialiased bilinear filter."""
    if (pixels.shape[1], pixels.shape[0]) == tuple(size):
        return pixels
    return np.asarray(Image.fromarray(pixels).resize(tuple(size), Image.Resampling.BILINEAR))
