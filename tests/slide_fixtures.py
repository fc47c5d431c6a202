"""Shared helpers for the slide tests: small TIFFs written with tifffile, cached synthetic slides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from wsi_mamba.synth.procedural import make_spec
from wsi_mamba.synth.writer import write_slide

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SYNTH_SIZE = (2048, 1536)
_cache: dict[tuple, Path] = {}


def shared_file(name: str) -> Path:
    """A real sample slide from ../shared/data, or skip the test when it is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"sample slide {name} not found: {SHARED_DATA} is absent on this machine")
    return path


def gradient_image(width: int, height: int) -> np.ndarray:
    """A deterministic RGB test pattern (lossless round trips compare exactly)."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8)


def write_pyramid(
    path: Path,
    width: int = 1024,
    height: int = 768,
    levels: int = 3,
    layout: str = "pages",
    mpp: float | None = 0.5,
    tile: int = 128,
    compression: str = "zlib",
) -> Path:
    """A tiled pyramid: layout "pages" (reduced pages), "subifds" (SubIFD levels) or "ome" (OME-TIFF)."""
    image = gradient_image(width, height)
    pyramid = [image[:: 2**k, :: 2**k] for k in range(levels)]
    options = dict(tile=(tile, tile), photometric="rgb", compression=compression)
    if mpp is not None and layout != "ome":
        options.update(resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    with tifffile.TiffWriter(path, ome=(layout == "ome")) as tw:
        if layout == "pages":
            for k, level in enumerate(pyramid):
                tw.write(level, subfiletype=1 if k else 0, metadata=None, **options)
        else:
            metadata = {"PhysicalSizeX": mpp, "PhysicalSizeY": mpp} if layout == "ome" and mpp else {}
            tw.write(
                pyramid[0], subifds=levels - 1, metadata=metadata if layout == "ome" else None, **options
            )
            for level in pyramid[1:]:
                tw.write(level, subfiletype=1, metadata=None, **options)
    return path


def synthetic_slide(tmp_path_factory: pytest.TempPathFactory, flavour: str, tumor: bool = True) -> Path:
    """A small synthetic slide of ``flavour`` ("svs" or "tiff"), written once per test session."""
    key = (flavour, tumor)
    if key not in _cache:
        spec = make_spec(7, 1 if tumor else 0, *SYNTH_SIZE, tumor=tumor)
        folder = tmp_path_factory.mktemp(f"synth-{flavour}-{int(tumor)}")
        _cache[key] = write_slide(spec, folder / f"slide.{'svs' if flavour == 'svs' else 'tif'}", flavour)
    return _cache[key]


def write_unsupported_compression(path: Path) -> Path:
    """A tiled pyramid whose Compression tag says 52479 (no codec anywhere)."""
    write_pyramid(path, compression="zlib")
    with tifffile.TiffFile(path, mode="r+b") as tf:
        for page in tf.pages:
            page.tags["Compression"].overwrite(52479)
    return path


def write_corrupt_tile(path: Path) -> Path:
    """A JPEG-tiled pyramid whose first level-0 tile does not start with a JPEG marker."""
    write_pyramid(path, compression="jpeg")
    with tifffile.TiffFile(path) as tf:
        offset = tf.pages[0].dataoffsets[0]
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\0" * 16)
    return path
