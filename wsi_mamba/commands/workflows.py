"""``wsi-mamba extract | train-encoder | train | evaluate | predict``: thin wrappers around ``wsi_mamba.workflows``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..slide.base import set_max_pixels
from ..workflows.configs import EncoderTrainingConfig, PatchTrainingConfig, SlideTrainingConfig, TileOptions
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
    json_object,
    max_pixels_argument,
    mpp,
    name_text,
    path_text,
    positive_float,
    positive_int,
    seed,
    tile_arguments,
    tile_options,
    val_fraction,
)

if TYPE_CHECKING:
    import torch

# Workflow errors are ValueErrors whose message names the file and the problem.
EXPECTED_ERRORS: tuple[type[Exception], ...] = (ValueError,)


def _tile_arguments(p: argparse.ArgumentParser) -> None:
    """The tile options of ``extract`` and ``predict``: the shared ones, the decoding limit, torch threads."""
    tile_arguments(p, workers_alias=True)
    max_pixels_argument(p)
    p.add_argument("--threads", type=positive_int, help=THREADS_HELP)


TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def tsv_field(text: str) -> str:
    r"""``text`` as one field of a tab-separated line: backslash, tab, newline and CR written as ``\\``,
    ``\t``, ``\n`` and ``\r`` (the escapes of PostgreSQL's text format), so a name never splits a line."""
    return str(text).translate(TSV_ESCAPES)


def _tile_options(args: argparse.Namespace) -> TileOptions:
    """The tile options, after setting torch's thread count and the decoding limit from ``args``."""
    from ..threads import apply_threads

    apply_threads(args.threads)
    set_max_pixels(args.max_pixels)
    return tile_options(args)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the workflow subcommands to the CLI."""
    p = command_parser(
        subparsers,
        "extract",
        "Encode the tissue tiles of slides into one feature store (zarr) per slide; resumable.",
        "wsi-mamba extract data/cohort/training --encoder encoder.safetensors --out features/\n  "
        "wsi-mamba extract slides/ --encoder timm:resnet50 --encoder-weights resnet50.safetensors --out features/",
    )
    p.add_argument("slides", nargs="+", type=path_text, help="slide files or folders (searched recursively)")
    p.add_argument("--out", type=path_text, required=True, help="folder of feature stores")
    p.add_argument(
        "--encoder",
        type=path_text,
        help="encoder checkpoint (.safetensors), timm:NAME (with --encoder-weights), a Hugging Face-style model "
        "folder, or a registry name (random weights); default: the default model's",
    )
    encoder_arguments(p)
    _tile_arguments(p)
    device_argument(p)
    p.add_argument("--json", action="store_true", help="print per-slide results as JSON")
    p.set_defaults(func=cmd_extract)

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
        "--max-tiles", type=positive_int, default=slide_defaults.max_tiles_per_class, help="tiles per class (slides)"
    )
    p.add_argument("--seed", type=seed, default=patch_defaults.seed)
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
        "--val-features",
        type=path_text,
        help="validate on these feature stores (other slides, same encoder) instead of a part of --features, "
        "which then all train",
    )
    p.add_argument("--val-labels", type=path_text, help="labels of the --val-features slides")
    p.add_argument("--val-annotations", type=path_text, help="lesion annotations of the --val-features slides")
    device_argument(p)
    p.set_defaults(func=cmd_train)

    p = command_parser(
        subparsers,
        "evaluate",
        "Slide AUC (95% bootstrap interval), accuracy, ROC curve and per-slide CSV; FROC with annotations.",
        "wsi-mamba evaluate --model model/ --features features/ --labels reference.csv --baseline --out eval/",
    )
    p.add_argument("--model", type=path_text, help="model folder (default: the shipped default model)")
    p.add_argument("--features", type=path_text, required=True, help="folder of feature stores")
    p.add_argument("--labels", type=path_text, required=True, help="CSV of slide labels")
    p.add_argument("--annotations", type=path_text, help="lesion annotations folder: adds the lesion-level FROC")
    p.add_argument("--baseline", action="store_true", help="also report the colour-statistics baseline")
    p.add_argument("--out", type=path_text, required=True, help="folder for metrics.json, per_slide.csv, roc.png")
    p.add_argument("--bootstrap", type=positive_int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    device_argument(p)
    p.set_defaults(func=cmd_evaluate)

    p = command_parser(
        subparsers,
        "predict",
        "Metastasis probability of each slide (features on the fly); optional heatmap and GeoJSON.",
        "wsi-mamba predict slide.svs --heatmap --out results/",
    )
    p.add_argument("slides", nargs="+", type=path_text, help="slide files or folders")
    p.add_argument("--model", type=path_text, help="model folder (default: the shipped default model)")
    p.add_argument("--out", type=path_text, help="folder for NAME.json (and heatmaps)")
    p.add_argument(
        "--heatmap", action="store_true", help="write NAME.heatmap.png, NAME.tiles.geojson and NAME.regions.geojson"
    )
    _tile_arguments(p)
    device_argument(p)
    p.add_argument("--json", action="store_true", help="print a JSON list of results")
    p.set_defaults(func=cmd_predict)

    p = command_parser(
        subparsers,
        "run",
        "Run a recipe (YAML list of wsi-mamba commands); finished steps are skipped on a rerun.",
        "wsi-mamba run pipelines/synthetic-camelyon.yaml --dry-run",
    )
    p.add_argument("recipe", type=path_text, help="recipe YAML (see pipelines/)")
    p.add_argument("--workdir", type=path_text, help="run in this folder instead of the recipe's workdir")
    p.add_argument(
        "--set", action="append", default=[], type=name_text, metavar="NAME=VALUE", help="override a recipe variable"
    )
    p.add_argument(
        "--only", action="append", default=[], type=name_text, metavar="STEP", help="run just this step (repeatable)"
    )
    p.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    p.add_argument(
        "--threads",
        type=positive_int,
        help="torch CPU threads of every step that does not set its own (default: each step takes the cores idle "
        "when it starts; weights can change in their last bits with the thread count)",
    )
    p.set_defaults(func=cmd_run)


def cmd_extract(args: argparse.Namespace) -> int:
    device = command_device(args)  # a device this machine lacks fails here, before anything is loaded
    from ..models.encoder import load_encoder
    from ..workflows.bundle import default_model_path
    from ..workflows.extract import extract_slides
    from ..workflows.inputs import find_slides

    slides = find_slides(args.slides)
    spec = args.encoder or default_model_path() / "encoder.safetensors"
    encoder = load_encoder(spec, **encoder_options(args, args.encoder)).to(device)
    results = extract_slides(slides, args.out, encoder, _tile_options(args))
    failed = {k: v for k, v in results.items() if v.startswith("failed")}
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        done = sum(v == "done" for v in results.values())
        skipped = sum(v == "skipped" for v in results.values())
        print(f"{done} extracted, {skipped} already complete, {len(failed)} failed -> {args.out}")
        for name, why in failed.items():
            print(f"error: {name}: {why.removeprefix('failed: ')}", file=sys.stderr)
    return 1 if failed else 0


def cmd_train_encoder(args: argparse.Namespace) -> int:
    device = command_device(args)
    from ..outputs.atomic import check_not_inputs
    from ..threads import apply_threads

    apply_threads(args.threads)
    out = Path(args.out)  # the checkpoint and its JSON: never over a file this run reads (a start checkpoint)
    inputs = [*(args.patches or ()), *(args.val_patches or ()), args.labels, args.model, args.encoder_weights]
    check_not_inputs([out, out.with_suffix(".json"), out.with_suffix(".safetensors")], inputs)
    if args.patches:
        return _train_encoder_on_patches(args, device)
    if args.model_args:
        raise UsageError("train-encoder: --model-args applies to training on --patches")
    if not args.slides or not args.labels or not args.annotations:
        raise UsageError("train-encoder needs --patches SRC, or slides with --labels and --annotations")
    from ..workflows.encoder_training import train_encoder
    from ..workflows.inputs import find_slides, read_labels

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
    from ..workflows.patch_training import train_encoder_on_patches

    if args.slides or args.labels or args.annotations:
        raise UsageError("train-encoder: give either --patches or slides with --labels/--annotations, not both")
    source = open_patches(args.patches)
    if args.patch_mpp:  # keep the source's own patch size, with the stated resolution
        source.geometry = PatchGeometry(source.geometry.px, args.patch_mpp)
    val_source = open_patches(args.val_patches, geometry=source.geometry) if args.val_patches else None
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
    )
    path = train_encoder_on_patches(source, args.out, cfg, val_source, device=device)
    print(f"wrote {path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ..threads import apply_threads

    apply_threads(None)  # no --threads here: the cores idle now (OMP_NUM_THREADS wins)
    device = command_device(args)
    from ..workflows.train import SlideSet, train_slide_model

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


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..threads import apply_threads

    apply_threads(None)  # no --threads here: the cores idle now (OMP_NUM_THREADS wins)
    device = command_device(args)
    from ..workflows.evaluate import evaluate

    metrics = evaluate(
        args.model,
        args.features,
        args.labels,
        args.out,
        args.annotations,
        args.baseline,
        args.bootstrap,
        device=device,
    )
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    for key in ("slides", "baseline"):
        if key in metrics:
            m = metrics[key]
            label = metrics["model"] if key == "slides" else "colour baseline"
            print(
                f"{label}: AUC {m['auc']:.3f} (95% CI {m['auc_ci_low']:.3f}-{m['auc_ci_high']:.3f}) "
                f"on {m['n']} slides, "
                f"accuracy {m['accuracy_at_0.5']:.3f} at 0.5, {m['accuracy_at_youden']:.3f} at Youden "
                f"{m['youden_threshold']:.3f}"
            )
    for cls, rates in metrics.get("by_lesion_class", {}).items():
        what = "false-positive rate" if "false_positive_rate" in rates else "sensitivity"
        value = rates.get("false_positive_rate", rates.get("sensitivity"))
        print(f"  {cls}: {rates['slides']} slides, {what} {value:.3f} at {rates['threshold']:g}")
    if "froc" in metrics:
        score = metrics["froc"]["score"]
        print(f"FROC score {score:.3f}" if score is not None else f"FROC: {metrics['froc']['reason']}")
    print(f"wrote {args.out}/metrics.json, per_slide.csv, roc.png")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    device = command_device(args)
    from ..progress import Progress
    from ..workflows.batch import RESULT_SUFFIXES, check_unique_names, prepare_output_folder, slide_failure
    from ..workflows.bundle import load_bundle
    from ..workflows.inputs import find_slides
    from ..workflows.predict import predict_slide

    slides = find_slides(args.slides)
    out = args.out or ("." if args.heatmap else None)
    if out is not None:
        check_unique_names(slides, "results, heatmaps and GeoJSON")
    bundle = load_bundle(args.model, device=device)
    if out is not None:  # no result over an input; temporaries of killed runs removed
        prepare_output_folder(out, slides, RESULT_SUFFIXES, bundle.path.glob("*"))
    options = _tile_options(args)  # once: it also sets torch's thread count
    results, failed = [], 0
    with Progress("predict", "tile") as bar:  # a bar on a terminal, a line every 30 s in a log (wsi_mamba.progress)
        for number, path in enumerate(slides, 1):
            bar.set_note(f"slide {number}/{len(slides)} {tsv_field(Path(path).name)}")  # one log line
            try:
                result = predict_slide(path, bundle, options, out, args.heatmap, bar.update, bar.add_total)
            except Exception as exc:  # any per-slide failure (SlideError, OSError, ...): the others go on
                failed += 1
                bar.clear()
                message = slide_failure(path, exc)
                print(f"error: {message}", file=sys.stderr)
                results.append({"slide": str(path), "score": None, "error": message})
                continue
            results.append(result)
            if not args.json:
                bar.clear()
                name = tsv_field(result["slide"])  # one line per slide whatever its name holds
                if result["score"] is None:
                    print(f"{name}\tnull\t({result['reason']})")
                else:
                    print(f"{name}\t{result['score']:.4f}\t{result['prediction']}")
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if failed else 0


def cmd_run(args: argparse.Namespace) -> int:
    from ..threads import pinned_threads
    from ..workflows.recipe import load_recipe, run_recipe

    overrides = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--set expects NAME=VALUE, got {item!r}")
        overrides[name] = value
    recipe = load_recipe(args.recipe, overrides, args.workdir)
    # args.dispatch is the CLI's entry point (set by cli.build_parser): each step runs in this process
    with pinned_threads(args.threads):
        return run_recipe(recipe, args.dispatch, args.only, args.dry_run, log=lambda line: print(line, flush=True))
