"""How far a heatmap's colours are from the stain's: a hue measure on the thumbnail's stained pixels.

The check behind the heatmap's colour choice (:mod:`.heatmap_colours`): the overlay drawn on the tiles at or
above the threshold must not use a hue that stained tissue has. Hue is HSV hue in degrees; a pixel counts as
stained when its HSV saturation is at least :data:`STAINED_MIN_SATURATION` (white background, glass and grey
pixels have no meaningful hue). Hues are binned in :data:`HUE_BIN_DEG` bins; a bin is *used* by a set of pixels
when it holds at least :data:`COMMON_SHARE` of them (so a stray pixel does not count).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "COMMON_SHARE",
    "HUE_BIN_DEG",
    "STAINED_MIN_SATURATION",
    "StainSeparation",
    "hue_saturation",
    "stain_separation",
]

STAINED_MIN_SATURATION = 0.15
"""HSV saturation from which a pixel has a colour (stain, or overlay) rather than being grey or white."""
HUE_BIN_DEG = 10
"""Width of the hue bins (degrees)."""
COMMON_SHARE = 0.01
"""A hue bin is used by a set of pixels when it holds at least this share of them."""


@dataclass(frozen=True)
class StainSeparation:
    """``overlap``: the share of the stained tissue pixels whose hue lies within ``tolerance_deg`` of a hue
    the overlay uses (0 = no stained pixel has the overlay's colour). ``hue_gap_deg``: the smallest hue
    distance between a bin the overlay uses and one the stained tissue uses. ``stained_pixels`` and
    ``overlay_pixels``: how many coloured pixels each side had."""

    overlap: float
    hue_gap_deg: float
    stained_pixels: int
    overlay_pixels: int


def hue_saturation(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HSV hue (degrees, 0–360) and saturation (0–1) of (..., 3) uint8 RGB pixels (hue 0 where grey)."""
    pixels = np.asarray(rgb, np.float32) / 255.0
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    high, low = pixels.max(axis=-1), pixels.min(axis=-1)
    chroma = high - low
    safe = np.where(chroma > 0, chroma, 1.0)
    hue = np.select(
        [chroma == 0, high == r, high == g],
        [0.0, ((g - b) / safe) % 6.0, (b - r) / safe + 2.0],
        (r - g) / safe + 4.0,
    )
    saturation = np.where(high > 0, chroma / np.where(high > 0, high, 1.0), 0.0)
    return (hue * 60.0) % 360.0, saturation


def _used_bins(hues: np.ndarray) -> np.ndarray:
    """Boolean (360 / HUE_BIN_DEG,) mask of the bins holding at least COMMON_SHARE of ``hues``."""
    n_bins = 360 // HUE_BIN_DEG
    counts = np.bincount((hues // HUE_BIN_DEG).astype(np.intp) % n_bins, minlength=n_bins)
    return counts >= max(1.0, COMMON_SHARE * len(hues))


def _circular(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Circular distance (degrees) between hue arrays, broadcast."""
    d = np.abs(a - b) % 360.0
    return np.minimum(d, 360.0 - d)


def stain_separation(tissue_rgb: np.ndarray, overlay_rgb: np.ndarray, tolerance_deg: float = 30.0) -> StainSeparation:
    """Separation between the hues of stained tissue (``tissue_rgb``: (..., 3) uint8 pixels of the colour
    thumbnail, e.g. its tissue) and of the overlay (``overlay_rgb``: the rendered heatmap's pixels on the
    lesion, e.g. its tiles at or above the threshold). Only coloured pixels (saturation ≥
    :data:`STAINED_MIN_SATURATION`) count on either side; with none on one side, ``overlap`` is 0 and
    ``hue_gap_deg`` 180. Distances are measured between bin centres (to within :data:`HUE_BIN_DEG`)."""
    tissue_hue, tissue_sat = hue_saturation(np.asarray(tissue_rgb).reshape(-1, 3))
    overlay_hue, overlay_sat = hue_saturation(np.asarray(overlay_rgb).reshape(-1, 3))
    stained = tissue_hue[tissue_sat >= STAINED_MIN_SATURATION]
    coloured = overlay_hue[overlay_sat >= STAINED_MIN_SATURATION]
    if not len(stained) or not len(coloured):
        return StainSeparation(0.0, 180.0, len(stained), len(coloured))
    n_bins = 360 // HUE_BIN_DEG
    centres = (np.arange(n_bins) + 0.5) * HUE_BIN_DEG
    overlay_bins = centres[_used_bins(coloured)]
    tissue_bins = centres[_used_bins(stained)]
    near = (_circular(centres[:, None], overlay_bins[None, :]) <= tolerance_deg).any(axis=1)  # per bin
    tissue_counts = np.bincount((stained // HUE_BIN_DEG).astype(np.intp) % n_bins, minlength=n_bins)
    gap = float(_circular(overlay_bins[:, None], tissue_bins[None, :]).min()) if len(tissue_bins) else 180.0
    return StainSeparation(float(tissue_counts[near].sum() / len(stained)), gap, len(stained), len(coloured))
