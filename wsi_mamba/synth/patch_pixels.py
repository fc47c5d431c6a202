"""The pixels of a planned real-tissue slide: its patches (dihedral transform, the slide's stain shift) on
noisy glass, cut by the section's soft outline, and the in-memory pyramid ``write_slide`` reads them from."""

from __future__ import annotations

import numpy as np

from ..data.dihedral import dihedral
from ..data.patches import PatchSource
from ..data.stain import hed_scale_shift
from .patch_plan import PatchSlideSpec


def render_patch_slide(spec: PatchSlideSpec, source: PatchSource, chunk: int = 256) -> np.ndarray:
    """The slide's level-0 pixels, (height, width, 3) uint8."""
    rng = np.random.default_rng([spec.seed, 1])
    noise = rng.integers(-2, 3, (spec.height, spec.width), dtype=np.int16)
    canvas = np.empty((spec.height, spec.width, 3), np.uint8)
    for channel, level in enumerate(np.round(spec.background).astype(np.int16)):
        canvas[..., channel] = np.clip(noise + level, 0, 255)
    px = spec.px
    stained = spec.stain_alpha != (1.0, 1.0, 1.0) or spec.stain_beta != (0.0, 0.0, 0.0)
    for start in range(0, len(spec.cells), chunk):
        sel = slice(start, start + chunk)
        batch = source.read(spec.patches[sel])
        batch = np.stack([dihedral(p, int(k)) for p, k in zip(batch, spec.transforms[sel], strict=True)])
        if stained:  # one stain for the whole slide (a centre effect)
            batch = hed_scale_shift(batch, spec.stain_alpha, spec.stain_beta)
        for (r, c), inside, patch in zip(spec.cells[sel], spec.interior[sel], batch, strict=True):
            y, x = int(r) * px, int(c) * px
            if inside:
                canvas[y : y + px, x : x + px] = patch
            else:
                a = spec.alpha(x, y, px, px)[..., None]
                glass = canvas[y : y + px, x : x + px].astype(np.float32)
                canvas[y : y + px, x : x + px] = (a * patch + (1 - a) * glass + 0.5).astype(np.uint8)
    return canvas
