"""Fit the built-in stain-normalisation targets (``wsi_mamba/data/stain_targets.json``) on PCam training patches.

    python benchmarks/fit_stain_target.py ../shared/data/pcam/train --patches 2000

Reads ``--patches`` patches spread evenly over the sorted ``0/`` and ``1/`` folders, fits each method on all of
them at once (:func:`wsi_mamba.data.stain_norm.fit_stain` on their mosaic) and writes only the fitted numbers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from wsi_mamba.data.stain_norm import BUILTIN_TARGETS, PARAMETER_COUNTS, fit_stain
from wsi_mamba.outputs.atomic import write_text_atomic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="PCam training patches: 0/*.jpg (normal), 1/*.jpg (tumour)")
    parser.add_argument("--patches", type=int, default=2000, help="patches to fit on (half per class)")
    parser.add_argument("--out", type=Path, default=BUILTIN_TARGETS)
    args = parser.parse_args()
    paths = []
    for label in ("0", "1"):
        files = sorted((args.folder / label).glob("*.jpg"))
        paths += [files[i] for i in np.linspace(0, len(files) - 1, args.patches // 2).astype(int)]
    mosaic = np.concatenate([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    targets = {method: fit_stain(method, mosaic) for method in PARAMETER_COUNTS}
    record = {"fitted_on": f"{len(paths)} PCam training patches ({args.folder.name}/0 and /1, evenly spaced)"}
    write_text_atomic(args.out, json.dumps({**record, **targets}, indent=1) + "\n")
    print(json.dumps(targets))


if __name__ == "__main__":
    main()
