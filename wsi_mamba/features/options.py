"""How a slide's tiles are read for encoding, apart from the feature mode (plain data, no torch: the CLI builds
it while parsing)."""

from __future__ import annotations

from dataclasses import dataclass

from ..ranges import FRACTION, MPP, POSITIVE_INT, check_fields


@dataclass(frozen=True)
class ReadOptions:
    """Which tiles are kept and how they are read and batched (the geometry itself, tile_px and mpp, comes from
    the encoder; how tiles become features is the feature mode, :mod:`wsi_mamba.features.modes`)."""

    min_tissue: float = 0.25  # keep tiles with at least this tissue fraction
    batch_size: int = 64  # tiles per encoder batch (tile mode)
    read_threads: int = 4  # tile-reading threads (the CLI's --read-threads)
    slide_mpp: float | None = None  # override for slides without resolution metadata

    def __post_init__(self) -> None:
        """Each field within its range (``wsi_mamba.ranges``: the CLI's rules), else ``ValueError``."""
        check_fields(self, min_tissue=FRACTION, batch_size=POSITIVE_INT, read_threads=POSITIVE_INT, slide_mpp=MPP)
