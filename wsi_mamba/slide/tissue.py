"""Tissue detection on a low-resolution level: Otsu on HSV saturation, then morphology."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from .base import Slide
from .errors import SlideError

# Without an mpp, the mask is made at this downsample of level 0.
_FALLBACK_DOWNSAMPLE = 32.0


@dataclass(frozen=True)
class TissueParams:
    """Knobs of ``detect_tissue``; lengths and areas in microns at the mask's resolution."""

    mask_mpp: float = 8.0  # resolution of the mask (≈ 8–16 µm/px)
    min_saturation: int = 20  # the Otsu threshold is never below this (0–255): blank slides stay empty
    max_value: int = 250  # brighter pixels (background glass) are never tissue, whatever their saturation
    close_um: float = 50.0  # radius of the closing that joins nearby fragments
    min_object_um2: float = 20_000.0  # smaller connected components are dropped (dust, debris)
    fill_holes: bool = True


@dataclass
class TissueMask:
    """Boolean tissue mask of a slide; ``downsample`` is level-0 pixels per mask pixel."""

    mask: np.ndarray
    downsample: float
    mpp: float | None
    threshold: float

    @property
    def fraction(self) -> float:
        """Fraction of the slide covered by tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of uint8 values (the level maximising the between-class variance)."""
    hist = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0.0
    levels = np.arange(256, dtype=np.float64)
    weight0 = np.cumsum(hist)
    weight1 = total - weight0
    cum_mean = np.cumsum(hist * levels)
    mean0 = cum_mean / np.maximum(weight0, 1)
    mean1 = (cum_mean[-1] - cum_mean) / np.maximum(weight1, 1)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(np.argmax(between))


def _disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


def tissue_from_rgb(
    rgb: np.ndarray, pixel_um: float | None, params: TissueParams
) -> tuple[np.ndarray, float]:
    """(mask, threshold) of an (h, w, 3) uint8 image whose pixels are ``pixel_um`` microns wide."""
    hsv = np.asarray(Image.fromarray(rgb).convert("HSV"))
    saturation, value = hsv[:, :, 1], hsv[:, :, 2]
    threshold = max(otsu_threshold(saturation), float(params.min_saturation))
    mask = (saturation > threshold) & (value < params.max_value)
    px = pixel_um or params.mask_mpp
    radius = round(params.close_um / px)
    if radius > 0 and mask.any():
        mask = ndimage.binary_closing(np.pad(mask, radius), _disk(radius))[radius:-radius, radius:-radius]
    if params.fill_holes:
        mask = ndimage.binary_fill_holes(mask)
    min_pixels = params.min_object_um2 / (px * px)
    if min_pixels > 1 and mask.any():
        labels, count = ndimage.label(mask)
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        keep = sizes >= min_pixels
        keep[0] = False
        mask = keep[labels]
    return mask.astype(bool), threshold


def detect_tissue(slide: Slide, params: TissueParams | None = None) -> TissueMask:
    """Tissue mask at ``params.mask_mpp`` (or level-0 downsample 32 without an mpp), read from the
    finest pyramid level not finer than needed and resized. No tissue gives an all-False mask."""
    params = params or TissueParams()
    if slide.grayscale:
        raise SlideError(
            slide.path,
            "a grayscale image (one sample per pixel, no colour): tissue is found by its stain colour and the "
            "models are trained on colour H&E slides; use a colour scan",
        )
    ds = params.mask_mpp / slide.mpp if slide.mpp else _FALLBACK_DOWNSAMPLE
    w0, h0 = slide.dimensions
    size = (max(1, round(w0 / ds)), max(1, round(h0 / ds)))
    ds = (w0 / size[0] + h0 / size[1]) / 2
    rgb = slide.read_level(slide.best_level_for_downsample(ds), size)
    pixel_um = slide.mpp * ds if slide.mpp else None
    mask, threshold = tissue_from_rgb(rgb, pixel_um, params)
    return TissueMask(mask, ds, pixel_um, threshold)
