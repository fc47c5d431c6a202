"""``wsi-mamba info | tiles | synth``: thin wrappers around ``wsi_mamba.slide``."""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from ..slide import AnnotationError, SlideError, open_slide
from ..slide.base import set_max_pixels
from ._args import (
    command_parser,
    fraction,
    max_pixels_argument,
    mpp,
    non_negative,
    path_text,
    positive_float,
    positive_int,
    seed,
)

EXPECTED_ERRORS = (SlideError, AnnotationError)


MAX_SYNTH_SIZE = 250_000  # the largest real slides are about this wide (CAMELYON16: up to ~220,000 px)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the slide subcommands to the CLI."""
    p = command_parser(
        subparsers,
        "info",
        "Show a slide's backend, vendor, levels, mpp and associated images.",
        "wsi-mamba info slide.svs --json",
    )
    p.add_argument("slide", type=path_text, help="slide file (or DICOM folder)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--backend", choices=("tifffile", "openslide"), help="force a backend")
    p.add_argument("--slide-mpp", type=mpp, help="level-0 µm/px: stands in for a missing one or overrides the file's")
    max_pixels_argument(p)
    p.set_defaults(func=cmd_info)

    p = command_parser(
        subparsers,
        "tiles",
        "Tile a slide at a resolution and draw the grid on its thumbnail.",
        "wsi-mamba tiles slide.svs --mpp 0.5 --tile 256 --out preview.png",
    )
    p.add_argument("slide", type=path_text, help="slide file (or DICOM folder)")
    p.add_argument("--mpp", type=positive_float, default=0.5, help="tile resolution in µm/px (default 0.5)")
    p.add_argument("--tile", type=positive_int, default=256, help="tile side in pixels (default 256)")
    p.add_argument("--min-tissue", type=fraction, default=0.25, help="keep tiles with this tissue fraction, in [0, 1]")
    p.add_argument("--slide-mpp", type=mpp, help="level-0 µm/px when the file has none")
    p.add_argument("--out", type=path_text, help="preview PNG to write")
    p.add_argument("--max-size", type=positive_int, default=1024, help="preview's longer side (px)")
    p.add_argument("--json", action="store_true", help="print JSON")
    max_pixels_argument(p)
    p.set_defaults(func=cmd_tiles)

    p = command_parser(
        subparsers,
        "synth",
        "Write a synthetic CAMELYON16-style cohort (pyramidal TIFFs, XML, CSV): procedural tissue, or real "
        "tissue mosaicked from labelled patches with --from-patches.",
        "wsi-mamba synth data/synth --slides 6 --seed 0 --size 8192\n"
        "  wsi-mamba synth data/pcam-cohort --from-patches ../shared/data/pcam/valid --slides 40 --test-fraction 1",
    )
    p.add_argument("out", type=path_text, help="output folder")
    p.add_argument("--slides", type=positive_int, default=6, help="number of slides (a third for testing/)")
    p.add_argument("--seed", type=seed, default=0, help="random seed (same seed, same files)")
    p.add_argument(
        "--size",
        type=positive_int,
        default=None,
        help="level-0 width in pixels (default 8192); with --from-patches the longest side's upper bound "
        "(default 60 patches, 5760 px at 96 px)",
    )
    p.add_argument("--flavour", choices=("mixed", "svs", "tiff"), default="mixed", help="file flavour")
    p.add_argument(
        "--test-fraction",
        type=fraction,
        default=None,
        help="fraction of the slides for testing/ (default a third; 1 = a held-out test cohort)",
    )
    p.add_argument(
        "--from-patches",
        type=path_text,
        metavar="DIR",
        help="real tissue: build every slide from the labelled patches in DIR (0/ and 1/, or normal/ and tumor/)",
    )
    p.add_argument(
        "--stain",
        type=non_negative,
        default=1.0,
        help="with --from-patches: strength of the per-slide HED stain shift (0 = none; default 1)",
    )
    p.add_argument(
        "--magnification",
        type=positive_float,
        help="with --from-patches: level 0's objective power, 1, 2 or 4 times the patches' own (PCam's 10x "
        "patches: 10, 20 or 40; default the patches' own), the patches upsampled to it; --size is then in "
        "level-0 px at that magnification",
    )
    p.add_argument(
        "--composition",
        type=non_negative,
        default=1.0,  # synth.from_patches.DEFAULT_COMPOSITION (tests/test_synth_from_patches.py checks)
        help="with --from-patches: Dirichlet concentration of each slide's mix of normal-tissue appearance "
        "(smaller = more varied slides; 0 = every slide drawn uniformly from the pool; default 1)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a cohort of other parameters in OUT (without it such a folder is refused; a cohort of "
        "the same parameters is resumed)",
    )
    p.set_defaults(func=cmd_synth)


def cmd_info(args: argparse.Namespace) -> int:
    set_max_pixels(args.max_pixels)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with open_slide(args.slide, backend=args.backend, mpp=args.slide_mpp) as slide:
            info = slide.describe()
    info["warnings"] = [str(w.message) for w in caught]
    if args.json:
        from ..outputs.atomic import json_safe

        print(json.dumps(json_safe(info), indent=2, allow_nan=False))  # strict JSON: no Infinity / NaN
        return 0
    mpp = f"{info['mpp']:.4g} µm/px" if info["mpp"] else "unknown"
    mpp += " (--slide-mpp)" if args.slide_mpp is not None else ""
    print(f"{info['path']}\n  backend: {info['backend']}   vendor: {info['vendor']}")
    print(
        f"  dimensions: {info['dimensions'][0]} x {info['dimensions'][1]}   mpp: {mpp}"
        f"   objective: {info['objective_power'] or 'unknown'}"
    )
    for i, level in enumerate(info["levels"]):
        w, h = level["dimensions"]
        print(f"  level {i}: {w} x {h}  downsample {level['downsample']:g}")
    for name, (w, h) in info["associated_images"].items():
        print(f"  associated image {name}: {w} x {h}")
    for message in info["warnings"]:
        print(f"  warning: {message}")
    return 0


def _check_image_out(out: str, slide: str) -> None:
    """Refuse (``ValueError``, one line) an image ``--out`` that is the slide itself, an existing folder, or
    another existing node that is not a regular file (a FIFO, a device: never replaced)."""
    from pathlib import Path

    from ..outputs.atomic import check_regular_output

    target = Path(out)
    if target.is_dir():
        raise ValueError(f"--out {out} is a folder: give the image file to write (nothing was changed)")
    check_regular_output(target)
    if target.exists() and Path(slide).exists() and target.samefile(slide):
        raise ValueError(f"--out {out} is the input slide (nothing was changed)")


def cmd_tiles(args: argparse.Namespace) -> int:
    from ..slide.preview import render_preview, save_image_atomic
    from ..slide.tiling import make_tile_grid
    from ..slide.tissue import detect_tissue

    set_max_pixels(args.max_pixels)
    if args.out:
        _check_image_out(args.out, args.slide)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # missing mpp is reported by make_tile_grid as an error
        slide = open_slide(args.slide, mpp=args.slide_mpp)
    with slide:
        tissue = detect_tissue(slide)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            grid = make_tile_grid(slide, args.tile, args.mpp, args.min_tissue, tissue=tissue)
        if args.out:
            save_image_atomic(render_preview(slide, grid, tissue, args.max_size), args.out)
    summary = {
        "slide": str(args.slide),
        "tiles": len(grid),
        "grid": list(grid.shape),
        "tile_px": grid.tile_px,
        "mpp": grid.target_mpp,
        "level": grid.level,
        "read_px": grid.read_px,
        "tissue_fraction": round(tissue.fraction, 4),
        "preview": args.out,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"{len(grid)} tiles of {grid.tile_px} px at {grid.target_mpp:g} µm/px "
            f"(grid {grid.shape[0]} x {grid.shape[1]}, read at level {grid.level} as {grid.read_px} px)"
            + (f" -> {args.out}" if args.out else "")
        )
    if len(grid) == 0:
        print(f"warning: {args.slide}: no tissue found; the tile grid is empty", file=sys.stderr)
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    if args.size is not None and args.size > MAX_SYNTH_SIZE:
        raise ValueError(f"--size {args.size} is larger than any real slide: at most {MAX_SYNTH_SIZE} px")

    if args.from_patches:
        return _synth_from_patches(args)
    from ..synth.cohort import cohort_parameters, plan_cohort, write_cohort
    from ..synth.layout import check_cohort_output
    from ..synth.writer import tile_count

    args.size = args.size or 8192
    parameters = cohort_parameters(args.slides, args.seed, args.size, args.flavour, args.test_fraction)
    check_cohort_output(args.out, parameters, args.overwrite)  # another cohort in --out: one line, before the bar
    plan = plan_cohort(args.out, args.slides, args.seed, args.size, args.flavour, args.test_fraction)
    total = sum(tile_count(p.spec.width, p.spec.height, p.flavour) for p in plan)
    with tqdm(total=total, unit="tile", desc=f"{args.slides} slides", file=sys.stderr) as bar:
        write_cohort(
            args.out,
            args.slides,
            args.seed,
            args.size,
            args.flavour,
            tick=bar.update,
            test_fraction=args.test_fraction,
            overwrite=args.overwrite,
        )
    print(f"wrote {len(plan)} slides to {args.out}")
    return 0


def _synth_from_patches(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..data.patches import open_patches
    from ..synth.from_patches import write_planned_cohort
    from ..synth.layout import check_cohort_output
    from ..synth.patch_plan import CohortSpec, plan_patch_cohort

    source = open_patches(args.from_patches)
    upsample = _upsample(args.magnification, source.geometry.mpp)
    spec = CohortSpec(
        slides=args.slides,
        seed=args.seed,
        flavour=args.flavour,
        test_fraction=args.test_fraction,
        max_cells=args.size // (source.geometry.px * upsample) if args.size else 60,
        stain=args.stain,
        composition=args.composition,
        upsample=upsample,
    )
    check_cohort_output(args.out, spec.record(source), args.overwrite)  # another cohort in --out: refused first
    plan = plan_patch_cohort(args.out, source, spec)  # input errors before the bar
    with tqdm(total=args.slides, unit="slide", desc=f"{args.slides} slides", file=sys.stderr) as bar:
        write_planned_cohort(plan, tick=bar.update, overwrite=args.overwrite)
    print(f"wrote {len(plan)} slides of real tissue from {args.from_patches} to {args.out}")
    return 0


def _upsample(magnification: float | None, patch_mpp: float) -> int:
    """Level-0 pixels per patch pixel for ``--magnification`` (None: 1); ``UsageError`` unless 1, 2 or 4."""
    from ..synth.patch_plan import UPSAMPLES
    from ..synth.writer import APP_MAG, MPP
    from ._args import UsageError

    if magnification is None:
        return 1
    own = APP_MAG * MPP / patch_mpp
    upsample = round(magnification / own)
    if upsample not in UPSAMPLES or abs(upsample * own - magnification) > 0.01 * magnification:
        allowed = ", ".join(f"{u * own:g}" for u in UPSAMPLES)
        raise UsageError(f"--magnification {magnification:g}: the patches are {own:g}x; use {allowed}")
    return upsample
