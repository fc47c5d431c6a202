"""What a feature mode gives back for a tile grid: features and colour statistics per kept tile, and the tiles
that could not be decoded."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..evaluation.colour import COLOUR_STATS
from ..slide.errors import TileDecodeError


@dataclass
class GridFeatures:
    """``features`` (n, dim) float32 and ``colour`` (n, K) float32 in grid order (rows of undecodable tiles stay
    zero), ``errors``: grid index → why that tile could not be decoded, and ``views`` (n,) uint8: the dihedral
    views each tile's features average (tile mode; 0: not recorded, as region mode leaves it)."""

    features: np.ndarray
    colour: np.ndarray
    errors: dict[int, TileDecodeError] = field(default_factory=dict)
    views: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))

    @classmethod
    def zeros(cls, tiles: int, dim: int) -> GridFeatures:
        """All-zero rows for ``tiles`` tiles of ``dim`` features, no errors: filled in as batches finish."""
        features, colour = np.zeros((tiles, dim), np.float32), np.zeros((tiles, len(COLOUR_STATS)), np.float32)
        return cls(features, colour, views=np.zeros(tiles, np.uint8))
