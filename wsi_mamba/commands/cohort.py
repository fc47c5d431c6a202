"""``wsi-mamba cohort``: a thin wrapper around ``wsi_mamba.workflows.cohort.run_cohort``."""

from __future__ import annotations

import argparse
import json
import sys

from ._args import (
    command_device,
    command_parser,
    device_argument,
    name_text,
    path_text,
    positive_int,
    read_options,
    requested_mode,
    stain_request,
    tile_arguments,
)

# Manifest, model and scheduler errors are ValueErrors whose message names the file or address.
EXPECTED_ERRORS: tuple[type[Exception], ...] = (ValueError,)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``cohort`` subcommand to the CLI."""
    p = command_parser(
        subparsers,
        "cohort",
        "Score a cohort on dask.distributed, one task per slide (a local cluster or --scheduler); "
        "resumable: complete slides are skipped on a rerun, failed and missing ones redone.",
        "wsi-mamba cohort slides.csv --out results/ --workers 4\n"
        "  wsi-mamba cohort data/cohort/testing --out results/ --scheduler tcp://10.0.0.5:8786 --heatmap",
    )
    p.add_argument(
        "manifest", type=path_text, help="CSV with a 'slide' (or 'path'/'image') column of slide paths, or a folder"
    )
    p.add_argument(
        "--out", type=path_text, required=True, help="output folder: slides/NAME.json, failed/NAME.json, cohort.csv"
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--scheduler", type=name_text, metavar="ADDRESS", help="a running dask scheduler (tcp://host:8786)"
    )
    where.add_argument(
        "--workers",
        type=positive_int,
        help="worker processes of the local cluster (default: one per GPU, else min(4, CPUs))",
    )
    p.add_argument("--model", type=path_text, help="model folder (default: the shipped default model)")
    p.add_argument(
        "--heatmap",
        action="store_true",
        help="also write NAME.heatmap.png, NAME.tiles.geojson and NAME.regions.geojson",
    )
    p.add_argument(
        "--torch-threads",
        type=positive_int,
        help="torch threads per worker (default: CPUs / workers locally; the workers' own with --scheduler)",
    )
    tile_arguments(p)  # --read-threads: per worker process
    device_argument(p)  # resolved by each worker; checked here too when the workers are local
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the run's summary as JSON")
    p.set_defaults(func=cmd_cohort)


def cmd_cohort(args: argparse.Namespace) -> int:
    if args.scheduler is None:  # local workers: a device this machine lacks is a usage error, before any work
        command_device(args)
    requested, stain = requested_mode(args), stain_request(args)  # a stain target fitted before any work
    if stain is not None:  # the model's stain normalisation, or one line before any slide
        from ..features.modes import resolve
        from ..workflows.bundle import model_path, read_manifest

        folder = model_path(args.model)
        meta = read_manifest(folder)
        requested = resolve(requested, meta.get("feature_mode"), str(meta.get("name") or folder.name), stain)
    from ..workflows.cohort import run_cohort

    summary = run_cohort(
        args.manifest,
        args.out,
        model=args.model,
        scheduler=args.scheduler,
        workers=args.workers,
        heatmap=args.heatmap,
        progress=not args.no_progress,
        read=read_options(args),
        requested=requested,
        torch_threads=args.torch_threads,
        log=lambda line: print(line, file=sys.stderr, flush=True),
        device=args.device,
    )
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        print(
            f"{summary.total} slides: {summary.processed} processed, {summary.skipped} already complete, "
            f"{summary.failed} failed -> {summary.csv}"
        )
    for name, error in sorted(summary.failures.items()):
        print(f"error: {name}: {error}", file=sys.stderr)
    return 0 if summary.ok else 1
