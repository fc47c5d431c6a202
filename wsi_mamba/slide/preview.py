"""Preview image of a tile grid: slide thumbnail, tissue mask tinted, kept tiles outlined."""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..outputs.atomic import atomic_path
from .base import Slide
from .tiling import TileGrid
from .tissue import TissueMask


def render_preview(
    slide: Slide, grid: TileGrid, tissue: TissueMask | None = None, max_size: int = 1024
) -> Image.Image:
    """Thumbnail (longer side ≤ ``max_size``) with tissue tinted green and kept tiles outlined in blue."""
    thumb = slide.get_thumbnail((max_size, max_size))
    scale = thumb.size[0] / slide.dimensions[0]
    if tissue is not None and tissue.mask.any():
        mask = Image.fromarray(tissue.mask.astype(np.uint8) * 255).resize(
            thumb.size, Image.Resampling.NEAREST
        )
        tint = Image.new("RGB", thumb.size, (0, 160, 0))
        thumb = Image.composite(Image.blend(thumb, tint, 0.25), thumb, mask)
    draw = ImageDraw.Draw(thumb)
    side = grid.size0 * scale
    for x, y in zip(grid.x.tolist(), grid.y.tolist(), strict=True):
        draw.rectangle([x * scale, y * scale, x * scale + side, y * scale + side], outline=(0, 0, 200))
    return thumb


def save_image_atomic(image: Image.Image, path: str | PathLike[str]) -> None:
    """Save ``image`` to ``path`` atomically (temp sibling, then rename: a previous image stays until the new
    one is complete); the format follows the extension, PNG when unknown."""
    with atomic_path(path) as tmp:
        image.save(tmp, format=Image.registered_extensions().get(Path(path).suffix.lower(), "PNG"))
