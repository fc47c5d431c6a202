"""``wsi-mamba compare``: thin wrapper around ``wsi_mamba.workflows.reports.compare`` (the table of
pipelines/compare.yaml)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._args import THREADS_HELP, UsageError, command_parser, name_text, path_text, positive_int

EXPECTED_ERRORS: tuple[type[Exception], ...] = ()


def labelled_folder(text: str) -> tuple[str, Path]:
    """argparse type: ``LABEL=FOLDER`` (the label may hold spaces; the last ``=`` separates)."""
    label, sep, folder = text.rpartition("=")
    if not sep or not label.strip() or not folder:
        raise argparse.ArgumentTypeError(f"expected LABEL=FOLDER, got {text!r}")
    return label.strip(), Path(path_text(folder))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``compare`` to the CLI."""
    p = command_parser(
        subparsers,
        "compare",
        "One markdown table and one ROC figure comparing encoders (train-encoder + score-patches folders), feature "
        "modes and aggregators (evaluate folders), with DeLong's paired tests between pairs of them.",
        "wsi-mamba compare --out comparison --encoder VMamba=encoders/vmamba --encoder ResNet=encoders/resnet "
        "--aggregator SS2D=eval/ss2d --aggregator ABMIL=eval/abmil --paired SS2D ABMIL",
    )
    p.add_argument(
        "--out", type=path_text, required=True, help="folder for comparison.md, comparison.png, comparison.json"
    )
    labelled_options = {
        "--encoder": "an encoder: FOLDER holds encoder.safetensors and valid-patches.csv + .metrics.json",
        "--mode": "a feature mode (tile, region): an evaluate output folder",
        "--aggregator": "a slide aggregator: an evaluate output folder",
    }
    for option, what in labelled_options.items():
        p.add_argument(
            option, action="append", default=[], type=labelled_folder, metavar="LABEL=FOLDER",
            help=f"{what} (repeatable)",
        )
    p.add_argument(
        "--paired", nargs=2, action="append", default=[], type=name_text, metavar=("A", "B"),
        help="DeLong's paired test between these two labels (repeatable)",
    )
    p.add_argument("--no-profile", action="store_true", help="skip the encoders' GFLOPs and CPU speed")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed batches per encoder (median; default 3)")
    p.add_argument("--threads", type=positive_int, help=THREADS_HELP)
    p.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    if not (args.encoder or args.mode or args.aggregator):
        raise UsageError("compare needs at least one --encoder, --mode or --aggregator")
    from ..threads import apply_threads
    from ..workflows.reports.compare import compare

    apply_threads(args.threads)
    summary = compare(
        args.out,
        args.encoder,
        args.mode,
        args.aggregator,
        [tuple(pair) for pair in args.paired],
        profile=not args.no_profile,
        repeats=args.repeats,
    )
    print(Path(args.out, "comparison.md").read_text())
    for paired in summary["paired"]:
        print(f"{paired['a']} vs {paired['b']}: DeLong p = {paired['p_value']:.4f}")
    print(f"wrote {args.out}/comparison.md, comparison.png, comparison.json")
    return 0
