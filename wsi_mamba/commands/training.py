"""``wsi-mamba train-encoder | train``: thin wrappers around ``wsi_mamba.workflows.training``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..data.stain_norm import StainNorm
from ..features.options import PRECISION_CHOICES
from ..workflows.training.configs import (
    PAUSED_EXIT_CODE,
    EncoderTrainingConfig,
    PatchTrainingConfig,
    SlideTrainingConfig,
)
from ._args import (
    THREADS_HELP,
    UsageError,
    carve_arguments,
    command_device,
    command_parser,
    count,
    decay,
    device_argument,
    encoder_arguments,
    encoder_options,
    fraction,
    json_object,
    mpp,
    name_text,
    path_text,
    positive_float,
    positive_int,
    seed,
    specificity,
    stain_arguments,
    stain_request,
    topk,
    val_fraction,
    view_count,
)

if TYPE_CHECKING:
    import torch

# Training errors are ValueErrors whose message names the file and the problem.
EXPECTED_ERRORS: tuple[type[Exception], ...] = (ValueError,)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the training subcommands to the CLI."""
    p = command_parser(
        subparsers,
        "train-encoder",
        "Train the tile encoder: on labelled patches (--patches: PCam HDF5, image folders, CSV), or on annotated "
        "tumour and normal tiles of training slides.",
        "wsi-mamba train-encoder --patches pcam/train --out encoder.safetensors\n  "
        "wsi-mamba train-encoder data/cohort/training --labels data/cohort/training/labels.csv "
        "--annotations data/cohort/training/lesion_annotations --out encoder.safetensors",
    )
    patch_defaults = PatchTrainingConfig()
    slide_defaults = EncoderTrainingConfig()
    p.add_argument("slides", nargs="*", type=path_text, help="slide files or folders (training on slides)")
    p.add_argument(
        "--patches",
        nargs="+",
        type=path_text,
        metavar="SRC",
        help="labelled patches: ROOT/0|1 or normal|tumor image folders, PCam *_x.h5 (+ *_y.h5), CSV path,label",
    )
    p.add_argument(
        "--val-patches",
        nargs="+",
        type=path_text,
        metavar="SRC",
        help="validation patches for early stopping (default: carved from --patches; never the evaluation set)",
    )
    p.add_argument("--labels", type=path_text, help="CSV of slide labels (image,label), training on slides")
    p.add_argument(
        "--annotations",
        type=path_text,
        help="folder of lesion annotations (NAME.xml / NAME.geojson), training on slides",
    )
    p.add_argument("--out", type=path_text, required=True, help="encoder checkpoint to write (.safetensors + .json)")
    p.add_argument(
        "--model",
        type=path_text,
        help="backbone: registry name, timm:NAME or an encoder checkpoint to start from "
        f"(default {patch_defaults.model} on patches, {slide_defaults.model} on slides)",
    )
    p.add_argument(
        "--model-args",
        type=json_object,
        default=dict(patch_defaults.model_args),
        metavar="JSON",
        help="build options of the architecture as a JSON object, kept in the checkpoint (patches), e.g. "
        "'{\"channels\": [16, 32, 64, 128]}' for timm:resnet50 at a quarter width",
    )
    encoder_arguments(p, geometry=False)
    p.add_argument("--patch-mpp", type=mpp, help="µm/px of the patches (default PCam's, 0.972)")
    p.add_argument("--tile-px", type=positive_int, default=slide_defaults.tile_px, help="tile side (slides)")
    p.add_argument("--mpp", type=mpp, default=slide_defaults.mpp, help="tile µm/px (slides)")
    p.add_argument("--epochs", type=positive_int, help=f"default {patch_defaults.epochs} / {slide_defaults.epochs}")
    p.add_argument(
        "--batch-size", type=positive_int, help=f"default {patch_defaults.batch_size} / {slide_defaults.batch_size}"
    )
    p.add_argument("--lr", type=positive_float, help=f"default {patch_defaults.lr:g} / {slide_defaults.lr:g}")
    p.add_argument("--patience", type=positive_int, default=patch_defaults.patience, help="early stopping (patches)")
    carve_arguments(p)  # --val-fraction, --max-val-patches (the cap applies to --val-patches too)
    p.add_argument("--epoch-patches", type=positive_int, help="class-balanced draws per epoch (patches)")
    p.add_argument(
        "--ema",
        type=decay,
        metavar="DECAY",
        help="validate and keep a moving average of the weights, DECAY per step, e.g. 0.998 (patches)",
    )
    p.add_argument(
        "--distill-from",
        type=path_text,
        metavar="MODEL",
        help="distil this encoder checkpoint (the teacher, same tile size and µm/px as the patches): its tumour "
        "probability of each training patch in --distill-views views is a soft target mixed into the loss (patches)",
    )
    p.add_argument(
        "--distill-views",
        type=view_count,
        default=patch_defaults.distill_views,
        help=f"views the teacher scores each patch in, features averaged: 1, 4 or 8 (default "
        f"{patch_defaults.distill_views})",
    )
    p.add_argument(
        "--distill-weight",
        type=fraction,
        default=patch_defaults.distill_weight,
        metavar="W",
        help=f"loss (1-W) * BCE(label) + W * BCE(teacher), W in [0, 1] (default {patch_defaults.distill_weight:g})",
    )
    p.add_argument(
        "--max-tiles", type=positive_int, default=slide_defaults.max_tiles_per_class, help="tiles per class (slides)"
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="yes",
        choices=["yes", "auto"],
        help="continue an interrupted training from the state after its last epoch (OUT.train-state/, same options "
        "and patches); 'auto': continue when a state exists, else start afresh (patches)",
    )
    p.add_argument(
        "--max-minutes",
        type=positive_float,
        metavar="M",
        help=f"stop after the epoch that passes M minutes, keeping the state for --resume (exit {PAUSED_EXIT_CODE}; "
        "patches)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        default=patch_defaults.precision,
        help="training steps on the CPU: fp32, bf16 (autocast, fp32 weights: 1.25x the steps/s on an AVX-512-BF16 "
        f"CPU, BENCHMARKS.md) or auto (bf16 on CPUs with bf16 hardware) (default {patch_defaults.precision}; "
        "patches; CUDA: bf16 autocast)",
    )
    p.add_argument("--seed", type=seed, default=patch_defaults.seed)
    stain_arguments(p, "none; patches: each normalised on its own stain")
    p.add_argument("--threads", type=positive_int, help=THREADS_HELP)
    device_argument(p)
    p.set_defaults(func=cmd_train_encoder)

    p = command_parser(
        subparsers,
        "train",
        "Train the slide model on feature stores and slide labels; writes a model folder.",
        "wsi-mamba train --features features/ --labels labels.csv --out model/",
    )
    p.add_argument("--features", type=path_text, required=True, help="folder of feature stores (from extract)")
    p.add_argument(
        "--labels",
        type=path_text,
        required=True,
        help="CSV of slide labels (image,label or CAMELYON16 reference.csv)",
    )
    p.add_argument(
        "--out",
        type=path_text,
        required=True,
        help="model folder to write (a new folder, or a model folder to replace)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace the model folder --out if there is one")
    p.add_argument("--encoder", type=path_text, help="encoder checkpoint (default: the one the stores were made with)")
    p.add_argument("--name", type=name_text, help="the model's name in outputs (default: the --out folder's name)")
    p.add_argument("--annotations", type=path_text, help="lesion annotations folder: adds tile supervision")
    train_defaults = SlideTrainingConfig()
    p.add_argument("--epochs", type=positive_int, default=train_defaults.epochs)
    p.add_argument("--lr", type=positive_float, default=train_defaults.lr)
    p.add_argument(
        "--patience", type=positive_int, default=train_defaults.patience, help="early-stopping patience (epochs)"
    )
    p.add_argument(
        "--val-fraction",
        type=val_fraction,
        default=train_defaults.val_fraction,
        help=f"validation part of the slides, in [0, 1) (default {train_defaults.val_fraction})",
    )
    p.add_argument("--seed", type=seed, default=train_defaults.seed)
    p.add_argument(
        "--aggregator",
        type=name_text,
        default=train_defaults.aggregator,
        help="slide aggregator (registry name): ss2d (this project's SS2D model, the default), abmil, clam-sb, "
        "transmil, mean, max",
    )
    p.add_argument(
        "--folds",
        type=count,
        default=train_defaults.folds,
        metavar="K",
        help="K-fold stratified cross-validation (K >= 2): fold models in OUT/fold-1..K, folds.json/folds.csv, "
        "and OUT itself trained on all slides for the folds' mean best epoch count (default 0: one split)",
    )
    p.add_argument(
        "--topk",
        type=topk,
        default=train_defaults.topk,
        metavar="K",
        help="ss2d: add a max-evidence branch, the slide logit mixing in the mean of the K highest tile logits "
        "(learnt weights) so a lone tumour tile is not averaged away; K in [0, 64] (default 0: off)",
    )
    p.add_argument(
        "--target-specificity",
        type=specificity,
        default=train_defaults.target_specificity,
        help="choose the slide threshold on the validation slides so that this share of their normal slides is "
        f"called normal, in (0, 1] (default {train_defaults.target_specificity}; no validation normal slide: 0.5)",
    )
    p.add_argument(
        "--compose-sections",
        type=count,
        default=train_defaults.compose_sections,
        metavar="K",
        help="train and validate also on real-size slides composed of K small slides' tile grids (K normal, or one "
        "tumour and K-1 normal, packed as the sections of one slide; the threshold is then chosen on them too); "
        "K >= 2 (default 0: off)",
    )
    p.add_argument(
        "--compose-slides",
        type=positive_int,
        default=train_defaults.compose_slides,
        help=f"composed training slides per epoch, new each epoch (default {train_defaults.compose_slides})",
    )
    p.add_argument(
        "--compose-val-slides",
        type=positive_int,
        default=train_defaults.compose_val_slides,
        help=f"composed validation slides (default {train_defaults.compose_val_slides})",
    )
    p.add_argument(
        "--val-features",
        type=path_text,
        help="validate on these feature stores (other slides, same encoder) instead of a part of --features, "
        "which then all train",
    )
    p.add_argument("--val-labels", type=path_text, help="labels of the --val-features slides")
    p.add_argument("--val-annotations", type=path_text, help="lesion annotations of the --val-features slides")
    device_argument(p)
    p.set_defaults(func=cmd_train)


def cmd_train_encoder(args: argparse.Namespace) -> int:
    device = command_device(args)
    from ..outputs.atomic import check_not_inputs
    from ..threads import apply_threads

    apply_threads(args.threads)
    out = Path(args.out)  # the checkpoint and its JSON: never over a file this run reads (a start checkpoint)
    inputs = [
        *(args.patches or ()),
        *(args.val_patches or ()),
        args.labels,
        args.model,
        args.encoder_weights,
        args.distill_from,
    ]
    check_not_inputs([out, out.with_suffix(".json"), out.with_suffix(".safetensors")], inputs)
    if args.patches:
        return _train_encoder_on_patches(args, device)
    if args.model_args:
        raise UsageError("train-encoder: --model-args applies to training on --patches")
    if args.resume or args.max_minutes:
        raise UsageError("train-encoder: --resume and --max-minutes apply to training on --patches")
    if args.distill_from:
        raise UsageError("train-encoder: --distill-from applies to training on --patches")
    if args.stain_norm or args.stain_target:
        raise UsageError("train-encoder: --stain-norm and --stain-target apply to training on --patches")
    if args.precision != "fp32":
        raise UsageError("train-encoder: --precision applies to training on --patches")
    if not args.slides or not args.labels or not args.annotations:
        raise UsageError("train-encoder needs --patches SRC, or slides with --labels and --annotations")
    from ..workflows.inputs import find_slides, read_labels
    from ..workflows.training.encoder_training import train_encoder

    cfg = EncoderTrainingConfig(
        model=args.model or EncoderTrainingConfig.model,
        tile_px=args.tile_px,
        mpp=args.mpp,
        max_tiles_per_class=args.max_tiles,
        epochs=args.epochs or EncoderTrainingConfig.epochs,
        batch_size=args.batch_size or EncoderTrainingConfig.batch_size,
        lr=args.lr or EncoderTrainingConfig.lr,
        seed=args.seed,
    )
    path = train_encoder(
        find_slides(args.slides), read_labels(args.labels), args.annotations, args.out, cfg, device=device
    )
    print(f"wrote {path}")
    return 0


def _train_encoder_on_patches(args: argparse.Namespace, device: torch.device) -> int:
    from ..data.patches import PatchGeometry, open_patches
    from ..devices import resolve_cpu_precision
    from ..workflows.training.patch_training import train_encoder_on_patches
    from ..workflows.training.training_state import TrainingPaused

    if args.slides or args.labels or args.annotations:
        raise UsageError("train-encoder: give either --patches or slides with --labels/--annotations, not both")
    source = open_patches(args.patches)
    if args.patch_mpp:  # keep the source's own patch size, with the stated resolution
        source.geometry = PatchGeometry(source.geometry.px, args.patch_mpp)
    val_source = open_patches(args.val_patches, geometry=source.geometry) if args.val_patches else None
    stain = stain_request(args)  # a stain target fitted before any training
    if isinstance(stain, StainNorm):  # each patch normalised on its own stain, training and validation alike
        from ..data.stain_patches import StainNormalisedPatches

        source = StainNormalisedPatches(source, stain)
        val_source = StainNormalisedPatches(val_source, stain) if val_source is not None else None
    encoder_options(args, args.model)  # --encoder-weights needs timm:NAME
    cfg = PatchTrainingConfig(
        model=args.model or PatchTrainingConfig.model,
        model_args=args.model_args,
        weights=args.encoder_weights,
        epochs=args.epochs or PatchTrainingConfig.epochs,
        batch_size=args.batch_size or PatchTrainingConfig.batch_size,
        lr=args.lr or PatchTrainingConfig.lr,
        patience=args.patience,
        val_fraction=args.val_fraction,
        max_val_patches=args.max_val_patches,
        epoch_patches=args.epoch_patches,
        ema_decay=args.ema,
        seed=args.seed,
        distill_from=args.distill_from,
        distill_views=args.distill_views,
        distill_weight=args.distill_weight,
        precision=resolve_cpu_precision(args.precision),
    )
    resume = {None: False, "yes": True, "auto": "auto"}[args.resume]
    try:
        path = train_encoder_on_patches(
            source, args.out, cfg, val_source, device=device, resume=resume, max_minutes=args.max_minutes
        )
    except TrainingPaused as paused:
        print(f"paused: {paused}", file=sys.stderr)
        return PAUSED_EXIT_CODE
    print(f"wrote {path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ..threads import apply_threads

    apply_threads(None)  # no --threads here: the cores idle now (OMP_NUM_THREADS wins)
    device = command_device(args)
    from ..workflows.training.slide_examples import SlideSet
    from ..workflows.training.slide_training import train_slide_model

    if bool(args.val_features) != bool(args.val_labels):
        raise UsageError("--val-features and --val-labels go together")
    if args.val_annotations and not args.val_features:
        raise UsageError("--val-annotations needs --val-features")
    validation = SlideSet(args.val_features, args.val_labels, args.val_annotations) if args.val_features else None
    cfg = SlideTrainingConfig(
        epochs=args.epochs,
        lr=args.lr,
        patience=args.patience,
        val_fraction=args.val_fraction,
        seed=args.seed,
        aggregator=args.aggregator,
        folds=args.folds,
        topk=args.topk,
        target_specificity=args.target_specificity,
        compose_sections=args.compose_sections,
        compose_slides=args.compose_slides,
        compose_val_slides=args.compose_val_slides,
    )
    path = train_slide_model(
        args.features,
        args.labels,
        args.out,
        args.encoder,
        args.annotations,
        cfg,
        name=args.name,
        overwrite=args.overwrite,
        device=device,
        validation=validation,
    )
    meta = json.loads((Path(path) / "model.json").read_text())["training"]
    folds = meta.get("cross_validation")
    if folds is None:
        auc = meta["best_val_auc"]
        shown = "none (no validation slides)" if auc is None else f"{auc:.3f}"
        print(f"wrote {path} (best epoch {meta['best_epoch']}, validation AUC {shown}, aggregator {cfg.aggregator})")
        return 0
    for row in folds["per_fold"]:
        print(
            f"fold {row['fold']}: validation AUC {row['val_auc']:.3f} on {row['validation_slides']} slides "
            f"(best epoch {row['best_epoch']}) -> {Path(path) / row['model']}"
        )
    print(
        f"{cfg.aggregator}: {folds['folds']}-fold validation AUC {folds['mean_val_auc']:.3f} ± "
        f"{folds['sd_val_auc']:.3f} (mean ± sd)"
    )
    print(f"wrote {path} (trained on all {folds['final']['slides']} slides for {folds['final']['epochs']} epochs)")
    return 0
