"""Procedural H&E-like pixels: a seeded function of level-0 position (tissue, stroma, nuclei, fat,
metastases), evaluated tile by tile with numpy; no file I/O (``writer.py`` writes the files)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MPP = 0.243

# ---- hashing and noise (vectorised, deterministic) ---------------------------------------------


def _hash(ix: np.ndarray, iy: np.ndarray, salt: int) -> np.ndarray:
    """uint32 hash of integer lattice coordinates."""
    h = (ix.astype(np.int64).astype(np.uint32) * np.uint32(0x8DA6B343)) ^ (
        iy.astype(np.int64).astype(np.uint32) * np.uint32(0xD8163841)
    )
    h ^= np.uint32((salt * 0x9E3779B1) & 0xFFFFFFFF)
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x2C1B3C6D)
    h ^= h >> np.uint32(12)
    h *= np.uint32(0x297A2D39)
    h ^= h >> np.uint32(15)
    return h


def _uniform(ix: np.ndarray, iy: np.ndarray, salt: int) -> np.ndarray:
    return _hash(ix, iy, salt).astype(np.float32) * np.float32(1.0 / 4294967296.0)


class _Lattice:
    """Integer lattice cells under a tile: per-cell random values are hashed once on the small lattice
    and gathered per pixel (x varies along columns only, y along rows only)."""

    def __init__(self, gx: np.ndarray, gy: np.ndarray, pad: int = 1) -> None:
        ix, iy = np.floor(gx).astype(np.int64), np.floor(gy).astype(np.int64)
        self.fx, self.fy = (gx - ix).astype(np.float32), (gy - iy).astype(np.float32)
        self.x0, self.y0 = int(ix.min()) - pad, int(iy.min()) - pad
        self.cx = np.arange(self.x0, int(ix.max()) + pad + 1)[None, :]
        self.cy = np.arange(self.y0, int(iy.max()) + pad + 1)[:, None]
        self.jx, self.jy = (ix - self.x0).ravel(), (iy - self.y0).ravel()

    def table(self, salt: int) -> np.ndarray:
        return _uniform(self.cx, self.cy, salt)

    def at(self, table: np.ndarray, dx: int = 0, dy: int = 0) -> np.ndarray:
        return table.take(self.jy + dy, axis=0).take(self.jx + dx, axis=1)


def _value_noise(x: np.ndarray, y: np.ndarray, cell: float, salt: int) -> np.ndarray:
    """Smooth value noise in [0, 1); x (1, W) and y (H, 1) broadcast to (H, W)."""
    lat = _Lattice(x / cell, y / cell)
    fx, fy = lat.fx * lat.fx * (3 - 2 * lat.fx), lat.fy * lat.fy * (3 - 2 * lat.fy)
    t = lat.table(salt)
    v00, v10, v01, v11 = lat.at(t), lat.at(t, 1), lat.at(t, 0, 1), lat.at(t, 1, 1)
    top = v00 + (v10 - v00) * fx
    bottom = v01 + (v11 - v01) * fx
    return top + (bottom - top) * fy


def _fbm(x: np.ndarray, y: np.ndarray, cell: float, salt: int, octaves: int = 4) -> np.ndarray:
    total, norm, amp = 0.0, 0.0, 1.0
    for octave in range(octaves):
        total = total + amp * _value_noise(x, y, cell / 2**octave, salt + 101 * octave)
        norm += amp
        amp *= 0.5
    return total / norm


def _nuclei(
    x: np.ndarray,
    y: np.ndarray,
    cell: float,
    radius: tuple[float, float],
    density: float,
    irregular: float,
    salt: int,
    pixel: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Worley-style blobs, one per cell of a jittered lattice of ``cell`` µm (radius in cells): (coverage
    in [0, 1], distance to the nearest centre in radii). ``x`` (1, W) and ``y`` (H, 1) are pixel centres
    in µm, ``pixel`` µm wide. Below 5 px per cell, blobs are drawn as their expected area fraction (no
    aliasing speckle at low pyramid levels); otherwise each blob is drawn in its bounding box."""
    shape = (y.shape[0], x.shape[1])
    if cell / pixel < 5:
        mean_r = (radius[0] + radius[1]) / 2
        coverage = min(1.0, density * np.pi * mean_r * mean_r)
        return np.full(shape, coverage, np.float32), np.full(shape, 0.8, np.float32)
    reach = radius[1] * (1 + irregular) * cell  # µm
    ix = np.arange(int(np.floor((x[0, 0] - reach) / cell)) - 1, int(np.floor((x[0, -1] + reach) / cell)) + 2)
    iy = np.arange(int(np.floor((y[0, 0] - reach) / cell)) - 1, int(np.floor((y[-1, 0] + reach) / cell)) + 2)
    cx, cy = ix[None, :], iy[:, None]
    present = _uniform(cx, cy, salt + 7) < density
    centre_x = (cx + 0.15 + 0.7 * _uniform(cx, cy, salt + 1)) * cell
    centre_y = (cy + 0.15 + 0.7 * _uniform(cx, cy, salt + 2)) * cell
    r = (radius[0] + (radius[1] - radius[0]) * _uniform(cx, cy, salt)) * cell
    phase = _uniform(cx, cy, salt + 3) * np.float32(2 * np.pi)
    best = np.full(shape, 81.0, np.float32)
    x0, y0, xs, ys = float(x[0, 0]), float(y[0, 0]), x[0], y[:, 0]
    for i, j in zip(*np.nonzero(present), strict=True):
        px, py = float(centre_x[i, j]), float(centre_y[i, j])
        c0 = max(0, int((px - reach - x0) / pixel))
        c1 = min(shape[1], int((px + reach - x0) / pixel) + 2)
        r0 = max(0, int((py - reach - y0) / pixel))
        r1 = min(shape[0], int((py + reach - y0) / pixel) + 2)
        if c1 <= c0 or r1 <= r0:
            continue
        ex = xs[None, c0:c1] - px
        ey = ys[r0:r1, None] - py
        rr = r[i, j]
        if irregular:
            rr = rr * (1 + irregular * np.sin(3 * np.arctan2(ey, ex) + phase[i, j]))
        d2 = (ex * ex + ey * ey) / (rr * rr)
        np.minimum(best[r0:r1, c0:c1], d2, out=best[r0:r1, c0:c1])
    best = np.sqrt(best)
    return (best < 1.0).astype(np.float32), best


# ---- slide description -------------------------------------------------------------------------


@dataclass
class Lesion:
    """A metastasis: centre (level-0 px), mean radius (px) and radial harmonics of its outline."""

    cx: float
    cy: float
    radius: float
    amplitudes: tuple[float, ...]
    phases: tuple[float, ...]

    def radius_at(self, angle: np.ndarray) -> np.ndarray:
        r = 1.0
        for k, (a, p) in enumerate(zip(self.amplitudes, self.phases, strict=True), start=2):
            r = r + a * np.sin(k * angle + p)
        return self.radius * r

    def polygon(self, n: int = 64) -> np.ndarray:
        angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
        r = self.radius_at(angles)
        return np.stack([self.cx + r * np.cos(angles), self.cy + r * np.sin(angles)], axis=1)

    @property
    def diameter_um(self) -> float:
        return 2 * self.radius * MPP


@dataclass
class SlideSpec:
    """Everything that determines a synthetic slide's pixels."""

    seed: int
    width: int
    height: int
    mpp: float = MPP
    lesions: list[Lesion] = field(default_factory=list)
    blobs: list[tuple[float, float, float, float]] = field(default_factory=list)  # cx, cy, rx, ry (0..1)
    eosin: tuple[float, float, float] = (0.93, 0.62, 0.76)
    hematoxylin: tuple[float, float, float] = (0.36, 0.24, 0.55)

    @property
    def label(self) -> str:
        return "Tumor" if self.lesions else "Normal"

    @property
    def metastasis(self) -> str:
        """'macro' (≥ 2 mm), 'micro' (0.2–2 mm), 'itc' (< 0.2 mm) by the largest lesion, or 'none'."""
        if not self.lesions:
            return "none"
        largest = max(lesion.diameter_um for lesion in self.lesions)
        return "macro" if largest >= 2000 else ("micro" if largest >= 200 else "itc")


def _tissue_field(spec: SlideSpec, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """> 0 inside tissue; the outline scales with the slide so small slides still look like slides."""
    u, v = x / spec.width, y / spec.height
    envelope = np.zeros(np.broadcast(u, v).shape, np.float32)
    for cx, cy, rx, ry in spec.blobs:
        envelope = np.maximum(envelope, np.exp(-(((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2)))
    return envelope + 0.5 * (_fbm(u, v, 0.25, spec.seed + 11, 3) - 0.5) - 0.45


def make_spec(seed: int, index: int, width: int, height: int, tumor: bool) -> SlideSpec:
    """A reproducible slide description; tumor slides get a CAMELYON16-like lesion size mix."""
    rng = np.random.default_rng([seed, index])
    spec = SlideSpec(seed=int(rng.integers(1 << 30)), width=width, height=height)
    spec.blobs = [
        (rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.18, 0.32), rng.uniform(0.18, 0.32))
        for _ in range(int(rng.integers(1, 4)))
    ]
    # Stain varies from slide to slide (centre, protocol, scanner) more than tumour moves the mean colour.
    tone = rng.uniform(0.92, 1.05)
    spec.eosin = tuple(float(np.clip(c * tone + rng.normal(0, 0.05), 0, 1)) for c in spec.eosin)
    spec.hematoxylin = tuple(float(np.clip(c * tone + rng.normal(0, 0.06), 0, 1)) for c in spec.hematoxylin)
    if tumor:
        short_um = min(width, height) * MPP
        micro_only = rng.random() < 0.5
        diameters = [rng.uniform(200, 1800) for _ in range(int(rng.integers(1, 4)))]
        if not micro_only:
            diameters[0] = rng.uniform(2000, 6000)
        for diameter in diameters:
            cap = (0.25 if diameter < 2000 else 0.45) * short_um
            if diameter > cap:  # small slides: keep lesions inside, still of varied size
                diameter = cap * rng.uniform(0.5, 1.0)
            radius_px = max(diameter, 40.0) / 2 / MPP
            cx, cy = _tissue_point(spec, rng, radius_px)
            spec.lesions.append(
                Lesion(
                    cx,
                    cy,
                    radius_px,
                    tuple(float(a) for a in rng.uniform(0.02, 0.1, 4)),
                    tuple(float(p) for p in rng.uniform(0, 2 * np.pi, 4)),
                )
            )
    return spec


def _tissue_point(spec: SlideSpec, rng: np.random.Generator, margin: float) -> tuple[float, float]:
    """A random level-0 point inside tissue (falls back to the first blob's centre)."""
    for _ in range(200):
        x = rng.uniform(margin, spec.width - margin)
        y = rng.uniform(margin, spec.height - margin)
        if _tissue_field(spec, np.array([[x]]), np.array([[y]]))[0, 0] > 0.1:
            return float(x), float(y)
    cx, cy = spec.blobs[0][:2]
    return float(cx * spec.width), float(cy * spec.height)


# ---- rendering ---------------------------------------------------------------------------------


def render(
    spec: SlideSpec, x0: float, y0: float, width: int, height: int, downsample: float = 1.0
) -> np.ndarray:
    """(height, width, 3) uint8 pixels whose top-left is level-0 (x0, y0), one pixel per ``downsample``."""
    x = (x0 + (np.arange(width, dtype=np.float32) + 0.5) * downsample)[None, :]
    y = (y0 + (np.arange(height, dtype=np.float32) + 0.5) * downsample)[:, None]
    xu, yu = x * spec.mpp, y * spec.mpp  # microns
    s = spec.seed
    tissue = _tissue_field(spec, x, y) > 0
    tumor = np.zeros(tissue.shape, bool)
    for lesion in spec.lesions:
        if (
            abs(lesion.cx - x0 - width * downsample / 2) > lesion.radius * 1.5 + width * downsample
            or abs(lesion.cy - y0 - height * downsample / 2) > lesion.radius * 1.5 + height * downsample
        ):
            continue
        dx, dy = x - lesion.cx, y - lesion.cy
        tumor |= np.hypot(dx, dy) < lesion.radius_at(np.arctan2(dy, dx))
    tissue |= tumor
    grain = _uniform(np.floor(x), np.floor(y), s + 71)[..., None] - 0.5
    if not tissue.any():  # background only
        return (np.clip(0.955 + 0.03 * grain, 0, 1) * 255 + 0.5).astype(np.uint8).repeat(3, axis=2)

    pixel = spec.mpp * downsample
    eosin = np.asarray(spec.eosin, np.float32)
    hema = np.asarray(spec.hematoxylin, np.float32)
    img = eosin * (0.92 + 0.14 * _value_noise(xu * 0.2, yu, 3.0, s + 41))[..., None]  # fibrous stroma
    nuc, nd = _nuclei(xu, yu, 9.0, (0.18, 0.28), 0.55, 0.0, s + 51, pixel)
    fat_zone = (_fbm(xu, yu, 400.0, s + 21, 3) > 0.6) & ~tumor
    if fat_zone.any():  # adipocytes: white cells with thin pink membranes, no nuclei
        _, fat_d = _nuclei(xu, yu, 45.0, (0.6, 0.64), 1.0, 0.0, s + 31, pixel)
        fat = fat_zone & (fat_d < 0.9)
        img[fat] = 0.965
        nuc = nuc * ~fat
    img = img + (hema * (0.8 + 0.25 * nd)[..., None] - img) * nuc[..., None]
    if tumor.any():  # metastasis: large, pleomorphic, vesicular nuclei (pale centre, dark rim), colour-matched
        tnuc, td = _nuclei(xu, yu, 12.0, (0.26, 0.4), 0.6, 0.2, s + 61, pixel)
        stroma = eosin * (0.94 + 0.1 * _value_noise(xu, yu * 0.5, 4.0, s + 43))[..., None]
        chromatin = 0.15 + 0.75 * td * td  # fraction of hematoxylin: rim-heavy, so the mean colour barely moves
        tumor_img = stroma + (hema - stroma) * (tnuc * chromatin)[..., None]
        img = np.where(tumor[..., None], tumor_img, img)
    img = np.where(tissue[..., None], img, np.float32(0.955))
    img = img + 0.03 * grain
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
