"""Pixel formats of a TIFF level: how its decoded samples become (h, w, 3) uint8 RGB, or why they cannot.

Rendered: RGB (alpha and other extra samples dropped), grayscale (MinIsBlack / MinIsWhite, replicated),
palette (the colormap, 16-bit entries shifted to 8 bits as tifffile and libtiff do), CMYK (as PIL converts
it), YCbCr that a JPEG decoder turns into RGB; samples of any unsigned depth scaled so that the file's
MaxSampleValue (tag 281; else 2**BitsPerSample - 1) is 255. Refused with one ``SlideError`` line: floating
point, signed or complex samples, other photometric interpretations, unexpected sample counts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from tifffile import PHOTOMETRIC, SAMPLEFORMAT

from .base import to_rgb_uint8
from .errors import SlideError

Converter = Callable[[np.ndarray], np.ndarray]
"""(h, w[, c]) decoded samples -> (h, w, 3) uint8 RGB."""

_JPEG_COMPRESSIONS = {6, 7, 33007, 34892}  # their decoders turn YCbCr into RGB (as tifffile reads them)
_INKSET_CMYK = 1


def rgb_converter(path: Path, page: Any, channels: int | None = None) -> Converter:
    """The converter for the samples of ``page`` (a tifffile page; ``channels``: the size of a series' C axis
    when its channels are separate pages), or ``SlideError`` naming the format. Ordinary 8-bit RGB (and 8-bit
    MinIsBlack gray) gets :func:`to_rgb_uint8` itself: no added cost."""
    bits = int(page.bitspersample)
    _check_sample_format(path, page, bits)
    photometric = page.photometric
    colour = (channels or page.samplesperpixel) - len(page.extrasamples or ())
    max_value = _max_value(page, bits)
    if photometric == PHOTOMETRIC.YCBCR:
        if page.compression not in _JPEG_COMPRESSIONS:
            _refuse(path, f"YCbCr samples with compression {int(page.compression)} (only JPEG YCbCr is read)")
        photometric = PHOTOMETRIC.RGB
    if channels and channels > 1 and photometric == PHOTOMETRIC.MINISBLACK:
        photometric = PHOTOMETRIC.RGB  # channels stored as separate gray pages (OME-TIFF): R, G, B
    if photometric == PHOTOMETRIC.RGB:
        _expect(path, "RGB", colour, 3)
        return to_rgb_uint8 if max_value == 255 and bits == 8 else _scaled(max_value, _rgb)
    if photometric in (PHOTOMETRIC.MINISBLACK, PHOTOMETRIC.MINISWHITE):
        _expect(path, "grayscale", colour, 1)
        if photometric == PHOTOMETRIC.MINISWHITE:
            return _scaled(max_value, _inverted_gray)
        return to_rgb_uint8 if max_value == 255 and bits == 8 else _scaled(max_value, _gray)
    if photometric == PHOTOMETRIC.PALETTE:
        _expect(path, "palette", colour, 1)
        return _palette(path, page, bits)
    if photometric == PHOTOMETRIC.SEPARATED:
        inkset = page.tags.valueof(332, _INKSET_CMYK)
        if inkset != _INKSET_CMYK:
            _refuse(path, f"separated (ink) samples with InkSet {inkset}, not CMYK")
        _expect(path, "CMYK", colour, 4)
        return _scaled(max_value, _cmyk)
    return _refuse(path, f"photometric interpretation {_name(photometric)} has no RGB rendering")


def renders_gray(page: Any, channels: int | None = None) -> bool:
    """True when :func:`rgb_converter` renders ``page`` as gray replicated into RGB (one MinIsBlack/MinIsWhite
    sample per pixel): an image without colour, which stain-based tissue detection and H&E models cannot use."""
    gray = page.photometric in (PHOTOMETRIC.MINISBLACK, PHOTOMETRIC.MINISWHITE)
    return gray and not (channels and channels > 1)


def _refuse(path: Path, problem: str) -> NoReturn:
    raise SlideError(path, f"unsupported pixel format: {problem}")


def _name(value: Any) -> str:
    return getattr(value, "name", None) or str(int(value))


def _check_sample_format(path: Path, page: Any, bits: int) -> None:
    fmt = page.sampleformat
    if fmt not in (SAMPLEFORMAT.UINT, SAMPLEFORMAT.VOID):
        kind = {SAMPLEFORMAT.IEEEFP: "floating-point", SAMPLEFORMAT.INT: "signed integer"}.get(fmt, _name(fmt))
        _refuse(path, f"{bits}-bit {kind} samples have no defined 8-bit rendering (convert to 8-bit RGB)")
    if not 1 <= bits <= 32:
        _refuse(path, f"{bits} bits per sample")


def _expect(path: Path, what: str, colour: int, wanted: int) -> None:
    if colour != wanted:
        _refuse(path, f"{what} image with {colour} colour samples per pixel (expected {wanted})")


def _max_value(page: Any, bits: int) -> int:
    """MaxSampleValue (tag 281) when it is within the sample depth, else 2**bits - 1."""
    top = (1 << bits) - 1
    value = page.tags.valueof(281)
    values = value if isinstance(value, tuple) else (value,)
    try:
        declared = max(int(v) for v in values)
    except (TypeError, ValueError):
        return top
    return declared if 0 < declared <= top else top


def _scaled(max_value: int, render: Converter) -> Converter:
    """``render`` applied to the samples scaled to uint8 (``max_value`` -> 255)."""

    def convert(pixels: np.ndarray) -> np.ndarray:
        return render(to_uint8(pixels, max_value))

    return convert


def to_uint8(pixels: np.ndarray, max_value: int) -> np.ndarray:
    """Unsigned samples as uint8, ``max_value`` (and above) -> 255, rounded."""
    if pixels.dtype == np.uint8 and max_value == 255:
        return pixels
    if pixels.dtype == bool:
        return pixels.astype(np.uint8) * 255
    scaled = np.minimum(pixels, max_value).astype(np.float32) * np.float32(255.0 / max_value)
    return np.rint(scaled).astype(np.uint8)


def _samples(pixels: np.ndarray) -> np.ndarray:
    return pixels if pixels.ndim == 3 else pixels[:, :, None]


def _rgb(pixels: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(_samples(pixels)[:, :, :3])


def _gray(pixels: np.ndarray) -> np.ndarray:
    return np.repeat(_samples(pixels)[:, :, :1], 3, axis=2)


def _inverted_gray(pixels: np.ndarray) -> np.ndarray:
    return _gray(255 - _samples(pixels)[:, :, :1])


def _cmyk(pixels: np.ndarray) -> np.ndarray:
    """PIL's CMYK -> RGB: each of R, G, B is (255 - K) - round(C * (255 - K) / 255)."""
    samples = _samples(pixels).astype(np.uint32)
    white = 255 - samples[:, :, 3:4]
    ink = samples[:, :, :3] * white + 128
    return (white - (((ink >> 8) + ink) >> 8)).astype(np.uint8)


def _palette(path: Path, page: Any, bits: int) -> Converter:
    colormap = page.colormap
    if colormap is None or bits > 16 or colormap.shape[-1] < 1 << bits:
        size = "no" if colormap is None else f"a {colormap.shape[-1]}-entry"
        _refuse(path, f"palette image of {bits}-bit indices with {size} colormap")
    if colormap.max() > 255:  # 16-bit entries (the TIFF rule); some writers store 8-bit values
        colormap = colormap >> 8
    table = np.ascontiguousarray(colormap[:, : 1 << bits].T.astype(np.uint8))  # (entries, 3)

    def convert(pixels: np.ndarray) -> np.ndarray:
        indices = _samples(pixels)[:, :, 0]
        return table[indices.view(np.uint8) if indices.dtype == bool else indices]

    return convert
