"""Slide backend on tifffile + zarr: tiled pyramidal TIFF/BigTIFF, Aperio SVS, SubIFD pyramids, OME-TIFF."""

from __future__ import annotations

import threading
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import zarr
from tifffile import RESUNIT, TIFF

from .base import Slide, check_pixels, positive_float_or_none
from .errors import SlideError, TileDecodeError
from .pixel_format import Converter, renders_gray, rgb_converter
from .tile_cache import TileCache

# Formats with vendor-specific layouts (overlaps, stripes, extra planes) are left to OpenSlide.
VENDOR_FLAVOURS = ("is_ndpi", "is_scn", "is_philips", "is_bif", "is_qpi")

_UM_PER_UNIT = {
    RESUNIT.CENTIMETER: 1e4,
    RESUNIT.INCH: 25400.0,
    RESUNIT.MILLIMETER: 1e3,
    RESUNIT.MICROMETER: 1.0,
}
_MAX_INCH_MPP = 100.0
_OME_UNIT_UM = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4}


def can_decode(page: tifffile.TiffPage) -> bool:
    """Whether imagecodecs (through tifffile) decodes this page's compression."""
    try:
        return page.compression == 1 or TIFF.DECOMPRESSORS[page.compression] is not None
    except KeyError:
        return False


def tiff_kind(path: Path) -> str | None:
    """'tiled' or 'untiled' for a TIFF tifffile can decode, None for anything else (or a vendor format)."""
    try:
        with tifffile.TiffFile(path) as tf:
            if any(getattr(tf, flag, False) for flag in VENDOR_FLAVOURS) or not tf.series:
                return None
            page = tf.series[0].levels[0].keyframe
            if not can_decode(page):
                return None
            return "tiled" if page.is_tiled else "untiled"
    except Exception:
        return None


def _mpp_from_page(page: tifffile.TiffPage) -> tuple[float, float] | None:
    """(x, y) microns per pixel from XResolution/YResolution with a metric or inch ResolutionUnit.

    Inch resolutions coarser than 100 µm/px (1, 72, 96 dpi...) are writers' defaults: ignored."""
    unit = _UM_PER_UNIT.get(page.resolutionunit)
    xres, yres = page.resolution
    if unit is None or not xres or not yres:
        return None
    mpp = (unit / xres, unit / yres)
    if page.resolutionunit == RESUNIT.INCH and sum(mpp) / 2.0 > _MAX_INCH_MPP:
        return None  # 1, 72, 96 dpi: a writer's default, not a scanner's resolution
    return mpp


def _aperio_fields(description: str) -> dict[str, str]:
    """``key = value`` pairs of an Aperio ImageDescription (``|``-separated after the header)."""
    fields = {}
    for part in description.split("|")[1:]:
        key, sep, value = part.partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _ome_mpp(ome_xml: str) -> tuple[float, float] | None:
    """(PhysicalSizeX, PhysicalSizeY) of the first OME Pixels element, in microns."""
    try:
        root = ET.fromstring(ome_xml)
    except ET.ParseError:
        return None
    for element in root.iter():
        if element.tag.endswith("Pixels"):
            sizes = []
            for axis in "XY":
                size = positive_float_or_none(element.get(f"PhysicalSize{axis}"))
                scale = _OME_UNIT_UM.get(element.get(f"PhysicalSize{axis}Unit", "µm"))
                if size is None or scale is None:
                    return None
                sizes.append(size * scale)
            return sizes[0], sizes[1]
    return None


def _aperio_layout(tf: tifffile.TiffFile) -> tuple[list[Any], list[tuple[str, Any]]] | None:
    """OpenSlide's rule for an Aperio SVS: every tiled page is a pyramid level, only stripped pages are the
    thumbnail (page 1), label and macro (named by the second line of their description). Returns (levels, one
    single-page series each; associated images) when tifffile's series lose a level (tifffile takes page 1 as
    the thumbnail even when it is a tiled level, as some writers other than Aperio's make it); None when
    they agree (the usual layout)."""
    pages = [tf.pages[i] for i in range(len(tf.pages))]
    tiled = [page for page in pages if page.is_tiled]
    if len(tiled) == len(tf.series[0].levels):
        return None
    levels = [
        tifffile.TiffPageSeries([page], page.shape, page.dtype, page.axes, name="Resolution", kind="svs")
        for page in tiled
    ]
    associated: dict[str, Any] = {}
    for index, page in enumerate(pages):
        if page.is_tiled:
            continue
        lines = (page.description or "").splitlines()
        word = lines[1].split()[0].lower() if len(lines) > 1 and lines[1].split() else ""
        name = "thumbnail" if index == 1 else (word if word in ("label", "macro") else None)
        if name and name not in associated:
            associated[name] = page
    return levels, list(associated.items())


class MissingChunks:
    """Which file tiles (or strips) of a level hold no image data: a byte count of 0 or an offset of 0 (the
    TIFF header), that tifffile and zarr would silently read as the fill value (black)."""

    def __init__(self, chunk: tuple[int, int], missing: np.ndarray) -> None:
        self.chunk = chunk  # (height, width) of a file tile or strip
        self.missing = missing  # (rows, columns) bool

    @classmethod
    def of_level(cls, level: Any) -> MissingChunks | None:
        """The missing chunks of any page of ``level`` (a tifffile series), None when there are none."""
        page = level.keyframe
        height, width = int(page.imagelength), int(page.imagewidth)
        if page.is_tiled:
            chunk = (int(page.tilelength), int(page.tilewidth))
        else:
            chunk = (max(1, min(int(page.rowsperstrip or height), height)), max(width, 1))
        grid = (-(-height // chunk[0]), -(-width // chunk[1]))
        missing = np.zeros(grid, bool)
        for frame in level.pages:
            if frame is None:
                continue
            absent = (np.asarray(frame.databytecounts) == 0) | (np.asarray(frame.dataoffsets) == 0)
            if not absent.any():
                continue
            if absent.size % (grid[0] * grid[1]):  # a layout we cannot map: every chunk is suspect
                return cls(chunk, np.ones(grid, bool))
            missing |= absent.reshape(-1, *grid).any(axis=0)
        return cls(chunk, missing) if missing.any() else None

    def first_in(self, x: int, y: int, w: int, h: int) -> tuple[int, int] | None:
        """(row, column) of the first missing chunk under the region, or None."""
        (ch, cw), grid = self.chunk, self.missing
        rows, cols = np.nonzero(grid[y // ch : (y + h - 1) // ch + 1, x // cw : (x + w - 1) // cw + 1])
        return None if not len(rows) else (int(rows[0]) + y // ch, int(cols[0]) + x // cw)


MAX_CACHED_TILES_PER_READ = 16  # larger reads (whole levels, previews) bypass the decoded-tile cache


class TiffSlide(Slide):
    """A slide read with tifffile through its zarr store; one file handle per thread (thread-safe)."""

    backend = "tifffile"

    def __init__(self, path: str | Path, mpp: float | None = None) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._handles: list[tifffile.TiffFile] = []
        self._lock = threading.Lock()
        self._closed = False
        self._cache = TileCache()
        try:
            tf = tifffile.TiffFile(self.path)
        except Exception as exc:
            raise SlideError(self.path, f"not a readable TIFF ({exc})") from exc
        self._handles.append(tf)
        try:
            self._inspect(tf)
            self._init_mpp(mpp)
        except SlideError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise SlideError(self.path, f"cannot read TIFF structure ({exc})") from exc

    def _inspect(self, tf: tifffile.TiffFile) -> None:
        if not tf.series:
            raise SlideError(self.path, "TIFF holds no image")
        series = tf.series[0]
        levels = series.levels
        aperio = _aperio_layout(tf) if tf.is_svs else None
        self._level_pages = None if aperio is None else [level.keyframe.index for level in aperio[0]]
        if aperio is not None:
            levels = aperio[0]
        self._axes = [level.axes for level in levels]
        dims = []
        for level in levels:
            shape = dict(zip(level.axes, level.shape, strict=True))
            dims.append((int(shape["X"]), int(shape["Y"])))
        self.level_dimensions = tuple(dims)
        first = levels[0].keyframe
        if not can_decode(first):
            raise SlideError(self.path, f"unsupported TIFF compression {first.compression}")
        if not first.is_tiled:
            warnings.warn(f"{self.path}: TIFF is not tiled; reads decode whole strips", stacklevel=4)
        if len(levels) == 1 and max(dims[0]) > 4096:
            warnings.warn(f"{self.path}: TIFF has no pyramid; low-resolution reads are slow", stacklevel=4)
        self._check_not_truncated(tf, levels)
        self._converters = [self._converter(level) for level in levels]
        self.grayscale = renders_gray(first, self._channels(levels[0]))
        self._missing = [MissingChunks.of_level(level) for level in levels]
        self._tiles = []
        for level in levels:
            page = level.keyframe
            if page.is_tiled:
                self._tiles.append((page.tilelength, page.tilewidth))
            else:
                self._tiles.append((max(min(page.rowsperstrip, page.imagelength), 256), page.imagewidth))
        description = first.description or ""
        if tf.is_svs:
            fields = _aperio_fields(description)
            self.vendor = "aperio"
            self.native_mpp = positive_float_or_none(fields.get("MPP"))
            self.objective_power = positive_float_or_none(fields.get("AppMag"))
        elif tf.is_ome:
            self.vendor = "ome-tiff"
            self._set_native_mpp_xy(_ome_mpp(tf.ome_metadata or ""))
        else:
            self.vendor = "generic-tiff"
            self._set_native_mpp_xy(_mpp_from_page(first))
        self._associated = [(s.name.lower(), s) for s in tf.series[1:] if s.name and tf.is_svs]
        if aperio is not None:
            self._associated = aperio[1]

    def _converter(self, level: Any) -> Converter:
        """How the samples this backend reads from ``level`` become RGB (``SlideError`` for a format without
        one). A page's channels are its samples (S), or the series' C axis when they are separate pages."""
        return rgb_converter(self.path, level.keyframe, self._channels(level))

    @staticmethod
    def _channels(level: Any) -> int | None:
        """The size of a series' C axis when its channels are separate pages, else None (samples in a page)."""
        shape = dict(zip(level.axes, level.shape, strict=True))
        return int(shape["C"]) if "S" not in shape and "C" in shape else None

    def _check_not_truncated(self, tf: tifffile.TiffFile, levels: list[Any]) -> None:
        size = tf.filehandle.size
        for level in levels:
            for page in level.pages:
                if page is None:
                    continue
                ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=False) if n]
                if ends and max(ends) > size:
                    raise SlideError(self.path, "truncated file: image data extends past the end of the file")

    def _arrays(self) -> list[zarr.Array]:
        """This thread's zarr arrays, one per level (each thread opens its own TiffFile)."""
        arrays = getattr(self._local, "arrays", None)
        if arrays is None:
            if self._closed:
                raise SlideError(self.path, "slide is closed")
            tf = tifffile.TiffFile(self.path)
            with self._lock:
                self._handles.append(tf)
            if self._level_pages is not None:  # an Aperio layout read by OpenSlide's rule: one page per level
                node = [zarr.open(tf.pages[index].aszarr(), mode="r") for index in self._level_pages]
            else:
                node = zarr.open(tf.series[0].aszarr(), mode="r")
            if isinstance(node, list):
                arrays = node
            elif isinstance(node, zarr.Array):
                arrays = [node]
            else:
                arrays = [node[str(i)] for i in range(self.level_count)]
            self._local.arrays = arrays
        return arrays

    def _read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Small reads are assembled from cached decoded file tiles; large ones are read in one go."""
        th, tw = self._tiles[level]
        ty0, ty1 = y // th, (y + h - 1) // th
        tx0, tx1 = x // tw, (x + w - 1) // tw
        lw, lh = self.level_dimensions[level]
        # what decoding costs: whole file tiles (or strips), however small the region asked for
        check_pixels(
            self.path,
            f"decoding ({w}, {h}) px at ({x}, {y}) of level {level} (file tiles of {tw} x {th} px)",
            (tx1 - tx0 + 1) * min(tw, lw),
            (ty1 - ty0 + 1) * min(th, lh),
        )
        if (ty1 - ty0 + 1) * (tx1 - tx0 + 1) > MAX_CACHED_TILES_PER_READ:
            return self._read_uncached(level, x, y, w, h)
        out = np.empty((h, w, 3), np.uint8)
        for ty in range(ty0, ty1 + 1):
            for tx in range(tx0, tx1 + 1):
                top, left = ty * th, tx * tw
                tile_h, tile_w = min(th, lh - top), min(tw, lw - left)
                tile = self._cache.get(
                    (level, ty, tx), lambda: self._read_uncached(level, left, top, tile_w, tile_h)  # noqa: B023
                )
                y0, y1 = max(y, top), min(y + h, top + tile_h)
                x0, x1 = max(x, left), min(x + w, left + tile_w)
                out[y0 - y : y1 - y, x0 - x : x1 - x] = tile[y0 - top : y1 - top, x0 - left : x1 - left]
        return out

    def _read_uncached(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        axes = self._axes[level]
        channel = "S" if "S" in axes else ("C" if "C" in axes else None)
        key = []
        for axis in axes:
            if axis == "Y":
                key.append(slice(y, y + h))
            elif axis == "X":
                key.append(slice(x, x + w))
            elif axis == channel:
                key.append(slice(None))
            else:
                key.append(0)
        kept = "".join(a for a in axes if a in ("Y", "X", channel))
        missing = self._missing[level]
        chunk = missing.first_in(x, y, w, h) if missing is not None else None
        if chunk is not None:
            raise TileDecodeError(
                self.path,
                f"no image data for level {level} at ({x}, {y}) size ({w}, {h}): file tile (row {chunk[0]}, "
                f"column {chunk[1]}) has a byte count (or offset) of 0",
            )
        try:
            pixels = np.asarray(self._arrays()[level][tuple(key)])
        except SlideError:
            raise
        except Exception as exc:
            raise TileDecodeError(
                self.path, f"cannot decode pixels of level {level} at ({x}, {y}) size ({w}, {h}): {exc}"
            ) from exc
        order = [kept.index("Y"), kept.index("X")] + ([kept.index(channel)] if channel else [])
        return self._converters[level](pixels.transpose(order))

    def _tile_size(self, level: int) -> tuple[int, int]:
        return self._tiles[level]

    def _associated_images(self) -> dict[str, np.ndarray]:
        images = {}
        for name, series in self._associated:
            shape = dict(zip(series.axes, series.shape, strict=False))
            try:
                check_pixels(self.path, f"associated image {name!r}", shape.get("X", 0), shape.get("Y", 0))
            except SlideError as exc:
                warnings.warn(f"{exc}: not decoded", stacklevel=2)
                continue
            try:
                images[name] = rgb_converter(self.path, series.keyframe)(series.asarray())
            except Exception as exc:
                warnings.warn(f"{self.path}: cannot decode associated image {name!r}: {exc}", stacklevel=2)
        return images

    def close(self) -> None:
        self._closed = True
        self._cache.clear()
        with self._lock:
            for tf in self._handles:
                tf.close()
            self._handles.clear()
        self._local = threading.local()
