"""Strengths of the histology augmentations and the test-time view counts (plain data, importable without torch)."""

from __future__ import annotations

from dataclasses import dataclass

VIEW_COUNTS = (1, 4, 8)
"""Test-time views a tile can be encoded in: itself, its four 90° rotations, or those and their mirror images."""


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
