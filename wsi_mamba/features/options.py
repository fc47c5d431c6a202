"""How a slide's tiles are read for encoding, apart from the feature mode (plain data, no torch: the CLI builds
it while parsing)."""

from __future__ import annotations

from dataclasses import dataclass

from ..ranges import FRACTION, MPP, POSITIVE_INT, check_fields

PRECISION_CHOICES = ("auto", "fp32", "bf16")
"""The encoder's CPU precision as asked for (``auto``: :func:`wsi_mamba.devices.resolve_cpu_precision`)."""

MIN_POOL_TILES = 2048
"""Below this many tiles a slide is encoded in the calling process by default: the encoding workers' start (~3 s,
importing torch and loading the encoder, in parallel) would not be repaid (:mod:`wsi_mamba.features.encoder_pool`)."""


@dataclass(frozen=True)
class ReadOptions:
    """Which tiles are kept and how they are read and batched (the geometry itself, tile_px and mpp, comes from
    the encoder; how tiles become features is the feature mode, :mod:`wsi_mamba.features.modes`)."""

    min_tissue: float = 0.25  # keep tiles with at least this tissue fraction
    batch_size: int = 64  # tiles per encoder batch (tile mode)
    read_threads: int = 4  # tile-reading threads (the CLI's --read-threads)
    slide_mpp: float | None = None  # override for slides without resolution metadata
    encode_processes: int | None = None  # tile mode on the CPU: encoding processes (None: one per torch thread
    # for slides of at least MIN_POOL_TILES tiles; 1: in this process)
    precision: str = "auto"  # the encoder's CPU precision: fp32, bf16 (CPU autocast) or auto (bf16 where the CPU
    # computes bf16 in hardware; devices.resolve_cpu_precision); CUDA always runs bf16 autocast

    def __post_init__(self) -> None:
        """Each field within its range (``wsi_mamba.ranges``: the CLI's rules), else ``ValueError``."""
        check_fields(
            self,
            min_tissue=FRACTION,
            batch_size=POSITIVE_INT,
            read_threads=POSITIVE_INT,
            slide_mpp=MPP,
            encode_processes=POSITIVE_INT,
        )
        if self.precision not in PRECISION_CHOICES:
            raise ValueError(
                f"ReadOptions.precision must be one of {', '.join(PRECISION_CHOICES)}, got {self.precision!r}"
            )
