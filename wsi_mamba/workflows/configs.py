"""Training configurations as plain dataclasses: the one source of defaults for the library and the CLI
(importable without torch, so building the CLI stays fast)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..data.augment_config import AugmentConfig


@dataclass(frozen=True)
class EncoderTrainingConfig:
    """Hyper-parameters of encoder training (the recipe sets them)."""

    model: str = "vmamba_nano"
    tile_px: int = 128
    mpp: float = 0.5
    tumor_min_fraction: float = 0.5  # tumour tile: at least this much lesion
    max_tiles_per_class: int = 3000
    max_normal_per_slide: int = 60
    val_fraction: float = 0.2  # of the slides, for tile AUC
    epochs: int = 4
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    seed: int = 0
    workers: int = 4


@dataclass(frozen=True)
class PatchTrainingConfig:
    """Hyper-parameters of patch training (the recipe sets them; the CLI's defaults are these)."""

    model: str = "vmamba_nano"
    epochs: int = 12
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    drop_path_rate: float = 0.05
    val_fraction: float = 0.1  # of the training source, when no validation source is given
    max_val_patches: int = 4000
    epoch_patches: int | None = None  # class-balanced draws per epoch (default: the training part's size)
    patience: int = 4  # epochs without a better validation AUC before stopping
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
