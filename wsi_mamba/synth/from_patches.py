"""Real-tissue slides: CAMELYON16-style cohorts whose every tissue cell is a real labelled patch.

A slide is a grid of ``px`` × ``px`` cells aligned to its origin (so a tile grid at the patches' mpp with
tile = px lands exactly on the cells). A lymph-node-shaped section (one or two irregular ovals with a smooth
random outline, soft-edged) lies on a light-grey glass background with mild noise; each tissue cell holds a
normal patch of the source under a random dihedral transform (boundary cells are cut by the outline). Tumour
slides carry 1–3 lesions made of tumour patches, in CAMELYON16's size classes by longest diameter: macro
(≥ 2 mm), micro (0.2–2 mm) and isolated tumour cells (ITC, < 0.2 mm: one or two patches); the slide's class
is its largest lesion's, and classes are balanced (seeded) over each split's tumour slides. One ASAP XML
polygon per lesion traces its cells (convex corners cut by a quarter cell). A per-slide stain shift in HED
space (a centre effect) applies to all the slide's tissue.

Slides differ in tissue composition as real nodes do (fatty, sparse or densely cellular): the normal patches
are sorted into appearance bins by their mean optical density, and each slide draws its normal tissue from a
slide-specific Dirichlet mix of the bins (``composition`` is the concentration: smaller, more varied slides;
0 draws every slide uniformly from the pool, which makes every normal slide's mean colour nearly the same and
lets a colour-statistics baseline read tumour area off the mean colour).

Everything but the pixels is planned first from the seed and the source's labels (cheap), so an
interrupted cohort resumes with the same plan; files are written by the procedural generator's writer
(``wsi_mamba.synth.writer.write_slide``: pyramidal TIFF/SVS, atomic) at the patches' mpp.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from ..data.patches import PatchSource, open_patches
from ..outputs.atomic import write_text_atomic
from ..slide.annotations import Annotations
from .layout import (
    LABEL_COLUMNS,
    check_cohort_output,
    claim_cohort_output,
    label_row,
    slide_layout,
    tumour_annotations,
    write_label_csvs,
    write_lesion_xml,
)
from .writer import COMPRESSIONS, FLAVOURS, write_slide

__all__ = [
    "CLASSES",
    "MANIFEST",
    "NormalTissue",
    "Oval",
    "PatchCohortSlide",
    "PatchLesion",
    "PatchSlideSpec",
    "apply_dihedral",
    "lesion_annotations",
    "lesion_class",
    "macro_min_cells",
    "patch_cohort_parameters",
    "plan_patch_cohort",
    "plan_slide",
    "render_patch_slide",
    "stain_shift",
    "write_patch_cohort",
]

CLASSES = ("macro", "micro", "itc")
MACRO_UM, ITC_UM = 2000.0, 200.0
MANIFEST = "patches_used.txt"
APPEARANCE_BINS = 8  # quantile bins of the normal patches' mean optical density
DEFAULT_COMPOSITION = 1.0  # Dirichlet concentration of the per-slide mix of the bins (uniform on the simplex)
MAX_APPEARANCE_PATCHES = 40_000  # normal patches read to bin (a seeded subset of larger pools)
SOFT_PX = 3.0  # width of the tissue outline's soft edge (level-0 px)
MARGIN_CELLS = 2  # glass between the section and the slide's border
LESION_GAP = 2  # cells of normal tissue between two lesions
MACRO_RANGE, MICRO_RANGE = (2150.0, 3200.0), (260.0, 1800.0)  # longest diameters drawn (µm)
# Ruifrok & Johnston's stain vectors, as wsi_mamba.data.augment (rows: haematoxylin, eosin, DAB).
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], np.float32)
RGB_FROM_HED /= np.linalg.norm(RGB_FROM_HED, axis=1, keepdims=True)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED).astype(np.float32)


def lesion_class(diameter_um: float) -> str:
    """CAMELYON16's class of a lesion by its longest diameter: macro (≥ 2 mm), micro (≥ 0.2 mm), itc."""
    return "macro" if diameter_um >= MACRO_UM else ("micro" if diameter_um >= ITC_UM else "itc")


# ---- plan ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Oval:
    """One piece of the section: centre and semi-axes (level-0 px), rotation, radial harmonics (k = 2…)."""

    cx: float
    cy: float
    a: float
    b: float
    angle: float
    amplitudes: tuple[float, ...]
    phases: tuple[float, ...]

    def depth(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Signed distance (px, along the ray from the centre) to the outline: > 0 inside."""
        dx, dy = x - self.cx, y - self.cy
        c, s = math.cos(self.angle), math.sin(self.angle)
        u, v = (dx * c + dy * s) / self.a, (-dx * s + dy * c) / self.b
        q = np.hypot(u, v)
        theta = np.arctan2(v, u)
        rho = np.ones_like(q)
        for k, (amp, phase) in enumerate(zip(self.amplitudes, self.phases, strict=True), start=2):
            rho = rho + amp * np.sin(k * theta + phase)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(q > 1e-9, np.hypot(dx, dy) * (rho / q - 1), min(self.a, self.b))


def _alpha(ovals: Sequence[Oval], x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """Tissue opacity in [0, 1] of level-0 pixels [y0, y0 + h) × [x0, x0 + w), (h, w) float32."""
    x = (x0 + np.arange(w, dtype=np.float32) + 0.5)[None, :]
    y = (y0 + np.arange(h, dtype=np.float32) + 0.5)[:, None]
    depth = np.max([oval.depth(x, y) for oval in ovals], axis=0)
    return np.clip(depth / SOFT_PX + 0.5, 0, 1).astype(np.float32)


@dataclass
class PatchLesion:
    """A lesion: its cells (row, col), outline (level-0 x, y) and longest diameter."""

    cells: np.ndarray
    polygon: np.ndarray
    diameter_um: float

    @property
    def kind(self) -> str:
        return lesion_class(self.diameter_um)


@dataclass
class PatchSlideSpec:
    """Everything that determines a real-tissue slide's pixels, given its patch source."""

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
    transforms: np.ndarray  # (n,) int64 dihedral transform 0–7 (see apply_dihedral)
    background: tuple[float, float, float]
    stain_alpha: tuple[float, float, float] = (1.0, 1.0, 1.0)  # HED scale
    stain_beta: tuple[float, float, float] = (0.0, 0.0, 0.0)  # HED shift (optical density)
    lesions: list[PatchLesion] = field(default_factory=list)
    tissue_mix: tuple[float, ...] = ()  # weights of the normal-appearance bins, lightest first

    @property
    def label(self) -> str:
        return "Tumor" if self.lesions else "Normal"

    @property
    def metastasis(self) -> str:
        """The largest lesion's class (macro, micro, itc) or 'none'."""
        return lesion_class(max(x.diameter_um for x in self.lesions)) if self.lesions else "none"

    @property
    def grid_shape(self) -> tuple[int, int]:
        return self.height // self.px, self.width // self.px

    def alpha(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """Tissue opacity in [0, 1] of level-0 pixels [y0, y0 + h) × [x0, x0 + w), (h, w) float32."""
        return _alpha(self.ovals, x0, y0, w, h)


@dataclass
class PatchCohortSlide:
    """One planned slide of a real-tissue cohort."""

    split: str  # training | testing
    name: str
    path: Path
    spec: PatchSlideSpec
    flavour: str


def _fit_oval(rng: np.random.Generator, box: tuple[float, float, float, float], px: int) -> Oval:
    """An irregular oval inside ``box`` (x0, y0, x1, y1, level-0 px), long axis roughly horizontal."""
    x0, y0, x1, y1 = box
    amplitudes = tuple(float(rng.uniform(0.0, 0.09) / k**0.5) for k in range(2, 7))
    phases = tuple(float(p) for p in rng.uniform(0, 2 * np.pi, len(amplitudes)))
    angle = float(rng.uniform(-0.3, 0.3))
    a, b = (x1 - x0) / 2 * rng.uniform(0.85, 1.0), (y1 - y0) / 2 * rng.uniform(0.8, 1.0)
    reach = 1 + sum(amplitudes)
    half_w = math.hypot(a * math.cos(angle), b * math.sin(angle)) * reach
    half_h = math.hypot(a * math.sin(angle), b * math.cos(angle)) * reach
    scale = min((x1 - x0) / 2 / half_w, (y1 - y0) / 2 / half_h, 1.0)
    a, b = max(a * scale, px), max(b * scale, px)
    slack_x, slack_y = max(0.0, (x1 - x0) / 2 - half_w * scale), max(0.0, (y1 - y0) / 2 - half_h * scale)
    cx = (x0 + x1) / 2 + rng.uniform(-slack_x, slack_x)
    cy = (y0 + y1) / 2 + rng.uniform(-slack_y, slack_y)
    return Oval(float(cx), float(cy), float(a), float(b), angle, amplitudes, phases)


def _tissue(rng: np.random.Generator, rows: int, cols: int, px: int) -> tuple[list[Oval], np.ndarray, np.ndarray]:
    """Ovals of a section on a rows × cols grid, and per cell: tissue (any coverage) and interior masks."""
    w, h, m = cols * px, rows * px, MARGIN_CELLS * px
    if rng.random() < 0.35 and cols >= 12:  # two pieces side by side, the bigger one left or right
        share = rng.uniform(0.55, 0.7) if rng.random() < 0.5 else rng.uniform(0.3, 0.45)
        split = m + (w - 2 * m) * share
        ovals = [_fit_oval(rng, (m, m, split, h - m), px), _fit_oval(rng, (split, m, w - m, h - m), px)]
    else:
        ovals = [_fit_oval(rng, (m, m, w - m, h - m), px)]
    # 12 × 12 samples per cell classify cells; cells near the outline get an exact per-pixel test.
    k = 12
    step = px / k
    xs = ((np.arange(cols * k, dtype=np.float32) + 0.5) * step)[None, :]
    ys = ((np.arange(rows * k, dtype=np.float32) + 0.5) * step)[:, None]
    blocks = np.max([o.depth(xs, ys) for o in ovals], axis=0).reshape(rows, k, cols, k)
    lo, hi = blocks.min(axis=(1, 3)), blocks.max(axis=(1, 3))
    safe = SOFT_PX / 2 + 2 * step  # the depth changes by less than 2 px per px
    interior, tissue = lo >= safe, hi > -safe
    for r, c in zip(*np.nonzero(tissue & ~interior), strict=True):
        alpha = _alpha(ovals, int(c) * px, int(r) * px, px, px)
        tissue[r, c] = bool(alpha.max() > 0)
        interior[r, c] = bool(alpha.min() >= 1)
    return ovals, tissue, interior


def _clean_cells(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component with its holes filled: cells whose outline is one simple polygon
    (two cells of it touching only at a corner would enclose a hole on one side, which is filled)."""
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, labels, range(1, n + 1))
        mask = labels == 1 + int(np.argmax(sizes))
    return ndimage.binary_fill_holes(mask)


def _outline(cells: np.ndarray, px: int) -> np.ndarray:
    """Closed outline (level-0 x, y) of a simple set of cells (row, col), clockwise on screen, with convex
    corners cut by a quarter cell."""
    occupied = {(int(r), int(c)) for r, c in cells}
    nxt: dict[tuple[int, int], tuple[int, int]] = {}  # vertex (x, y) in cell units → next vertex
    for r, c in occupied:
        if (r - 1, c) not in occupied:
            nxt[(c, r)] = (c + 1, r)
        if (r, c + 1) not in occupied:
            nxt[(c + 1, r)] = (c + 1, r + 1)
        if (r + 1, c) not in occupied:
            nxt[(c + 1, r + 1)] = (c, r + 1)
        if (r, c - 1) not in occupied:
            nxt[(c, r + 1)] = (c, r)
    start = min(nxt)
    loop, v = [start], nxt[start]
    while v != start:
        loop.append(v)
        v = nxt[v]
    pts = np.array(loop, np.float64)
    prev, following = np.roll(pts, 1, axis=0), np.roll(pts, -1, axis=0)
    d_in, d_out = pts - prev, following - pts
    cross = d_in[:, 0] * d_out[:, 1] - d_in[:, 1] * d_out[:, 0]
    corners = cross != 0  # drop vertices in the middle of straight runs
    pts, d_in, d_out, cross = pts[corners], d_in[corners], d_out[corners], cross[corners]
    d_in /= np.abs(d_in).sum(axis=1, keepdims=True)
    d_out /= np.abs(d_out).sum(axis=1, keepdims=True)
    out = []
    for p, a, b, turn in zip(pts, d_in, d_out, cross, strict=True):
        if turn > 0:  # convex on screen (y down, clockwise)
            out.extend([p - 0.25 * a, p + 0.25 * b])
        else:
            out.append(p)
    return np.asarray(out) * px


def _diameter_um(polygon: np.ndarray, mpp: float) -> float:
    d = polygon[:, None, :] - polygon[None, :, :]
    return float(np.sqrt((d**2).sum(-1)).max() * mpp)


def _lesion_shape(rng: np.random.Generator, diameter_um: float, cell_um: float, angle: float) -> np.ndarray:
    """A lesion's cell mask (odd-sized square, centred): an irregular ellipse of about ``diameter_um``."""
    length = diameter_um / cell_um
    aspect = rng.uniform(0.5, 0.9)
    amps = rng.uniform(0.0, 0.12, 3)
    phases = rng.uniform(0, 2 * np.pi, 3)
    n = math.ceil(length * 1.3) | 1
    yy, xx = np.mgrid[:n, :n] - n // 2
    c, s = math.cos(angle), math.sin(angle)
    u, v = (xx * c + yy * s) / (length / 2), (-xx * s + yy * c) / (length * aspect / 2)
    theta = np.arctan2(v, u)
    rho = 1 + sum(a * np.sin(k * theta + p) for k, (a, p) in enumerate(zip(amps, phases, strict=True), start=2))
    mask = np.hypot(u, v) <= rho
    if not mask.any():
        mask[n // 2, n // 2] = True
    return _clean_cells(mask)


def _place(rng: np.random.Generator, shape: np.ndarray, allowed: np.ndarray) -> np.ndarray | None:
    """Cells (row, col) of ``shape`` at a random position where all of them are ``allowed``, or None."""
    if shape.shape[0] > allowed.shape[0] or shape.shape[1] > allowed.shape[1]:
        return None
    fits = ndimage.correlate(allowed.astype(np.int32), shape.astype(np.int32), mode="constant", cval=0)
    anchors = np.argwhere(fits == int(shape.sum()))
    if not len(anchors):
        return None
    ar, ac = anchors[int(rng.integers(len(anchors)))]
    offsets = np.argwhere(shape) - np.array(shape.shape) // 2
    return offsets + np.array([ar, ac])


def _lesion(
    rng: np.random.Generator, kind: str, allowed: np.ndarray, px: int, mpp: float, axis: float, cap_um: float
) -> PatchLesion | None:
    """A lesion of class ``kind`` (no larger than ``cap_um``) placed on ``allowed`` cells, or None."""
    cell_um = px * mpp
    if kind == "itc":  # one or two patches (a pair only where its diameter stays under 0.2 mm)
        pair = np.ones((1, 2) if rng.random() < 0.5 else (2, 1), bool)
        for shape in ([pair] if rng.random() < 0.5 else []) + [np.ones((1, 1), bool)]:
            lesion = _build(rng, shape, allowed, px, mpp)
            if lesion is not None and lesion.kind == "itc":
                return lesion
        return None
    lo, hi = MACRO_RANGE if kind == "macro" else MICRO_RANGE
    hi = min(hi, cap_um)
    if hi < lo:
        return None
    diameter = rng.uniform(lo, hi)
    for _ in range(12):
        angle = axis + rng.normal(0, 0.5)
        lesion = _build(rng, _lesion_shape(rng, diameter, cell_um, angle), allowed, px, mpp)
        if lesion is not None and lesion.kind == kind and lesion.diameter_um <= cap_um:
            return lesion
        diameter = max(lo, diameter * 0.85)
    return None


def _build(rng: np.random.Generator, shape: np.ndarray, allowed: np.ndarray, px: int, mpp: float) -> PatchLesion | None:
    cells = _place(rng, shape, allowed)
    if cells is None:
        return None
    polygon = _outline(cells, px)
    return PatchLesion(cells.astype(np.int64), polygon, _diameter_um(polygon, mpp))


def _lesions(
    rng: np.random.Generator, kind: str, interior: np.ndarray, px: int, mpp: float, axis: float
) -> list[PatchLesion] | None:
    """1–3 lesions whose largest is of class ``kind``, on interior cells, apart from each other."""
    allowed = interior.copy()
    main = _lesion(rng, kind, allowed, px, mpp, axis, math.inf)
    if main is None:
        return None
    lesions = [main]
    for _ in range(int(rng.integers(0, 3))):
        _block(allowed, lesions[-1].cells)
        extra_kinds = {"macro": ("micro", "itc"), "micro": ("micro", "itc"), "itc": ("itc",)}[kind]
        extra = _lesion(rng, str(rng.choice(extra_kinds)), allowed, px, mpp, axis, main.diameter_um)
        if extra is not None:
            lesions.append(extra)
    return lesions


def _block(allowed: np.ndarray, cells: np.ndarray) -> None:
    mask = np.zeros_like(allowed)
    mask[cells[:, 0], cells[:, 1]] = True
    allowed &= ~ndimage.binary_dilation(mask, iterations=LESION_GAP + 1)


def _draw(rng: np.random.Generator, pool: np.ndarray, n: int) -> np.ndarray:
    """``n`` indices from ``pool``: without repeats while the pool lasts."""
    if n == 0:
        return np.zeros(0, np.int64)
    rounds = [rng.permutation(pool) for _ in range(-(-n // len(pool)))]
    return np.concatenate(rounds)[:n].astype(np.int64)


@dataclass(frozen=True)
class NormalTissue:
    """The normal patches a cohort draws from, in appearance bins (darkest last), and the Dirichlet
    concentration of each slide's mix of the bins (0: uniform draws from the whole pool)."""

    bins: tuple[np.ndarray, ...]
    composition: float = 0.0

    @property
    def pool(self) -> np.ndarray:
        return np.concatenate(self.bins)

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` patch indices for one slide in random order, and the slide's bin weights."""
        if self.composition <= 0 or len(self.bins) == 1:
            return _draw(rng, self.pool, n), np.full(len(self.bins), 1 / len(self.bins))
        weights = rng.dirichlet(np.full(len(self.bins), self.composition))
        counts = rng.multinomial(n, weights)
        picked = np.concatenate([_draw(rng, b, int(k)) for b, k in zip(self.bins, counts, strict=True)])
        return rng.permutation(picked).astype(np.int64), weights


def mean_optical_density(patches: np.ndarray) -> np.ndarray:
    """(n, h, w, 3) uint8 -> (n,) mean optical density -log10((I + 1) / 256) over pixels and channels."""
    table = -np.log10((np.arange(256, dtype=np.float64) + 1) / 256)
    return table[patches.reshape(len(patches), -1)].mean(axis=1)


def normal_tissue(
    source: PatchSource, normal: np.ndarray, composition: float, seed: int, chunk: int = 512
) -> NormalTissue:
    """Bin the ``normal`` patches of ``source`` by mean optical density (reads them once; at most
    ``MAX_APPEARANCE_PATCHES``, a seeded subset of a larger pool); no reading when ``composition`` is 0."""
    if composition < 0:
        raise ValueError(f"composition must be ≥ 0 (0 = no per-slide tissue mix), got {composition}")
    if composition == 0 or len(normal) < 2 * APPEARANCE_BINS:
        return NormalTissue((normal,), 0.0)
    if len(normal) > MAX_APPEARANCE_PATCHES:
        pick = np.random.default_rng([seed, 0xB1]).choice(len(normal), MAX_APPEARANCE_PATCHES, replace=False)
        normal = np.sort(normal[pick])
    density = np.concatenate(
        [mean_optical_density(source.read(normal[s : s + chunk])) for s in range(0, len(normal), chunk)]
    )
    order = normal[np.argsort(density, kind="stable")]
    return NormalTissue(tuple(np.array_split(order, APPEARANCE_BINS)), composition)


def macro_min_cells(px: int, mpp: float) -> int:
    """The long side (cells) a slide needs to hold a macro-metastasis inside its section."""
    return math.ceil(MACRO_RANGE[0] / (px * mpp) / 0.7) + 2 * MARGIN_CELLS


def plan_slide(
    seed: int,
    index: int,
    kind: str,
    normal: NormalTissue | np.ndarray,
    tumor_pool: np.ndarray,
    px: int,
    mpp: float,
    max_cells: int = 60,
    stain: float = 1.0,
) -> PatchSlideSpec:
    """A reproducible slide description: ``kind`` is macro | micro | itc | none (a normal slide); ``normal``
    the normal patches (binned, with the per-slide mix) or a plain index pool."""
    if not isinstance(normal, NormalTissue):
        normal = NormalTissue((np.asarray(normal),))
    rng = np.random.default_rng([seed, index, 0x7A])
    min_cells = max(8, round(max_cells * 0.72))
    for _ in range(40):
        low = min_cells
        if kind == "macro":
            low = min(max_cells, max(min_cells, round(max_cells * 0.8), macro_min_cells(px, mpp)))
        cols = int(rng.integers(low, max_cells + 1))
        rows = max(6, round(cols * rng.uniform(0.65, 0.85)))
        ovals, tissue, interior = _tissue(rng, rows, cols, px)
        lesions: list[PatchLesion] = []
        if kind != "none":
            axis = max(ovals, key=lambda o: o.a * o.b).angle  # lesions roughly along the main piece
            found = _lesions(rng, kind, interior, px, mpp, axis)
            if found is None:
                continue
            lesions = found
        break
    else:
        raise ValueError(
            f"slides of at most {max_cells} cells ({max_cells * px} px) cannot hold a {kind} lesion: "
            "allow larger slides"
        )
    tumor_grid = np.zeros_like(tissue)
    for lesion in lesions:
        tumor_grid[lesion.cells[:, 0], lesion.cells[:, 1]] = True
    cells = np.argwhere(tissue)
    tumor = tumor_grid[cells[:, 0], cells[:, 1]]
    patches = np.zeros(len(cells), np.int64)
    patches[~tumor], mix = normal.draw(rng, int((~tumor).sum()))
    if tumor.any():
        patches[tumor] = _draw(rng, tumor_pool, int(tumor.sum()))
    transforms = rng.integers(0, 8, len(cells)).astype(np.int64)
    grey = rng.uniform(226, 244)
    background = tuple(float(grey + t) for t in rng.uniform(-2.5, 2.5, 3))
    alpha = 1 + stain * np.array([rng.uniform(-0.15, 0.15), rng.uniform(-0.15, 0.15), rng.uniform(-0.05, 0.05)])
    beta = stain * rng.uniform(-0.025, 0.025, 3)
    return PatchSlideSpec(
        seed=int(rng.integers(1 << 30)),
        width=cols * px,
        height=rows * px,
        mpp=mpp,
        px=px,
        ovals=ovals,
        cells=cells.astype(np.int64),
        interior=interior[cells[:, 0], cells[:, 1]],
        tumor=tumor,
        patches=patches,
        transforms=transforms,
        background=background,  # type: ignore[arg-type]
        stain_alpha=tuple(float(a) for a in alpha),  # type: ignore[arg-type]
        stain_beta=tuple(float(b) for b in beta),  # type: ignore[arg-type]
        lesions=lesions,
        tissue_mix=tuple(round(float(w), 4) for w in mix),
    )


def _pools(source: PatchSource, need_tumor: bool) -> tuple[np.ndarray, np.ndarray]:
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


def _balanced(rng: np.random.Generator, n: int, classes: Sequence[str]) -> list[str]:
    """``n`` classes, each block of len(classes) a fresh permutation (counts differ by at most one)."""
    out: list[str] = []
    while len(out) < n:
        out.extend(classes[i] for i in rng.permutation(len(classes)))
    return out[:n]


def plan_patch_cohort(
    out: str | os.PathLike[str],
    source: PatchSource,
    slides: int,
    seed: int = 0,
    flavour: str = "mixed",
    test_fraction: float | None = None,
    max_cells: int = 60,
    stain: float = 1.0,
    classes: Sequence[str] = CLASSES,
    composition: float = DEFAULT_COMPOSITION,
) -> list[PatchCohortSlide]:
    """Plan a real-tissue cohort in CAMELYON16 layout (as ``cohort.plan_cohort``): normal and tumour
    alternate, tumour slides of each split get ``classes`` in a balanced seeded mix. ``max_cells`` bounds
    the slide's long side in cells (slides are 72 % of it to all of it; macro slides at least 80 %);
    ``stain`` scales the per-slide stain shift and ``composition`` is the Dirichlet concentration of each
    slide's mix of normal-tissue appearance (0: uniform draws; reads the normal patches once otherwise)."""
    if flavour not in (*FLAVOURS, "mixed"):
        raise ValueError(f"flavour must be mixed, svs or tiff, got {flavour!r}")
    if not classes or any(c not in CLASSES for c in classes):
        raise ValueError(f"classes must be a non-empty subset of {CLASSES}, got {tuple(classes)}")
    if max_cells < 8:
        px = source.geometry.px
        raise ValueError(f"slides need at least 8 patches a side ({8 * px} px), got {max_cells} ({max_cells * px} px)")
    layout = slide_layout(out, slides, test_fraction)
    normal, tumor = _pools(source, any(t for *_, t in layout))
    px, mpp = source.geometry.px, source.geometry.mpp
    if "macro" in classes and any(t for *_, t in layout) and max_cells < macro_min_cells(px, mpp):
        need = macro_min_cells(px, mpp)
        raise ValueError(
            f"slides of at most {max_cells} patches ({max_cells * px} px) a side cannot hold a macro-metastasis "
            f"(> 2 mm): allow at least {need} patches ({need * px} px, --size)"
        )
    if stain < 0:
        raise ValueError(f"stain must be ≥ 0 (0 = no per-slide stain shift), got {stain}")
    tissue = normal_tissue(source, normal, composition, seed)
    rng = np.random.default_rng([seed, 0xC0])
    kinds: dict[int, str] = {}
    for split in ("training", "testing"):
        tumour_slides = [i for i, (s, *_, t) in enumerate(layout) if s == split and t]
        kinds.update(zip(tumour_slides, _balanced(rng, len(tumour_slides), classes), strict=True))
    plan = []
    for index, (split, name, path, _) in enumerate(layout):
        kind = flavour if flavour != "mixed" else FLAVOURS[index % 2 if index < 2 else int(rng.integers(2))]
        spec = plan_slide(seed, index, kinds.get(index, "none"), tissue, tumor, px, mpp, max_cells, stain)
        plan.append(PatchCohortSlide(split, name, path, spec, kind))
    return plan


# ---- pixels -------------------------------------------------------------------------------------


def apply_dihedral(patch: np.ndarray, k: int) -> np.ndarray:
    """Dihedral transform ``k`` (0–7) of an (h, w, c) patch: rotation by 90°·(k mod 4) (counter-clockwise),
    then a left-right flip when k ≥ 4 (as ``wsi_mamba.data.augment.dihedral``)."""
    out = np.rot90(patch, k % 4, axes=(0, 1))
    return out[:, ::-1] if k >= 4 else out


def stain_shift(rgb: np.ndarray, alpha: Sequence[float], beta: Sequence[float]) -> np.ndarray:
    """Scale and shift uint8 RGB in HED space (Ruifrok & Johnston), as ``augment.hed_jitter`` with fixed
    parameters: one stain for a whole slide (a centre effect)."""
    od = -np.log(rgb.astype(np.float32) * np.float32(254 / 255 / 255) + np.float32(1 / 255))
    hed = od @ HED_FROM_RGB
    hed = hed * np.asarray(alpha, np.float32) + np.asarray(beta, np.float32)
    out = (np.exp(-(hed @ RGB_FROM_HED)) - np.float32(1 / 255)) * np.float32(255 * 255 / 254)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


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
        batch = np.stack([apply_dihedral(p, int(k)) for p, k in zip(batch, spec.transforms[sel], strict=True)])
        if stained:
            batch = stain_shift(batch, spec.stain_alpha, spec.stain_beta)
        for (r, c), inside, patch in zip(spec.cells[sel], spec.interior[sel], batch, strict=True):
            y, x = int(r) * px, int(c) * px
            if inside:
                canvas[y : y + px, x : x + px] = patch
            else:
                a = spec.alpha(x, y, px, px)[..., None]
                glass = canvas[y : y + px, x : x + px].astype(np.float32)
                canvas[y : y + px, x : x + px] = (a * patch + (1 - a) * glass + 0.5).astype(np.uint8)
    return canvas


class _Pyramid:
    """A renderer for ``write_slide`` over in-memory levels (block means of level 0)."""

    def __init__(self, level0: np.ndarray, factor: int, fill: Sequence[float]) -> None:
        self.levels = {1: level0}
        self.fill = np.asarray(np.round(fill), np.uint8)
        ds, current = 1, level0
        while max(current.shape[:2]) > 256:
            h, w = current.shape[0] // factor, current.shape[1] // factor
            if not h or not w:
                break
            block = current[: h * factor, : w * factor].reshape(h, factor, w, factor, 3)
            current = (block.sum(axis=(1, 3), dtype=np.uint32) + factor * factor // 2) // (factor * factor)
            current = current.astype(np.uint8)
            ds *= factor
            self.levels[ds] = current

    def __call__(self, spec: object, x0: float, y0: float, width: int, height: int, ds: float) -> np.ndarray:
        key = max(d for d in self.levels if d <= ds + 1e-9)
        level = self.levels[key]
        if key == ds:
            out = np.empty((height, width, 3), np.uint8)
            out[:] = self.fill
            x, y = int(x0) // key, int(y0) // key
            crop = level[y : y + height, x : x + width]
            out[: crop.shape[0], : crop.shape[1]] = crop
            return out
        x, y = int(x0 / key), int(y0 / key)
        w, h = max(1, round(width * ds / key)), max(1, round(height * ds / key))
        crop = level[y : y + h, x : x + w]
        image = Image.fromarray(np.ascontiguousarray(crop)).resize((width, height), Image.Resampling.BOX)
        return np.asarray(image)


# ---- writing ------------------------------------------------------------------------------------


def lesion_annotations(spec: PatchSlideSpec) -> Annotations:
    """The lesions of a real-tissue slide as ASAP-style annotations (group "Tumor")."""
    return tumour_annotations(lesion.polygon for lesion in spec.lesions)


def _relative_id(patch_id: str, root: Path | None) -> str:
    if root is not None:
        try:
            return Path(patch_id).resolve().relative_to(root).as_posix()
        except ValueError:
            pass
    return patch_id


def _write_manifest(out: Path, source: PatchSource, plan: list[PatchCohortSlide], root: Path | None) -> None:
    """``patches_used.txt``: every patch the cohort shows, as id (relative to the source folder), label and
    the SHA-1 of its pixels (so cohorts from different folders can be checked for shared patches)."""
    used = np.unique(np.concatenate([item.spec.patches for item in plan]))
    lines = [f"# patches of {root or source.description} used by this cohort: id, label, SHA-1 of the RGB pixels"]
    rows = []
    for start in range(0, len(used), 512):
        block = used[start : start + 512]
        for index, pixels in zip(block, source.read(block), strict=True):
            digest = hashlib.sha1(np.ascontiguousarray(pixels).tobytes()).hexdigest()
            rows.append(f"{_relative_id(source.patch_id(int(index)), root)}\t{int(source.labels[index])}\t{digest}")
    write_text_atomic(out / MANIFEST, "\n".join(lines + sorted(rows)) + "\n")


def _write_csvs(out: Path, plan: list[PatchCohortSlide]) -> None:
    """labels.csv / reference.csv: the procedural cohort's columns plus lesion_class and tile counts."""
    columns = (*LABEL_COLUMNS, "lesion_class", "tissue_tiles", "tumor_tiles")
    rows = []
    for item in plan:
        s = item.spec
        extra = [s.metastasis, len(s.cells), int(s.tumor.sum())]
        rows.append((item.split, [*label_row(item.name, s, item.flavour), *extra]))
    write_label_csvs(out, columns, rows)


def patch_cohort_parameters(
    source: PatchSource,
    slides: int = 6,
    seed: int = 0,
    flavour: str = "mixed",
    test_fraction: float | None = None,
    max_cells: int = 60,
    stain: float = 1.0,
    compression: str = "jpeg",
    classes: Sequence[str] = CLASSES,
    composition: float = DEFAULT_COMPOSITION,
) -> dict:
    """What decides a real-tissue cohort's files (the arguments of :func:`write_patch_cohort`, the patches as
    their resolved folder), as its folder records them."""
    folder = Path(source.description)
    patches = str(folder.resolve()) if folder.is_dir() else source.description
    return {
        "generator": "from-patches",
        "patches": patches,
        "slides": slides,
        "seed": seed,
        "flavour": flavour,
        "test_fraction": test_fraction,
        "max_cells": max_cells,
        "stain": stain,
        "compression": compression,
        "classes": list(classes),
        "composition": composition,
    }


def write_patch_cohort(
    out: str | os.PathLike[str],
    patches: str | os.PathLike[str] | PatchSource,
    slides: int = 6,
    seed: int = 0,
    flavour: str = "mixed",
    test_fraction: float | None = None,
    max_cells: int = 60,
    stain: float = 1.0,
    compression: str = "jpeg",
    classes: Sequence[str] = CLASSES,
    composition: float = DEFAULT_COMPOSITION,
    tick: Callable[[], None] | None = None,
    plan: list[PatchCohortSlide] | None = None,
    overwrite: bool = False,
) -> list[PatchCohortSlide]:
    """Write a real-tissue cohort under ``out`` from the labelled patches ``patches`` (a folder or anything
    ``open_patches`` takes): slides (CAMELYON16 layout), lesion XML, labels.csv / reference.csv and
    ``patches_used.txt``. Resumable: slides already there are kept (same seed, same plan, same pixels).
    ``stain=0`` switches the per-slide stain shift off, ``composition=0`` the per-slide tissue mix;
    ``compression="lossless"`` writes deflate tiles;
    ``classes`` are the tumour slides' lesion classes to mix; ``tick`` is called once per slide; ``plan``
    (from :func:`plan_patch_cohort` with the same arguments) skips planning again. A cohort of other
    parameters (:func:`patch_cohort_parameters`, recorded in ``synth.json``) already in ``out`` is refused
    (``ValueError``, before planning), or with ``overwrite`` replaced whole."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {tuple(COMPRESSIONS)}, got {compression!r}")
    if isinstance(patches, PatchSource):
        source, root = patches, Path(patches.description)
    else:
        source, root = open_patches(Path(patches)), Path(patches)
    root = root.resolve() if root.is_dir() else None
    out = Path(out)
    parameters = patch_cohort_parameters(
        source, slides, seed, flavour, test_fraction, max_cells, stain, compression, classes, composition
    )
    check_cohort_output(out, parameters, overwrite)  # a refusal comes before the patches are read
    if plan is None:
        plan = plan_patch_cohort(
            out, source, slides, seed, flavour, test_fraction, max_cells, stain, classes, composition
        )
    claim_cohort_output(out, parameters, overwrite)
    for item in plan:
        item.path.parent.mkdir(parents=True, exist_ok=True)
        if not item.path.exists():
            pixels = render_patch_slide(item.spec, source)
            pyramid = _Pyramid(pixels, 4 if item.flavour == "svs" else 2, item.spec.background)
            write_slide(item.spec, item.path, item.flavour, renderer=pyramid, compression=compression)
            del pixels, pyramid
        write_lesion_xml(item.path, lesion_annotations(item.spec))
        if tick is not None:
            tick()
    out.mkdir(parents=True, exist_ok=True)
    _write_csvs(out, plan)
    _write_manifest(out, source, plan, root)
    return plan
