"""A patch source whose patches come stain-normalised (``train-encoder --patches … --stain-norm``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .patches import PatchSource
from .stain_norm import StainNorm, normalise_each


class StainNormalisedPatches(PatchSource):
    """``source`` with each patch normalised on its own stain by ``stain`` as it is read (a patch whose stain
    cannot be estimated is read as it is): patches carry no slide to fit once on."""

    def __init__(self, source: PatchSource, stain: StainNorm) -> None:
        self.source, self.stain = source, stain
        self.geometry, self.labels = source.geometry, source.labels
        self.description = f"{source.description}, {stain.describe()}"

    def location(self, index: int) -> tuple[str, int | None]:
        return self.source.location(index)

    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        return normalise_each(self.source.read(indices), self.stain)[0]
