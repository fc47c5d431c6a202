"""Stain normalisation (uint8 RGB → uint8 RGB): Macenko and Reinhard, fitted once per slide, applied per tile.

* **Macenko** (Macenko et al., "A method for normalizing histology slides for quantitative analysis", ISBI 2009):
  the two stain vectors are the extreme angles (1st / 99th percentile) of the tissue's optical densities projected
  on their two principal directions; each pixel's stain concentrations are unmixed with the slide's vectors,
  scaled so their 99th percentiles match the target's, and mixed again with the target's vectors.
* **Reinhard** (Reinhard et al., "Color transfer between images", IEEE CG&A 2001): each channel of the tissue's
  lαβ colour (RGB → LMS → log10 → lαβ, the paper's matrices) is shifted and scaled to the target's mean and std.

A *source* (the slide's stain: 8 numbers for Macenko, 6 for Reinhard) is fitted once per slide from its low-resolution
tissue image (:func:`fit_stain`); :meth:`StainNorm.normaliser` turns it into a per-tile function. Background (near
white: optical density below :data:`BETA`) is left as it is, so a white tile passes unchanged.

Why not torchstain (MIT, resolves on the index): its normalisers re-estimate the stain of every image they
normalise (``fit`` sets only the target), which would fit per tile; keeping a slide's estimate needs its
name-mangled private methods; and it has no Vahadane (Vahadane et al., IEEE TMI 2016; not offered here either).
NumPy only (the CLI parses targets without torch). Optical density and the HED vectors come from
:mod:`.stain`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from .stain import from_optical_density, optical_density

METHODS = ("none", "macenko", "reinhard")
"""What ``--stain-norm`` takes ("none": the tiles as read). Vahadane is not implemented (module docstring)."""
PARAMETER_COUNTS = {"macenko": 8, "reinhard": 6}
BETA = 0.15
"""Optical density (Euclidean norm over RGB) below which a pixel is background (Macenko's transparency threshold)."""
ALPHA = 1.0
"""Macenko's angle percentile: the stain vectors are the 1st and 99th percentile angles."""
MIN_TISSUE_PIXELS = 100
BUILTIN_TARGETS = Path(__file__).with_name("stain_targets.json")

# Reinhard et al. 2001, eq. 2 and 4.
_LMS_FROM_RGB = np.array([[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]])
_LAB_FROM_LOG_LMS = np.diag([3**-0.5, 6**-0.5, 2**-0.5]) @ np.array([[1, 1, 1], [1, 1, -2], [1, -1, 0]])
_RGB_FROM_LMS = np.linalg.inv(_LMS_FROM_RGB)
_LOG_LMS_FROM_LAB = np.linalg.inv(_LAB_FROM_LOG_LMS)


class StainEstimationError(ValueError):
    """An image's stain cannot be estimated (too little tissue)."""


def _tissue_od(rgb: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(n, 3) optical densities of the pixels of ``rgb`` (under ``mask``) that are not background."""
    od = optical_density(rgb).reshape(-1, 3).astype(np.float64)
    keep = np.linalg.norm(od, axis=1) >= BETA
    if mask is not None:
        keep &= mask.reshape(-1)
    if keep.sum() < MIN_TISSUE_PIXELS:
        raise StainEstimationError(f"too little tissue to estimate its stain ({int(keep.sum())} stained pixels)")
    return od[keep]


def _macenko_vectors(od: np.ndarray) -> np.ndarray:
    """(3, 2) unit stain vectors (haematoxylin, eosin) of tissue optical densities ``od`` (Macenko 2009)."""
    _, eigvecs = np.linalg.eigh(np.cov(od.T))
    plane = eigvecs[:, 1:3] * np.where(eigvecs[:, 1:3].sum(0) < 0, -1, 1)  # the two largest, pointing into OD > 0
    projected = od @ plane
    phi = np.arctan2(projected[:, 1], projected[:, 0])
    low, high = np.percentile(phi, [ALPHA, 100 - ALPHA])
    v_low = plane @ np.array([np.cos(low), np.sin(low)])
    v_high = plane @ np.array([np.cos(high), np.sin(high)])
    # haematoxylin absorbs more red than eosin: it is the vector with the larger red component
    return np.stack([v_low, v_high] if v_low[0] > v_high[0] else [v_high, v_low], axis=1)


def _lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB → lαβ (Reinhard 2001; black clamped to 1/255 so the log stays finite)."""
    lms = np.maximum(rgb.astype(np.float64) / 255, 1 / 255) @ _LMS_FROM_RGB.T
    return np.log10(np.maximum(lms, 1e-6)) @ _LAB_FROM_LOG_LMS.T


def _rgb(lab: np.ndarray) -> np.ndarray:
    """lαβ → (..., 3) float RGB in [0, 255] (inverse of :func:`_lab`)."""
    return np.clip((10 ** (lab @ _LOG_LMS_FROM_LAB.T)) @ _RGB_FROM_LMS.T * 255, 0, 255)


def fit_stain(method: str, rgb: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, ...]:
    """The stain parameters of ``method`` fitted on the tissue of ``rgb`` (H, W, 3) uint8 (pixels under ``mask``
    that are not background): Macenko's (3, 2) stain vectors then the 99th percentiles of the two concentrations
    (8 numbers); Reinhard's lαβ means then stds (6). :class:`StainEstimationError` with too little tissue."""
    od = _tissue_od(rgb, mask)
    if method == "macenko":
        vectors = _macenko_vectors(od)
        concentrations = np.linalg.pinv(vectors) @ od.T  # least squares, (2, n)
        return tuple(float(v) for v in [*vectors.ravel(), *np.percentile(concentrations, 99, axis=1)])
    if method == "reinhard":
        lab = _lab(from_optical_density(od.astype(np.float32)))
        return tuple(float(v) for v in [*lab.mean(0), *np.maximum(lab.std(0), 1e-6)])
    raise ValueError(f"unknown stain normalisation {method!r}: one of {', '.join(METHODS)}")


def _background_weight(rgb: np.ndarray) -> np.ndarray:
    """(..., 1) in [0, 1]: 0 for background (optical density 0), 1 from :data:`BETA` on (a smooth edge)."""
    return np.clip(np.linalg.norm(optical_density(rgb), axis=-1, keepdims=True) / BETA, 0, 1)


@dataclass(frozen=True)
class StainNorm:
    """A stain normalisation: ``method`` (macenko | reinhard) towards the ``target`` parameters
    (:func:`fit_stain`); ``target_name`` says where they came from (``builtin`` or an image's name)."""

    method: str
    target: tuple[float, ...]
    target_name: str = field(default="builtin", compare=False)

    def __post_init__(self) -> None:
        count = PARAMETER_COUNTS.get(self.method)
        if count is None:
            raise ValueError(f"unknown stain normalisation {self.method!r}: one of {', '.join(METHODS[1:])}")
        try:
            values = tuple(round(float(v), 6) for v in self.target if not isinstance(v, (str, bool)))
        except (TypeError, ValueError):
            values = ()
        if len(values) != count or len(self.target) != count or not np.all(np.isfinite(values)):
            raise ValueError(f"a {self.method} stain target needs {count} finite numbers, got {self.target!r:.120}")
        object.__setattr__(self, "target", values)

    def attrs(self) -> dict:
        """What stores and models record (beside the feature mode's ``mode``)."""
        return {"stain_norm": self.method, "stain_target": list(self.target), "stain_target_name": self.target_name}

    @classmethod
    def from_attrs(cls, attrs: dict) -> StainNorm | None:
        """The normalisation ``attrs`` record; None without one (or ``none``)."""
        method = attrs.get("stain_norm", "none")
        if method == "none":
            return None
        target = attrs.get("stain_target")
        values = tuple(target) if isinstance(target, list | tuple) else ()
        return cls(str(method), values, str(attrs.get("stain_target_name", "?")))

    def describe(self) -> str:
        return f"{self.method} stain normalisation (target {self.target_name})"

    def normaliser(self, source: tuple[float, ...]) -> Callable[[np.ndarray], np.ndarray]:
        """A function (..., 3) uint8 → same shape uint8 taking pixels of the stain ``source`` (:func:`fit_stain`
        on their slide) to the target; background stays as it is."""
        src, tgt = np.asarray(source, np.float64), np.asarray(self.target, np.float64)
        if self.method == "macenko":
            unmix = np.linalg.pinv(src[:6].reshape(3, 2))  # (2, 3): OD → concentrations
            mix = tgt[:6].reshape(3, 2) * (tgt[6:] / np.maximum(src[6:], 1e-6))  # scaled concentrations → OD
            matrix = (mix @ unmix).T.astype(np.float32)

            def transform(rgb: np.ndarray) -> np.ndarray:
                return from_optical_density(optical_density(rgb) @ matrix)
        else:
            scale = tgt[3:] / src[3:]

            def transform(rgb: np.ndarray) -> np.ndarray:
                return _rgb((_lab(rgb) - src[:3]) * scale + tgt[:3])

        def normalise(rgb: np.ndarray) -> np.ndarray:
            weight = _background_weight(rgb)
            out = weight * transform(rgb) + (1 - weight) * rgb
            return np.clip(out + 0.5, 0, 255).astype(np.uint8)

        return normalise


def normalise_each(images: np.ndarray, stain: StainNorm | None) -> tuple[np.ndarray, int]:
    """(n, h, w, 3) uint8 images each normalised on its own stain (patches without their slide: each is fitted
    alone), and how many were left as read because their stain could not be estimated."""
    if stain is None or not len(images):
        return images, 0
    out, skipped = images.copy(), 0
    for i, image in enumerate(images):
        try:
            out[i] = stain.normaliser(fit_stain(stain.method, image))(image)
        except StainEstimationError:
            skipped += 1
    return out, skipped


@cache
def _builtin_targets() -> dict:
    return json.loads(BUILTIN_TARGETS.read_text())


def builtin_target(method: str) -> StainNorm | None:
    """The shipped target of ``method`` (fitted on PCam training patches by ``benchmarks/fit_stain_target.py``);
    None for ``none``."""
    if method == "none":
        return None
    return StainNorm(method, tuple(_builtin_targets()[method]), "builtin")


def target_from_image(method: str, path: str | Path) -> StainNorm | None:
    """``method``'s target fitted on the image at ``path``; ``ValueError`` (one line) when it cannot be read or
    holds too little tissue. None for ``none``."""
    if method == "none":
        return None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise ValueError(f"{path}: cannot read the stain target image: {error}") from None
    try:
        return StainNorm(method, fit_stain(method, rgb), Path(path).name)
    except StainEstimationError as error:
        raise ValueError(f"{path}: no stain target: {error}") from None


__all__ = [
    "METHODS",
    "StainEstimationError",
    "StainNorm",
    "builtin_target",
    "fit_stain",
    "normalise_each",
    "target_from_image",
]
