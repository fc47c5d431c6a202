"""``wsi-mamba score-patches`` and ``split-patches``: thin wrappers around ``wsi_mamba.workflows``."""

from __future__ import annotations

import argparse
import json
import sys

from ..data.augment_config import VIEW_COUNTS
from ..features.modes import NO_STAIN_NORM
from ..workflows.training.configs import PatchTrainingConfig
from ._args import (
    THREADS_HELP,
    VIEWS_ON_DEMAND_HELP,
    UsageError,
    carve_arguments,
    command_device,
    command_parser,
    device_argument,
    encoder_arguments,
    encoder_options,
    fraction,
    mpp,
    path_text,
    positive_int,
    probability_band,
    seed,
    stain_arguments,
    stain_request,
    view_count,
)

EXPECTED_ERRORS: tuple[type[Exception], ...] = ()


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the patch subcommands to the CLI."""
    p = command_parser(
        subparsers,
        "score-patches",
        "Tumour probability of each patch (image files, folders, PCam _x.h5); AUC and accuracy when labels are "
        "known (folder names 0/1 or normal/tumor, the _y.h5 beside the _x.h5, or --labels).",
        "wsi-mamba score-patches pcam/valid --out valid-scores.csv",
    )
    p.add_argument(
        "paths",
        nargs="+",
        type=path_text,
        help="image files, folders (recursive), PCam *_x.h5 files or path,label CSVs",
    )
    p.add_argument(
        "--model",
        type=path_text,
        help="model folder, encoder checkpoint, or timm:NAME with --encoder-weights (default: the default model)",
    )
    encoder_arguments(p, geometry=False)
    p.add_argument("--labels", type=path_text, help="CSV with path,label columns naming the patches' labels")
    p.add_argument(
        "--out", type=path_text, help="CSV of per-patch scores; NAME.metrics.json and NAME.roc.png go beside it"
    )
    p.add_argument("--json", action="store_true", help="print a JSON list of {path, [index], [label], score}")
    p.add_argument(
        "--views",
        type=view_count,
        choices=VIEW_COUNTS,
        help="score each patch as the mean logit of 1, 4 (rotations) or 8 (and mirror images) views (default: the "
        "model folder's, 1 for an encoder checkpoint)",
    )
    p.add_argument("--tta", dest="views", action="store_const", const=8, help="the same as --views 8")
    p.add_argument(
        "--views-on-demand",
        type=probability_band,
        metavar="LO,HI",
        help=f"{VIEWS_ON_DEMAND_HELP} (default: the model folder's when --views is not given, else all views)",
    )
    stain_arguments(p, "the model folder's; each patch fitted on its own stain")
    p.add_argument(
        "--threshold", type=fraction, help="patch probability threshold for the accuracy, in [0, 1] (default 0.5)"
    )
    p.add_argument("--patch-mpp", type=mpp, help="µm/px of the patches (default PCam's, 0.972)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="patches per batch (default 128)")
    p.add_argument("--threads", type=positive_int, help=THREADS_HELP)
    device_argument(p)
    p.set_defaults(func=cmd_score_patches)

    p = command_parser(
        subparsers,
        "split-patches",
        "Write train-encoder's split of labelled patches as train.csv and validation.csv (path,label): the "
        "validation part is what an encoder trained on them with the same options never learnt from.",
        "wsi-mamba split-patches pcam/train --out split/",
    )
    p.add_argument("paths", nargs="+", type=path_text, help="image files, folders (recursive) or path,label CSVs")
    p.add_argument("--out", type=path_text, required=True, help="folder for train.csv and validation.csv")
    carve_arguments(p)
    p.add_argument("--seed", type=seed, default=PatchTrainingConfig.seed, help="as train-encoder's")
    p.set_defaults(func=cmd_split_patches)


def cmd_split_patches(args: argparse.Namespace) -> int:
    from ..data.patches import open_patches
    from ..workflows.training.patch_training import write_patch_split

    cfg = PatchTrainingConfig(val_fraction=args.val_fraction, max_val_patches=args.max_val_patches, seed=args.seed)
    train_csv, val_csv = write_patch_split(open_patches(args.paths), args.out, cfg, inputs=args.paths)
    print(f"wrote {train_csv} and {val_csv}")
    return 0


def cmd_score_patches(args: argparse.Namespace) -> int:
    device = command_device(args)
    if args.views_on_demand is not None and args.views == 1:
        raise UsageError("--views-on-demand needs --views 4 or 8: one view has no other views to add")
    stain = stain_request(args)  # a stain target fitted before any work
    from tqdm import tqdm

    from ..data.patches import PatchGeometry, open_patches
    from ..outputs.atomic import check_not_inputs
    from ..threads import apply_threads
    from ..workflows.bundle import model_files
    from ..workflows.reports.score_patches import (
        load_patch_classifier,
        patch_metrics,
        patch_output_files,
        result_rows,
        score_patch_source,
        write_patch_outputs,
    )

    apply_threads(args.threads)
    if args.out:  # before any scoring: no output over an input (the list, the labels, the model)
        inputs = [*args.paths, args.labels, args.encoder_weights, *model_files(args.model)]
        check_not_inputs(patch_output_files(args.out), inputs)
    source = open_patches(args.paths, labels_csv=args.labels)
    if args.patch_mpp:
        source.geometry = PatchGeometry(source.geometry.px, args.patch_mpp)
    encoder_options(args, args.model)  # --encoder-weights needs timm:NAME
    encoder, mode = load_patch_classifier(args.model, device, weights=args.encoder_weights)  # the model's tile mode
    views = args.views or mode.views
    on_demand = args.views_on_demand if args.views_on_demand or args.views else mode.on_demand
    if on_demand is not None and views == 1:
        raise UsageError("--views-on-demand needs --views 4 or 8 (or a model folder with them)")
    stain = mode.stain if stain is None else stain if stain != NO_STAIN_NORM else None
    threshold = 0.5 if args.threshold is None else args.threshold
    with tqdm(total=len(source), unit="patch", desc="score patches", file=sys.stderr, disable=None) as bar:
        result = score_patch_source(
            source, encoder, args.batch_size, views, on_batch=bar.update, stain=stain, on_demand=on_demand
        )
    for message in result.errors.values():
        print(f"error: {message}", file=sys.stderr)
    metrics = patch_metrics(result, threshold)
    if metrics is not None:
        metrics.update(model=args.model or "default", views=views, unreadable=len(result.errors))
        metrics.update(views_on_demand=list(on_demand) if on_demand else None)
        metrics.update(stain_norm=stain.attrs() if stain else None, stain_not_estimated=result.stain_skipped)
    if args.out:
        written = write_patch_outputs(result, args.out, metrics, encoder.name)
        print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    rows = result_rows(result)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not args.out:
        for row in rows:
            where = row["path"] if "index" not in row else f"{row['path']}#{row['index']}"
            score = "null" if row["score"] is None else f"{row['score']:.4f}"
            print(f"{where}\t{score}")
    if metrics is not None:
        print(
            f"patch AUC {metrics['auc']:.4f} (95% CI {metrics['auc_ci_low']:.4f}-{metrics['auc_ci_high']:.4f}), "
            f"accuracy {metrics['accuracy_at_threshold']:.4f} at {threshold:g} on {metrics['n']} patches "
            f"({metrics['n_positive']} tumour)",
            file=sys.stderr if args.json else sys.stdout,
        )
    if result.errors:
        print(f"error: {len(result.errors)} of {len(source)} patches could not be read", file=sys.stderr)
        return 1
    return 0
