"""In-memory pyramid levels as a ``write_slide`` renderer (block means of the finest level)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """``image`` (h, w, 3) uint8 averaged over ``factor`` × ``factor`` blocks (h, w multiples of it), rounded."""
    h, w = image.shape[0] // factor, image.shape[1] // factor
    block = image.reshape(h, factor, w, factor, 3).sum(axis=(1, 3), dtype=np.uint32)
    return ((block + factor * factor // 2) // (factor * factor)).astype(np.uint8)


class LevelPyramid:
    """A renderer for ``write_slide`` over in-memory levels (block means of level 0)."""

    def __init__(self, level0: np.ndarray, factor: int, fill: Sequence[float]) -> None:
        self.levels = {1: level0}
        self.fill = np.asarray(np.round(fill), np.uint8)
        ds, current = 1, level0
        while max(current.shape[:2]) > 256:
            h, w = current.shape[0] // factor, current.shape[1] // factor
            if not h or not w:
                break
            current = block_mean(current[: h * factor, : w * factor], factor)
            ds *= factor
            self.levels[ds] = current

    def __call__(self, spec: object, x0: float, y0: float, width: int, height: int, ds: float) -> np.ndarray:
        key = max(d for d in self.levels if d <= ds + 1e-9)
        level = self.levels[key]
        if key == ds:
            out = np.empty((height, width, 3), np.uint8)
            out[:] = self.fill
            x, y = int(x0) // key, int(y0) // key
            crop = level[y : y + height, x : x + width]
            out[: crop.shape[0], : crop.shape[1]] = crop
            return out
        x, y = int(x0 / key), int(y0 / key)
        w, h = max(1, round(width * ds / key)), max(1, round(height * ds / key))
        crop = level[y : y + h, x : x + w]
        image = Image.fromarray(np.ascontiguousarray(crop)).resize((width, height), Image.Resampling.BOX)
        return np.asarray(image)
