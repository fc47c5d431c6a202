"""Strengths of the histology augmentations (a plain dataclass, importable without torch)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AugmentConfig:
    """Strengths of the augmentations (0 switches one off)."""

    dihedral: bool = True
    hed_sigma: float = 0.05  # HED channel scale ~ U(1-σ, 1+σ) and shift ~ U(-σ, σ)
    brightness: float = 0.1  # multiplicative, U(1-b, 1+b)
    contrast: float = 0.1
    saturation: float = 0.1
    blur_probability: float = 0.2
    blur_sigma: tuple[float, float] = (0.1, 1.0)
