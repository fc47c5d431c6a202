"""Wall, CPU seconds and peak RSS of writing one large real-tissue slide (``wsi_mamba.synth.patch_tiles``).

    python benchmarks/bench_synth.py --cells 208 208 --out /tmp/bench-synth        # mid-size: 19,968 px a side
    python benchmarks/bench_synth.py --camelyon --magnification 10 --out /tmp/bench-synth  # CAMELYON16 size

``--camelyon``: 240 x 520 cells of 96 px (bench_predict.py's slide), at ``--magnification`` 10 (the patches'
own 0.972 µm/px: 49,920 x 23,040 px), 20 or 40. The slide (tumour slide 1 of seed ``--seed``, largest lesion a
micro-metastasis: ``wsi_mamba.synth.from_patches.write_patch_slide``'s plan) is written afresh each run and
deleted unless ``--keep``. ``--pyramid downsample`` (default) draws the levels down to the patches' own 10x
and averages each coarser level from the one above (as ``write_patch_slide``); ``render`` draws every level
from the patches (as before issue 26, but with its patch cache). Peak RSS is the process's (``ru_maxrss``);
CPU seconds are the process's, all threads.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

CAMELYON_CELLS = (240, 520)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, nargs=2, metavar=("ROWS", "COLS"), default=(208, 208))
    parser.add_argument("--camelyon", action="store_true", help="240 x 520 cells (CAMELYON16 size)")
    parser.add_argument("--magnification", type=int, choices=(10, 20, 40), default=10)
    parser.add_argument("--patches", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/pcam/valid")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-synth"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flavour", choices=("tiff", "svs"), default="tiff")
    parser.add_argument("--keep", action="store_true", help="keep the slide")
    parser.add_argument("--pyramid", choices=("render", "downsample"), default="downsample")
    args = parser.parse_args()

    from wsi_mamba.data.patches import open_patches
    from wsi_mamba.synth.appearance import DEFAULT_COMPOSITION, normal_tissue
    from wsi_mamba.synth.patch_plan import plan_slide
    from wsi_mamba.synth.patch_tiles import PatchTileRenderer
    from wsi_mamba.synth.writer import write_slide

    if not args.patches.is_dir():
        sys.exit(f"error: {args.patches}: no such folder of labelled patches (--patches)")
    cells = CAMELYON_CELLS if args.camelyon else tuple(args.cells)
    source = open_patches(args.patches)
    labels = np.asarray(source.labels)
    normal = normal_tissue(source, np.flatnonzero(labels == 0), DEFAULT_COMPOSITION, args.seed)
    px, mpp = source.geometry.px, source.geometry.mpp
    spec = plan_slide(
        args.seed,
        1,
        "micro",
        normal,
        np.flatnonzero(labels == 1),
        px,
        mpp,
        upsample=args.magnification // 10,
        shape=cells,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = (
        args.out
        / f"bench-synth-{cells[0]}x{cells[1]}-{args.magnification}x.{'svs' if args.flavour == 'svs' else 'tif'}"
    )
    cpu0, wall0 = time.process_time(), time.perf_counter()
    renderer = PatchTileRenderer(spec, source, 4 if args.flavour == "svs" else 2)
    write_slide(spec, path, args.flavour, renderer=renderer, pyramid=args.pyramid, drawn=spec.upsample)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    result = {
        "pyramid": args.pyramid,
        "width": spec.width,
        "height": spec.height,
        "tissue_cells": len(spec.cells),
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "gib": round(path.stat().st_size / 2**30, 3),
    }
    if not args.keep:
        path.unlink()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
