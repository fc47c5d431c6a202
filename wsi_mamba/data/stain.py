"""The HED stain space (Ruifrok & Johnston): the one home of its matrices, in NumPy (no torch).

Optical density (OD) mixes as ``od = hed @ RGB_FROM_HED``; ``hed = od @ HED_FROM_RGB`` unmixes it into
haematoxylin, eosin and DAB. ``wsi_mamba.data.augment`` (stain jitter, torch) and ``wsi_mamba.synth`` (a
slide's fixed stain shift, NumPy) both use these, so they stay one stain space. NumPy only, so that the
slide generators need no torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Ruifrok & Johnston's stain vectors (rows: haematoxylin, eosin, DAB), as scikit-image's rgb_from_hed.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], np.float32)
RGB_FROM_HED /= np.linalg.norm(RGB_FROM_HED, axis=1, keepdims=True)
RGB_FROM_HED.flags.writeable = False
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED).astype(np.float32)
HED_FROM_RGB.flags.writeable = False


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) RGB in [0, 255] → float32 optical density (Beer–Lambert; white is 0, black stays finite:
    I·254/255 + 1/255)."""
    return -np.log(np.asarray(rgb, np.float32) * np.float32(254 / 255 / 255) + np.float32(1 / 255))


def from_optical_density(od: np.ndarray) -> np.ndarray:
    """Inverse of :func:`optical_density`: float32 RGB clipped to [0, 255] (not rounded)."""
    return np.clip((np.exp(-np.asarray(od, np.float32)) - np.float32(1 / 255)) * np.float32(255 * 255 / 254), 0, 255)


def hed_scale_shift(rgb: np.ndarray, alpha: Sequence[float], beta: Sequence[float]) -> np.ndarray:
    """uint8 RGB (..., 3) with its H, E and DAB optical densities scaled by ``alpha`` and shifted by ``beta``:
    the arithmetic of ``augment.hed_jitter`` with fixed parameters (white stays finite: I·254/255 + 1/255)."""
    hed = optical_density(rgb) @ HED_FROM_RGB
    hed = hed * np.asarray(alpha, np.float32) + np.asarray(beta, np.float32)
    return (from_optical_density(hed @ RGB_FROM_HED) + 0.5).astype(np.uint8)
