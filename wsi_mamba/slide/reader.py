"""``open_slide``: picks the backend for a file and opens it."""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Literal

import openslide

from .base import Slide
from .errors import SlideError
from .openslide_backend import OpenSlideSlide, dicom_file_in
from .tiff_backend import TiffSlide, tiff_kind

Backend = Literal["tifffile", "openslide"]
BACKENDS: tuple[str, ...] = ("tifffile", "openslide")


def choose_backend(path: str | PathLike[str]) -> Backend:
    """tifffile for TIFFs it reads natively as tiled images, OpenSlide for what OpenSlide recognises,
    tifffile (with a warning) for plain untiled TIFFs; SlideError for anything else."""
    path = Path(path)
    if path.is_dir():
        if dicom_file_in(path) is None:
            raise SlideError(path, "folder holds no DICOM whole-slide image")
        return "openslide"
    kind = tiff_kind(path)
    if kind == "tiled":
        return "tifffile"
    try:
        vendor = openslide.OpenSlide.detect_format(str(path))
    except openslide.OpenSlideError:
        vendor = None
    if vendor is not None:
        return "openslide"
    if kind == "untiled":
        return "tifffile"
    raise SlideError(path, "not a slide: neither tifffile nor OpenSlide recognises the format")


def open_slide(path: str | PathLike[str], backend: Backend | None = None, mpp: float | None = None) -> Slide:
    """Open a whole-slide image; use it as a context manager.

    ``backend`` forces "tifffile" or "openslide" (default: ``choose_backend``); ``mpp`` (microns per
    pixel at level 0) overrides the file's value or stands in for a missing one.
    """
    path = Path(path)
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not path.exists():
        raise SlideError(path, "no such file or directory")
    if path.is_file() and path.stat().st_size == 0:
        raise SlideError(path, "empty file")
    chosen = backend or choose_backend(path)
    if chosen == "tifffile":
        return TiffSlide(path, mpp=mpp)
    return OpenSlideSlide(path, mpp=mpp)
