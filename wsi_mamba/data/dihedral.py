"""The dihedral group of a square image (8 flips and 90° rotations): the one home of its numbering.

Transform ``k`` (0–7) rotates by 90°·(k mod 4) (counter-clockwise on screen, from the first spatial axis
towards the second), then mirrors the second spatial axis (left-right) when k ≥ 4. Patch augmentation,
test-time views and the slide generators all number transforms this way. Works on NumPy arrays and torch
tensors alike (no torch import: tensors bring their own ``rot90`` / ``flip``).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

DIHEDRAL_COUNT = 8
Image = TypeVar("Image")  # a numpy.ndarray or a torch.Tensor


def dihedral(x: Image, k: int, axes: tuple[int, int] = (0, 1)) -> Image:
    """Dihedral transform ``k`` (0–7) of ``x`` over its spatial ``axes`` (rows, columns): ``x`` itself for k = 0.
    NumPy results are views; torch results are new tensors (except for k = 0)."""
    if not 0 <= k < DIHEDRAL_COUNT:
        raise ValueError(f"dihedral transform must be 0–7, got {k}")
    turns, mirror = k % 4, k >= 4
    if isinstance(x, np.ndarray):
        out = np.rot90(x, turns, axes=axes) if turns else x
        return np.flip(out, axes[1]) if mirror else out
    out = x.rot90(turns, axes) if turns else x  # type: ignore[attr-defined]
    return out.flip(axes[1]) if mirror else out  # type: ignore[attr-defined]
