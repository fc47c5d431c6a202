"""Make ``docs/figures/viewer.png``: ``wsi-mamba view`` on the predict output of two synthetic slides, as headless
Chromium shows it.

    python docs/figures/make_viewer_screenshot.py            # about 1-2 min on 2 cores; needs chromium on PATH

Steps (the same commands as the README's): ``wsi-mamba synth`` two procedural slides, ``wsi-mamba predict`` them
with the demo model and ``--heatmap``, serve the results with the viewer on a free local port, and screenshot the
tumour slide's page. A PNG over 290 KB is reduced to a 256-colour palette.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

from wsi_mamba.viewer import viewer_in_thread
from wsi_mamba.viewer.screenshot import browser_screenshot

OUT = Path(__file__).resolve().parent / "viewer.png"
SLIDE = "tumor_001"
MAX_BYTES = 290 * 1024  # the figure stays under 300 KB


def wsi_mamba(*args: str) -> None:
    """Run a ``wsi-mamba`` command with this interpreter; stop on failure."""
    print("+ wsi-mamba", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "wsi_mamba", *args], check=True)


def make_results(work: Path, size: int, seed: int) -> Path:
    """Two synthetic slides (one tumour, one normal) and their predict output folder."""
    slides, results = work / "slides", work / "results"
    wsi_mamba("synth", str(slides), "--slides", "2", "--seed", str(seed), "--size", str(size), "--test-fraction", "0")
    wsi_mamba("predict", str(slides), "--model", "synthetic-camelyon", "--heatmap", "--out", str(results))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"PNG to write (default {OUT})")
    parser.add_argument("--size", type=int, default=8192, help="level-0 width of the synthetic slides")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, help="folder for the slides and results (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="wsi-mamba-viewer-figure-") as temporary:
        work = args.work or Path(temporary)
        results = make_results(work, args.size, args.seed)
        with viewer_in_thread([results]) as viewer:
            shot = browser_screenshot(f"{viewer.url}?slide={SLIDE}", work / "viewer-full.png", window=(1280, 760))
        picture = Image.open(shot).convert("RGB")
        picture.save(args.out, optimize=True)
        if args.out.stat().st_size > MAX_BYTES:  # a 256-colour palette (bands the colour bar a little)
            picture.quantize(256, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
