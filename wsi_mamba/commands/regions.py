"""``wsi-mamba calibrate-regions``: fit (or refit) a model folder's region calling on validation feature stores
without retraining (thin wrapper around :mod:`wsi_mamba.workflows.training.region_fitting`)."""

from __future__ import annotations

import argparse
import json

from ..outputs.region_calling import DEFAULT_TARGET_FP_PER_MM2
from ._args import command_device, command_parser, device_argument, path_text, positive_float

# The workflow's errors are ValueErrors whose message names the file and the problem.
EXPECTED_ERRORS: tuple[type[Exception], ...] = (ValueError,)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``calibrate-regions`` to the CLI."""
    p = command_parser(
        subparsers,
        "calibrate-regions",
        "Fit a model's region calling (smoothing, tile threshold, minimum size, strong-tile score) on validation "
        "slides for a false-region rate per mm² of normal tissue; rewrites the model folder's model.json.",
        "wsi-mamba calibrate-regions --model model/ --features val-features/ --labels val-labels.csv "
        "--annotations val-annotations/",
    )
    p.add_argument(
        "--model", type=path_text, required=True, help="model folder to calibrate (its model.json is rewritten)"
    )
    p.add_argument("--features", type=path_text, required=True, help="feature stores of validation slides (extract)")
    p.add_argument("--labels", type=path_text, required=True, help="CSV of their slide labels")
    p.add_argument(
        "--annotations",
        type=path_text,
        help="lesion annotations of the tumour slides (their tissue outside lesions counts as normal; tumour slides "
        "without annotations are left out)",
    )
    p.add_argument(
        "--target-fp-per-mm2",
        type=positive_float,
        default=DEFAULT_TARGET_FP_PER_MM2,
        metavar="X",
        help=f"false regions per mm² of normal tissue (default {DEFAULT_TARGET_FP_PER_MM2}: about 2.6 on a "
        "60,000-tile slide of 96 px tiles at 0.972 µm/px)",
    )
    p.add_argument("--json", action="store_true", help="print the calling record as JSON")
    device_argument(p)
    p.set_defaults(func=cmd_calibrate_regions)


def cmd_calibrate_regions(args: argparse.Namespace) -> int:
    device = command_device(args)
    from ..workflows.training.region_fitting import calibrate_model_regions

    target = args.target_fp_per_mm2
    calling = calibrate_model_regions(args.model, args.features, args.labels, args.annotations, target, device)
    if args.json:
        print(json.dumps(calling.to_json(), indent=2))
        return 0
    record = calling.calibration
    strong = "none" if calling.strong_score is None else f"{calling.strong_score:g}"
    print(
        f"region calling of {args.model}: {calling.smoothing} smoothing, tile threshold {calling.tile_threshold:g}, "
        f"min {calling.min_tiles} tiles, strong score {strong}; {record['false_regions']} false regions on "
        f"{record['normal_area_mm2']:g} mm² of normal tissue ({record['fp_per_mm2']:g} per mm², target "
        f"{calling.target_fp_per_mm2:g}{'' if record['target_met'] else ', not met'}), "
        f"{record['lesions_hit']} of {record['lesions']} lesions hit"
    )
    return 0
