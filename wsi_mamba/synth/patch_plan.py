"""Planning a real-tissue cohort: everything but the pixels, from the seed and the source's labels (cheap),
so an interrupted cohort resumes with the same plan. :class:`CohortSpec` holds what the caller chooses;
:func:`plan_patch_cohort` turns it into a :class:`PatchCohortPlan` that carries the spec it was made from."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.patches import PatchSource
from .appearance import DEFAULT_COMPOSITION, NormalTissue, draw_without_repeats, normal_tissue
from .geometry import MULTI_SECTION_CELLS, Oval, covered_cells, section_ovals, tissue_alpha
from .layout import slide_layout
from .lesions import (
    CLASSES,
    CellGeometry,
    LesionClass,
    PatchLesion,
    balanced_classes,
    lesion_class,
    macro_min_cells,
    place_lesions,
)
from .writer import COMPRESSIONS, FLAVOURS

UPSAMPLES = (1, 2, 4)  # level 0 at 1x, 2x or 4x the patches' magnification (10x patches: 10x, 20x, 40x)


@dataclass(frozen=True)
class CohortSpec:
    """What decides a real-tissue cohort besides its patches: ``slides`` (normal and tumor alternate),
    ``seed``, file ``flavour`` (mixed | svs | tiff), ``test_fraction`` (None: a third), ``max_cells`` (the
    long side's bound in cells; slides are 72 % of it to all of it), ``stain`` (strength of the per-slide HED
    shift, 0 = off), ``compression`` (jpeg | lossless), the tumor slides' lesion ``classes`` (a balanced
    seeded mix), ``composition`` (Dirichlet concentration of each slide's normal-tissue mix, 0 = uniform) and
    ``upsample`` (1, 2 or 4: level 0 at that many times the patches' magnification, e.g. 20x or 40x from 10x
    patches; ``max_cells`` counts patches either way)."""

    slides: int = 6
    seed: int = 0
    flavour: str = "mixed"
    test_fraction: float | None = None
    max_cells: int = 60
    stain: float = 1.0
    compression: str = "jpeg"
    classes: Sequence[str] = CLASSES
    composition: float = DEFAULT_COMPOSITION
    upsample: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {tuple(COMPRESSIONS)}, got {self.compression!r}")
        if self.flavour not in (*FLAVOURS, "mixed"):
            raise ValueError(f"flavour must be mixed, svs or tiff, got {self.flavour!r}")
        if not self.classes or any(c not in CLASSES for c in self.classes):
            raise ValueError(f"classes must be a non-empty subset of {CLASSES}, got {self.classes}")
        if self.upsample not in UPSAMPLES:
            raise ValueError(f"upsample must be one of {UPSAMPLES}, got {self.upsample!r}")
        if self.stain < 0:
            raise ValueError(f"stain must be ≥ 0 (0 = no per-slide stain shift), got {self.stain}")

    def record(self, source: PatchSource) -> dict:
        """What decides the cohort's files (this spec, the patches as their resolved folder), as its folder
        records them in ``synth.json``."""
        folder = Path(source.description)
        patches = str(folder.resolve()) if folder.is_dir() else source.description
        record = {
            "generator": "from-patches",
            "patches": patches,
            "slides": self.slides,
            "seed": self.seed,
            "flavour": self.flavour,
            "test_fraction": self.test_fraction,
            "max_cells": self.max_cells,
            "stain": self.stain,
            "compression": self.compression,
            "classes": list(self.classes),
            "composition": self.composition,
        }
        if self.upsample != 1:  # cohorts at the patches' own magnification keep their earlier record
            record["upsample"] = self.upsample
        return record


@dataclass
class PatchSlideSpec:
    """Everything that determines a real-tissue slide's pixels, given its patch source. Sizes are level-0 pixels:
    a cell is ``px`` a side there, and its patch (``patch_px`` a side, 0 = ``px``) is upsampled to it."""

    seed: int
    width: int
    height: int
    mpp: float
    px: int
    ovals: list[Oval]
    cells: np.ndarray  # (n, 2) int64 row, col of tissue cells, row-major
    interior: np.ndarray  # (n,) bool: cell fully inside the outline (a whole patch)
    tumor: np.ndarray  # (n,) bool: cell of a lesion
    patches: np.ndarray  # (n,) int64 source index
    transforms: np.ndarray  # (n,) int64 dihedral transform 0–7 (wsi_mamba.data.dihedral)
    background: tuple[float, float, float]
    stain_alpha: tuple[float, float, float] = (1.0, 1.0, 1.0)  # HED scale
    stain_beta: tuple[float, float, float] = (0.0, 0.0, 0.0)  # HED shift (optical density)
    lesions: list[PatchLesion] = field(default_factory=list)
    tissue_mix: tuple[float, ...] = ()  # weights of the normal-appearance bins, lightest first
    patch_px: int = 0  # the patches' side; 0: px (level 0 at the patches' own resolution)

    @property
    def upsample(self) -> int:
        """Level-0 pixels per patch pixel (1: the patches' own resolution)."""
        return self.px // self.patch_px if self.patch_px else 1

    @property
    def label(self) -> str:
        return "Tumor" if self.lesions else "Normal"

    @property
    def metastasis(self) -> str:
        """The largest lesion's class (macro, micro, itc) or 'none'."""
        return lesion_class(max(x.diameter_um for x in self.lesions)).value if self.lesions else "none"

    @property
    def grid_shape(self) -> tuple[int, int]:
        return self.height // self.px, self.width // self.px

    def alpha(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """Tissue opacity in [0, 1] of level-0 pixels [y0, y0 + h) × [x0, x0 + w), (h, w) float32."""
        return tissue_alpha(self.ovals, x0, y0, w, h)


@dataclass
class PatchCohortSlide:
    """One planned slide of a real-tissue cohort."""

    split: str  # training | testing
    name: str
    path: Path
    spec: PatchSlideSpec
    flavour: str


@dataclass
class PatchCohortPlan:
    """A planned real-tissue cohort: its folder, patches and spec, and its slides (iterable over them)."""

    out: Path
    source: PatchSource
    spec: CohortSpec
    slides: list[PatchCohortSlide]

    def __iter__(self) -> Iterator[PatchCohortSlide]:
        return iter(self.slides)

    def __len__(self) -> int:
        return len(self.slides)

    def __getitem__(self, index: int) -> PatchCohortSlide:
        return self.slides[index]


@dataclass
class _Section:
    """A slide's section on its grid, with the lesions placed on it."""

    ovals: list[Oval]
    tissue: np.ndarray  # (rows, cols) bool
    interior: np.ndarray  # (rows, cols) bool
    lesions: list[PatchLesion]


def _section(
    rng: np.random.Generator,
    kind: LesionClass | None,
    cell: CellGeometry,
    max_cells: int,
    shape: tuple[int, int] | None = None,
) -> _Section:
    """A section of 72 %–100 % of ``max_cells`` (macro: at least 80 % and room for one) that holds 1–3
    lesions whose largest is of class ``kind`` (None: a normal slide); tried 40 times. Grids of at least
    ``MULTI_SECTION_CELLS`` columns are CAMELYON16-shaped (short side 40–55 % of the long one) and hold several
    sections; ``shape`` (rows, cols) fixes the grid instead."""
    min_cells = max(8, round(max_cells * 0.72))
    low = min_cells
    if kind is LesionClass.MACRO:
        low = min(max_cells, max(min_cells, round(max_cells * 0.8), macro_min_cells(cell.px, cell.mpp)))
    for _ in range(40):
        if shape is not None:
            rows, cols = shape
        else:
            cols = int(rng.integers(low, max_cells + 1))
            aspect = (0.4, 0.55) if cols >= MULTI_SECTION_CELLS else (0.65, 0.85)
            rows = max(6, round(cols * rng.uniform(*aspect)))
        ovals = section_ovals(rng, rows, cols, cell.px)
        tissue, interior = covered_cells(ovals, rows, cols, cell.px)
        if kind is None:
            return _Section(ovals, tissue, interior, [])
        axis = max(ovals, key=lambda o: o.a * o.b).angle  # lesions roughly along the main piece
        lesions = place_lesions(rng, kind, interior, cell, axis)
        if lesions is not None:
            return _Section(ovals, tissue, interior, lesions)
    raise ValueError(
        f"slides of at most {max_cells} cells ({max_cells * cell.px} px) cannot hold a {kind} lesion: "
        "allow larger slides"
    )


def _fill(
    rng: np.random.Generator, section: _Section, normal: NormalTissue, tumor_pool: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The section's cells (row-major), which are tumor, the patch of each and the slide's normal-tissue mix."""
    tumor_grid = np.zeros_like(section.tissue)
    for lesion in section.lesions:
        tumor_grid[lesion.cells[:, 0], lesion.cells[:, 1]] = True
    cells = np.argwhere(section.tissue)
    tumor = tumor_grid[cells[:, 0], cells[:, 1]]
    patches = np.zeros(len(cells), np.int64)
    patches[~tumor], mix = normal.draw(rng, int((~tumor).sum()))
    if tumor.any():
        patches[tumor] = draw_without_repeats(rng, tumor_pool, int(tumor.sum()))
    return cells, tumor, patches, mix


def plan_slide(
    seed: int,
    index: int,
    kind: LesionClass | str | None,
    normal: NormalTissue | np.ndarray,
    tumor_pool: np.ndarray,
    px: int,
    mpp: float,
    max_cells: int = 60,
    stain: float = 1.0,
    upsample: int = 1,
    shape: tuple[int, int] | None = None,
) -> PatchSlideSpec:
    """A reproducible slide description: ``kind`` is the largest lesion's class (None or "none": a normal
    slide); ``normal`` the normal patches (binned, with the per-slide mix) or a plain index pool; ``px`` and
    ``mpp`` the patches'. ``upsample`` puts level 0 at that many times their resolution; ``shape`` (rows, cols
    of cells) fixes the grid, which is otherwise drawn from ``max_cells``."""
    if not isinstance(normal, NormalTissue):
        normal = NormalTissue((np.asarray(normal),))
    kind = None if kind in (None, "none") else LesionClass(kind)
    patch_px = px
    px, mpp = px * upsample, mpp / upsample  # level-0 cells
    rng = np.random.default_rng([seed, index, 0x7A])
    section = _section(rng, kind, CellGeometry(px, mpp), max_cells, shape)
    cells, tumor, patches, mix = _fill(rng, section, normal, tumor_pool)
    transforms = rng.integers(0, 8, len(cells)).astype(np.int64)
    grey = rng.uniform(226, 244)
    background = tuple(float(grey + t) for t in rng.uniform(-2.5, 2.5, 3))
    alpha = 1 + stain * np.array([rng.uniform(-0.15, 0.15), rng.uniform(-0.15, 0.15), rng.uniform(-0.05, 0.05)])
    beta = stain * rng.uniform(-0.025, 0.025, 3)
    rows, cols = section.tissue.shape
    return PatchSlideSpec(
        seed=int(rng.integers(1 << 30)),
        width=cols * px,
        height=rows * px,
        mpp=mpp,
        px=px,
        ovals=section.ovals,
        cells=cells.astype(np.int64),
        interior=section.interior[cells[:, 0], cells[:, 1]],
        tumor=tumor,
        patches=patches,
        transforms=transforms,
        background=background,  # type: ignore[arg-type]
        stain_alpha=tuple(float(a) for a in alpha),  # type: ignore[arg-type]
        stain_beta=tuple(float(b) for b in beta),  # type: ignore[arg-type]
        lesions=section.lesions,
        tissue_mix=tuple(round(float(w), 4) for w in mix),
        patch_px=patch_px if upsample != 1 else 0,
    )


def _pools(source: PatchSource, need_tumor: bool) -> tuple[np.ndarray, np.ndarray]:
    """The source's normal and tumor patch indices; ``ValueError`` when a needed label has none."""
    labels = np.asarray(source.labels)
    normal, tumor = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    if not len(normal) and not len(tumor):
        raise ValueError(
            f"{source.description}: no labelled patches (expected folders named 0/1 or normal/tumor, a PCam "
            "_y.h5 beside the _x.h5, or a CSV with path,label)"
        )
    if not len(normal):
        raise ValueError(f"{source.description}: no normal (label 0) patches to build tissue from")
    if need_tumor and not len(tumor):
        raise ValueError(f"{source.description}: no tumour (label 1) patches for the tumour slides")
    return normal, tumor


def _check_size(spec: CohortSpec, px: int, mpp: float, tumor_slides: bool) -> None:
    """``ValueError`` when ``spec.max_cells`` is too small for a slide, or for a macro-metastasis."""
    max_cells = spec.max_cells
    if max_cells < 8:
        raise ValueError(f"slides need at least 8 patches a side ({8 * px} px), got {max_cells} ({max_cells * px} px)")
    need = macro_min_cells(px, mpp)
    if "macro" in spec.classes and tumor_slides and max_cells < need:
        raise ValueError(
            f"slides of at most {max_cells} patches ({max_cells * px} px) a side cannot hold a macro-metastasis "
            f"(> 2 mm): allow at least {need} patches ({need * px} px, --size)"
        )


def plan_patch_cohort(
    out: str | os.PathLike[str], source: PatchSource, spec: CohortSpec = CohortSpec()
) -> PatchCohortPlan:
    """Plan a real-tissue cohort of ``spec`` in CAMELYON16 layout (as ``cohort.plan_cohort``): normal and
    tumor alternate, tumor slides of each split get ``spec.classes`` in a balanced seeded mix (macro slides
    at least 80 % of ``max_cells``). Reads the normal patches once to bin them (unless composition is 0)."""
    layout = slide_layout(out, spec.slides, spec.test_fraction)
    tumor_slides = any(t for *_, t in layout)
    px, mpp = source.geometry.px, source.geometry.mpp
    _check_size(spec, px, mpp, tumor_slides)
    normal, tumor = _pools(source, tumor_slides)
    tissue = normal_tissue(source, normal, spec.composition, spec.seed)
    rng = np.random.default_rng([spec.seed, 0xC0])
    classes = [LesionClass(c) for c in spec.classes]
    kinds: dict[int, LesionClass] = {}
    for split in ("training", "testing"):
        tumor_indices = [i for i, (s, *_, t) in enumerate(layout) if s == split and t]
        kinds.update(zip(tumor_indices, balanced_classes(rng, len(tumor_indices), classes), strict=True))
    slides = []
    for index, (split, name, path, _) in enumerate(layout):
        flavour = spec.flavour
        if flavour == "mixed":
            flavour = FLAVOURS[index % 2 if index < 2 else int(rng.integers(2))]
        slide = plan_slide(
            spec.seed, index, kinds.get(index), tissue, tumor, px, mpp, spec.max_cells, spec.stain, spec.upsample
        )
        slides.append(PatchCohortSlide(split, name, path, slide, flavour))
    return PatchCohortPlan(Path(out), source, spec, slides)
