"""Geometry of the real-tissue slides, in level-0 pixels and grid cells: the section's irregular ovals, its
soft-edged opacity, which cells it covers, a lesion's cell mask and placement, and cell outlines."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

SOFT_PX = 3.0  # width of the tissue outline's soft edge (level-0 px)
MARGIN_CELLS = 2  # glass between the section and the slide's border
BAND_ROWS = 16  # cell rows sampled at a time by covered_cells
MULTI_SECTION_CELLS = 150  # grids at least this long (cells) hold several sections, as real slides do


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


def tissue_alpha(ovals: Sequence[Oval], x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """Tissue opacity in [0, 1] of level-0 pixels [y0, y0 + h) × [x0, x0 + w), (h, w) float32."""
    x = (x0 + np.arange(w, dtype=np.float32) + 0.5)[None, :]
    y = (y0 + np.arange(h, dtype=np.float32) + 0.5)[:, None]
    depth = np.max([oval.depth(x, y) for oval in ovals], axis=0)
    return np.clip(depth / SOFT_PX + 0.5, 0, 1).astype(np.float32)


def fit_oval(rng: np.random.Generator, box: tuple[float, float, float, float], px: int) -> Oval:
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


def section_ovals(rng: np.random.Generator, rows: int, cols: int, px: int) -> list[Oval]:
    """The section on a rows × cols grid: one oval, or (35 %, wide grids) two side by side; grids of at least
    :data:`MULTI_SECTION_CELLS` columns get :func:`several_sections`."""
    if cols >= MULTI_SECTION_CELLS:
        return several_sections(rng, rows, cols, px)
    w, h, m = cols * px, rows * px, MARGIN_CELLS * px
    if rng.random() < 0.35 and cols >= 12:  # two pieces side by side, the bigger one left or right
        share = rng.uniform(0.55, 0.7) if rng.random() < 0.5 else rng.uniform(0.3, 0.45)
        split = m + (w - 2 * m) * share
        return [fit_oval(rng, (m, m, split, h - m), px), fit_oval(rng, (split, m, w - m, h - m), px)]
    return [fit_oval(rng, (m, m, w - m, h - m), px)]


def several_sections(rng: np.random.Generator, rows: int, cols: int, px: int) -> list[Oval]:
    """Several sections on a large rows × cols grid, as a real slide carries (2–4 lymph-node sections or
    pieces of one, side by side along the long axis, of unequal widths; a third of them split across)."""
    w, h, m = cols * px, rows * px, MARGIN_CELLS * px
    count = int(np.clip(round(cols / rows * rng.uniform(0.9, 1.5)), 2, 4))
    shares = rng.uniform(0.7, 1.3, count)
    edges = m + np.concatenate([[0.0], np.cumsum(shares / shares.sum())]) * (w - 2 * m)
    ovals = []
    for left, right in itertools.pairwise(edges):
        if rng.random() < 0.33 and rows >= 24:  # two pieces one above the other
            split = m + (h - 2 * m) * rng.uniform(0.4, 0.6)
            ovals += [fit_oval(rng, (left, m, right, split), px), fit_oval(rng, (left, split, right, h - m), px)]
        else:
            ovals.append(fit_oval(rng, (left, m, right, h - m), px))
    return ovals


def covered_cells(ovals: Sequence[Oval], rows: int, cols: int, px: int) -> tuple[np.ndarray, np.ndarray]:
    """Per cell of a rows × cols grid: tissue (any coverage) and interior (fully covered) masks."""
    # 12 × 12 samples per cell classify cells; cells near the outline get an exact per-pixel test.
    # Bands of BAND_ROWS cell rows keep the samples small on slides of 10^5 cells.
    k = 12
    step = px / k
    xs = ((np.arange(cols * k, dtype=np.float32) + 0.5) * step)[None, :]
    lo, hi = np.empty((rows, cols), np.float32), np.empty((rows, cols), np.float32)
    for top in range(0, rows, BAND_ROWS):
        n = min(BAND_ROWS, rows - top)
        ys = ((np.arange(top * k, (top + n) * k, dtype=np.float32) + 0.5) * step)[:, None]
        depth = ovals[0].depth(xs, ys)
        for oval in ovals[1:]:
            depth = np.maximum(depth, oval.depth(xs, ys))
        blocks = depth.reshape(n, k, cols, k)
        lo[top : top + n], hi[top : top + n] = blocks.min(axis=(1, 3)), blocks.max(axis=(1, 3))
    safe = SOFT_PX / 2 + 2 * step  # the depth changes by less than 2 px per px
    interior, tissue = lo >= safe, hi > -safe
    for r, c in zip(*np.nonzero(tissue & ~interior), strict=True):
        alpha = tissue_alpha(ovals, int(c) * px, int(r) * px, px, px)
        tissue[r, c] = bool(alpha.max() > 0)
        interior[r, c] = bool(alpha.min() >= 1)
    return tissue, interior


def clean_cells(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component with its holes filled: cells whose outline is one simple polygon
    (two cells of it touching only at a corner would enclose a hole on one side, which is filled)."""
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, labels, range(1, n + 1))
        mask = labels == 1 + int(np.argmax(sizes))
    return ndimage.binary_fill_holes(mask)


def _boundary_loop(cells: np.ndarray) -> np.ndarray:
    """The boundary of a simple set of cells (row, col) as a closed vertex loop (x, y in cell units),
    clockwise on screen."""
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
    return np.array(loop, np.float64)


def outline(cells: np.ndarray, px: int) -> np.ndarray:
    """Closed outline (level-0 x, y) of a simple set of cells (row, col), clockwise on screen, with convex
    corners cut by a quarter cell."""
    pts = _boundary_loop(cells)
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


def diameter_um(polygon: np.ndarray, mpp: float) -> float:
    """Longest distance between two vertices of ``polygon`` (level-0 px), in µm."""
    d = polygon[:, None, :] - polygon[None, :, :]
    return float(np.sqrt((d**2).sum(-1)).max() * mpp)


def irregular_ellipse(rng: np.random.Generator, length: float, angle: float) -> np.ndarray:
    """A cell mask (odd-sized square, centred) of an irregular ellipse ``length`` cells long at ``angle``."""
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
    return clean_cells(mask)


def place(rng: np.random.Generator, shape: np.ndarray, allowed: np.ndarray) -> np.ndarray | None:
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


def keep_apart(allowed: np.ndarray, cells: np.ndarray, gap: int) -> None:
    """Remove from ``allowed`` (in place) ``cells`` and every cell within ``gap`` cells of them."""
    mask = np.zeros_like(allowed)
    mask[cells[:, 0], cells[:, 1]] = True
    allowed &= ~ndimage.binary_dilation(mask, iterations=gap + 1)
