"""Lesions of the real-tissue slides: CAMELYON16's size classes and the placing of lesions on a section.

Classes by longest diameter: macro-metastasis (≥ 2 mm), micro-metastasis (≥ 0.2 mm) and isolated tumor
cells (ITC, < 0.2 mm: one or two patches). A lesion is a set of whole grid cells; its outline is the cells'
polygon (convex corners cut by a quarter cell) and its diameter the polygon's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

from .geometry import MARGIN_CELLS, diameter_um, irregular_ellipse, keep_apart, outline, place

MACRO_UM, ITC_UM = 2000.0, 200.0
LESION_GAP = 2  # cells of normal tissue between two lesions


class LesionClass(str, Enum):
    """A CAMELYON16 lesion class; equal to its name (``LesionClass.ITC == "itc"``)."""

    MACRO = "macro"
    MICRO = "micro"
    ITC = "itc"

    def __str__(self) -> str:
        return self.value

    @property
    def drawn_um(self) -> tuple[float, float] | None:
        """The range the longest diameter of a drawn lesion is picked from (µm); None for ITC (1–2 cells)."""
        return _DRAWN_UM.get(self)

    @property
    def companions(self) -> tuple[LesionClass, ...]:
        """Classes of the smaller lesions a slide whose largest lesion is of this class may carry besides."""
        return _COMPANIONS[self]


_DRAWN_UM = {LesionClass.MACRO: (2150.0, 3200.0), LesionClass.MICRO: (260.0, 1800.0)}
_COMPANIONS = {
    LesionClass.MACRO: (LesionClass.MICRO, LesionClass.ITC),
    LesionClass.MICRO: (LesionClass.MICRO, LesionClass.ITC),
    LesionClass.ITC: (LesionClass.ITC,),
}
CLASSES = tuple(c.value for c in LesionClass)


def lesion_class(diameter: float) -> LesionClass:
    """CAMELYON16's class of a lesion by its longest diameter (µm): macro (≥ 2 mm), micro (≥ 0.2 mm), itc."""
    if diameter >= MACRO_UM:
        return LesionClass.MACRO
    return LesionClass.MICRO if diameter >= ITC_UM else LesionClass.ITC


def macro_min_cells(px: int, mpp: float) -> int:
    """The long side (cells) a slide needs to hold a macro-metastasis inside its section."""
    return math.ceil(_DRAWN_UM[LesionClass.MACRO][0] / (px * mpp) / 0.7) + 2 * MARGIN_CELLS


@dataclass
class PatchLesion:
    """A lesion: its cells (row, col), outline (level-0 x, y) and longest diameter."""

    cells: np.ndarray
    polygon: np.ndarray
    diameter_um: float

    @property
    def kind(self) -> LesionClass:
        return lesion_class(self.diameter_um)


@dataclass(frozen=True)
class CellGeometry:
    """A slide's grid cells: side (level-0 px) and level-0 µm/px."""

    px: int
    mpp: float

    @property
    def cell_um(self) -> float:
        return self.px * self.mpp


def _build(rng: np.random.Generator, shape: np.ndarray, allowed: np.ndarray, cell: CellGeometry) -> PatchLesion | None:
    cells = place(rng, shape, allowed)
    if cells is None:
        return None
    polygon = outline(cells, cell.px)
    return PatchLesion(cells.astype(np.int64), polygon, diameter_um(polygon, cell.mpp))


def _itc(rng: np.random.Generator, allowed: np.ndarray, cell: CellGeometry) -> PatchLesion | None:
    """Isolated tumor cells: one or two patches (a pair only where its diameter stays under 0.2 mm)."""
    pair = np.ones((1, 2) if rng.random() < 0.5 else (2, 1), bool)
    for shape in ([pair] if rng.random() < 0.5 else []) + [np.ones((1, 1), bool)]:
        lesion = _build(rng, shape, allowed, cell)
        if lesion is not None and lesion.kind is LesionClass.ITC:
            return lesion
    return None


def _drawn(
    rng: np.random.Generator, kind: LesionClass, allowed: np.ndarray, cell: CellGeometry, axis: float, cap_um: float
) -> PatchLesion | None:
    """A macro or micro lesion: an irregular ellipse of a drawn diameter, shrunk until it fits."""
    lo, hi = kind.drawn_um  # type: ignore[misc]
    hi = min(hi, cap_um)
    if hi < lo:
        return None
    diameter = rng.uniform(lo, hi)
    for _ in range(12):
        angle = axis + rng.normal(0, 0.5)
        lesion = _build(rng, irregular_ellipse(rng, diameter / cell.cell_um, angle), allowed, cell)
        if lesion is not None and lesion.kind is kind and lesion.diameter_um <= cap_um:
            return lesion
        diameter = max(lo, diameter * 0.85)
    return None


def place_lesion(
    rng: np.random.Generator, kind: LesionClass, allowed: np.ndarray, cell: CellGeometry, axis: float, cap_um: float
) -> PatchLesion | None:
    """A lesion of class ``kind`` (no larger than ``cap_um``, roughly along ``axis``) on ``allowed`` cells, or None."""
    if kind.drawn_um is None:
        return _itc(rng, allowed, cell)
    return _drawn(rng, kind, allowed, cell, axis, cap_um)


def place_lesions(
    rng: np.random.Generator, kind: LesionClass, interior: np.ndarray, cell: CellGeometry, axis: float
) -> list[PatchLesion] | None:
    """1–3 lesions whose largest is of class ``kind``, on interior cells, apart from each other."""
    allowed = interior.copy()
    main = place_lesion(rng, kind, allowed, cell, axis, math.inf)
    if main is None:
        return None
    lesions = [main]
    for _ in range(int(rng.integers(0, 3))):
        keep_apart(allowed, lesions[-1].cells, LESION_GAP)
        companions = kind.companions
        extra_kind = companions[int(rng.choice(len(companions)))]
        extra = place_lesion(rng, extra_kind, allowed, cell, axis, main.diameter_um)
        if extra is not None:
            lesions.append(extra)
    return lesions


def balanced_classes(rng: np.random.Generator, n: int, classes: Sequence[LesionClass]) -> list[LesionClass]:
    """``n`` classes, each block of len(classes) a fresh permutation (counts differ by at most one)."""
    out: list[LesionClass] = []
    while len(out) < n:
        out.extend(classes[i] for i in rng.permutation(len(classes)))
    return out[:n]
