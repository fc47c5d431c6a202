"""Training configurations as plain dataclasses: the one source of training defaults for the library and the
CLI (importable without torch, so building the CLI stays fast; ``tests/test_cli_defaults.py`` checks the CLI)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...data.augment_config import AugmentConfig
from ...devices import CPU_PRECISIONS
from ...ranges import (
    COUNT,
    DECAY,
    FRACTION,
    MPP,
    NON_NEGATIVE,
    POSITIVE,
    POSITIVE_INT,
    RATE,
    SEED,
    SPECIFICITY,
    TOPK,
    VAL_FRACTION,
    VIEWS,
    check_fields,
)

PAUSED_EXIT_CODE = 75
"""The exit code of a training that stopped cleanly before finishing, its state kept for a resume
(``train-encoder --max-minutes``; sysexits' EX_TEMPFAIL): a recipe stops there and says a rerun continues it."""


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

    def __post_init__(self) -> None:
        """Each field within its range (``wsi_mamba.ranges``: the CLI's rules), else ``ValueError``."""
        check_fields(
            self,
            tile_px=POSITIVE_INT,
            mpp=MPP,
            tumor_min_fraction=FRACTION,
            max_tiles_per_class=POSITIVE_INT,
            max_normal_per_slide=POSITIVE_INT,
            val_fraction=VAL_FRACTION,
            epochs=POSITIVE_INT,
            batch_size=POSITIVE_INT,
            lr=POSITIVE,
            weight_decay=NON_NEGATIVE,
            seed=SEED,
            workers=POSITIVE_INT,
        )


@dataclass(frozen=True)
class PatchTrainingConfig:
    """Hyper-parameters of patch training (the recipe sets them; the CLI's defaults are these)."""

    model: str = "vmamba_nano"  # a registry name, or FAMILY:NAME (timm:resnet18)
    model_args: dict = field(default_factory=dict)  # build options of the architecture (timm kwargs, VMamba config)
    weights: str | None = None  # start from these local weights (timm: a file or a Hugging Face-style folder)
    epochs: int = 12
    batch_size: int = 64
    lr: float = 5e-4  # 2e-3 diverged in epoch 3 on PCam (batch 64)
    weight_decay: float = 0.05
    drop_path_rate: float = 0.05
    val_fraction: float = 0.1  # of the training source, when no validation source is given
    max_val_patches: int = 4000
    epoch_patches: int | None = None  # class-balanced draws per epoch (default: the training part's size)
    patience: int = 4  # epochs without a better validation AUC before stopping
    ema_decay: float | None = None  # validate and keep an exponential moving average of the weights (per step)
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    distill_from: str | None = None  # a teacher encoder checkpoint whose probabilities are soft targets
    distill_sha256: str | None = None  # the teacher file's SHA-256 (filled in by the training)
    distill_views: int = 4  # the teacher scores each training patch in this many dihedral views
    distill_weight: float = 0.5  # loss: (1 - w) * BCE(label) + w * BCE(teacher); 0: the plain BCE
    precision: str = "fp32"  # the training steps on the CPU: fp32, or bf16 autocast (fp32 weights); CUDA: bf16

    def __post_init__(self) -> None:
        """Each numeric field within its range (``wsi_mamba.ranges``: the CLI's rules), and ``precision`` one of
        :data:`~wsi_mamba.devices.CPU_PRECISIONS`, else ``ValueError``."""
        if self.precision not in CPU_PRECISIONS:
            raise ValueError(f"precision must be {' or '.join(CPU_PRECISIONS)}, got {self.precision!r}")
        check_fields(
            self,
            distill_views=VIEWS,
            distill_weight=FRACTION,
            epochs=POSITIVE_INT,
            batch_size=POSITIVE_INT,
            lr=POSITIVE,
            weight_decay=NON_NEGATIVE,
            drop_path_rate=RATE,
            val_fraction=VAL_FRACTION,
            max_val_patches=POSITIVE_INT,
            epoch_patches=POSITIVE_INT,
            patience=POSITIVE_INT,
            ema_decay=DECAY,
            seed=SEED,
        )


@dataclass(frozen=True)
class SlideTrainingConfig:
    """Hyper-parameters of slide-model training (the recipe sets them). ``dim``, ``depth``, ``d_state`` and
    ``dropout`` go to every aggregator whose config has such a field."""

    aggregator: str = "ss2d"  # registry name (wsi_mamba.models.aggregators): ss2d, abmil, clam-sb, transmil, ...
    dim: int = 64
    depth: int = 2
    d_state: int = 4
    dropout: float = 0.1
    epochs: int = 40
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 2
    patience: int = 10  # epochs without a better validation AUC before stopping
    val_fraction: float = 0.25
    clip_norm: float = 1.0
    tile_loss_weight: float = 0.5  # weight of tile supervision when annotations are given
    seed: int = 0
    folds: int = 0  # K >= 2: K-fold cross-validation (fold models + a final model on all slides); 0: one split
    topk: int = 0  # ss2d: K >= 1 mixes the mean of the K highest tile logits into the slide logit (0: off)
    target_specificity: float = 0.95  # the threshold: chosen on the validation slides for this specificity
    compose_sections: int = 0  # K >= 2: also train and validate on slides composed of K small ones (0: off)
    compose_slides: int = 40  # composed training slides per epoch (fresh compositions every epoch)
    compose_val_slides: int = 40  # composed validation slides (fixed), beside the validation slides; the threshold

    def __post_init__(self) -> None:
        """Each numeric field within its range (``wsi_mamba.ranges``: the CLI's rules), else ``ValueError``
        (``folds`` 1 and ``compose_sections`` 1 are refused by ``train_slide_model``, as the CLI's)."""
        check_fields(
            self,
            dim=POSITIVE_INT,
            depth=POSITIVE_INT,
            d_state=POSITIVE_INT,
            dropout=RATE,
            epochs=POSITIVE_INT,
            lr=POSITIVE,
            weight_decay=NON_NEGATIVE,
            warmup_epochs=COUNT,
            patience=POSITIVE_INT,
            val_fraction=VAL_FRACTION,
            clip_norm=POSITIVE,
            tile_loss_weight=NON_NEGATIVE,
            seed=SEED,
            folds=COUNT,
            topk=TOPK,
            target_specificity=SPECIFICITY,
            compose_sections=COUNT,
            compose_slides=POSITIVE_INT,
            compose_val_slides=POSITIVE_INT,
        )
