"""Slide backend on OpenSlide (openslide-python; the ``openslide-bin`` wheel provides the library)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import openslide
import tifffile
from PIL import Image

from .base import Slide, check_pixels, positive_float_or_none
from .errors import SlideError

_CHUNK = 512  # OpenSlide hides its tiles for some formats: chunk dask arrays on this size


def rgba_to_rgb(image: Image.Image) -> np.ndarray:
    """Composite OpenSlide's RGBA (transparent outside the scanned area) on white: (h, w, 3) uint8."""
    rgba = np.asarray(image.convert("RGBA"))
    if rgba[:, :, 3].min() == 255:  # fully opaque: the common case inside the scanned area
        return np.ascontiguousarray(rgba[:, :, :3])
    wide = rgba.astype(np.uint16)
    alpha = wide[:, :, 3:4]
    rgb = (wide[:, :, :3] * alpha + 255 * (255 - alpha) + 127) // 255
    return rgb.astype(np.uint8)


def dicom_file_in(folder: Path) -> Path | None:
    """A file of a DICOM folder that OpenSlide accepts (it opens the whole series from any of them)."""
    for candidate in sorted(folder.iterdir()):
        if candidate.is_file() and openslide.OpenSlide.detect_format(str(candidate)) == "dicom":
            return candidate
    return None


def _check_sample_depth(path: Path, target: Path) -> None:
    """Refuse a TIFF-based file whose samples are deeper than 8 bits: OpenSlide renders only their high byte (it
    ignores ``MaxSampleValue``), so 12-bit data in 16-bit samples reads as near-black and would be scored as
    such. The tifffile backend (the default for TIFF files) renders them; other formats pass unchecked."""
    if not target.is_file():
        return
    with open(target, "rb") as handle:
        if handle.read(4) not in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
            return
    try:
        with tifffile.TiffFile(target) as tif:
            bits = int(tif.pages.first.bitspersample)
    except Exception:  # OpenSlide opened it: what tifffile cannot parse is not checked here
        return
    if bits > 8:
        raise SlideError(
            path,
            f"{bits}-bit samples: OpenSlide renders only their high byte (a 12-bit image reads as near-black); "
            "read it with the tifffile backend (the default for TIFF files)",
        )


class OpenSlideSlide(Slide):
    """A slide read through OpenSlide: .svs .tif .ndpi .mrxs .scn .vms .bif, DICOM."""

    backend = "openslide"

    def __init__(self, path: str | Path, mpp: float | None = None) -> None:
        self.path = Path(path)
        target = self.path
        if target.is_dir():
            target = dicom_file_in(target) or target
        try:
            self._osr = openslide.OpenSlide(str(target))
        except openslide.OpenSlideError as exc:
            raise SlideError(self.path, f"OpenSlide cannot open it ({exc})") from exc
        props = self._osr.properties
        self.level_dimensions = tuple(tuple(d) for d in self._osr.level_dimensions)
        self.vendor = props.get(openslide.PROPERTY_NAME_VENDOR)
        self.objective_power = positive_float_or_none(props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER))
        mpp_x = positive_float_or_none(props.get(openslide.PROPERTY_NAME_MPP_X))
        mpp_y = positive_float_or_none(props.get(openslide.PROPERTY_NAME_MPP_Y))
        self._set_native_mpp_xy((mpp_x, mpp_y) if mpp_x and mpp_y else None)
        try:
            _check_sample_depth(self.path, target)
            self._init_mpp(mpp)
        except SlideError:
            self._osr.close()
            raise

    @property
    def level_downsamples(self) -> tuple[float, ...]:  # type: ignore[override]
        return tuple(self._osr.level_downsamples)

    def _openslide_read(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        try:
            return rgba_to_rgb(self._osr.read_region(location, level, size))
        except openslide.OpenSlideError as exc:
            raise SlideError(
                self.path, f"cannot read pixels of level {level} at {location} size {size}: {exc}"
            ) from exc

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """As :meth:`Slide.read_region` (same checks), read by OpenSlide from the level-0 location."""
        w, h = self._check_region(level, size)
        if w == 0 or h == 0:
            return np.full((h, w, 3), 255, np.uint8)
        return self._openslide_read((int(location[0]), int(location[1])), level, (w, h))

    def _read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        return self._openslide_read((round(x * ds), round(y * ds)), level, (w, h))

    def _tile_size(self, level: int) -> tuple[int, int]:
        props = self._osr.properties
        th = props.get(f"openslide.level[{level}].tile-height")
        tw = props.get(f"openslide.level[{level}].tile-width")
        if th and tw:
            return int(th), int(tw)
        return _CHUNK, _CHUNK

    def _associated_images(self) -> dict[str, np.ndarray]:
        images = {}
        props = self._osr.properties
        for name in list(self._osr.associated_images):
            width = positive_float_or_none(props.get(f"openslide.associated.{name}.width")) or 0
            height = positive_float_or_none(props.get(f"openslide.associated.{name}.height")) or 0
            try:
                check_pixels(self.path, f"associated image {name!r}", int(width), int(height))
            except SlideError as exc:
                warnings.warn(f"{exc}: not decoded", stacklevel=2)
                continue
            try:
                images[name] = rgba_to_rgb(self._osr.associated_images[name])
            except openslide.OpenSlideError as exc:
                warnings.warn(f"{self.path}: cannot decode associated image {name!r}: {exc}", stacklevel=2)
        return images

    def close(self) -> None:
        self._osr.close()
