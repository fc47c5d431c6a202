"""The normal tissue a real-tissue cohort draws from: normal patches in appearance bins by mean optical
density, and each slide's own Dirichlet mix of the bins (real nodes differ: fatty, sparse, densely cellular)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.patches import PatchSource

APPEARANCE_BINS = 8  # quantile bins of the normal patches' mean optical density
DEFAULT_COMPOSITION = 1.0  # Dirichlet concentration of the per-slide mix of the bins (uniform on the simplex)
MAX_APPEARANCE_PATCHES = 40_000  # normal patches read to bin (a seeded subset of larger pools)


def draw_without_repeats(rng: np.random.Generator, pool: np.ndarray, n: int) -> np.ndarray:
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
            return draw_without_repeats(rng, self.pool, n), np.full(len(self.bins), 1 / len(self.bins))
        weights = rng.dirichlet(np.full(len(self.bins), self.composition))
        counts = rng.multinomial(n, weights)
        picked = np.concatenate(
            [draw_without_repeats(rng, b, int(k)) for b, k in zip(self.bins, counts, strict=True)]
        )
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
