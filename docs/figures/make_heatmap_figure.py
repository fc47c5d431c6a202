"""The README's heatmap figure: a real-tissue tumour slide and a normal one, predicted by the default model,
their heatmaps side by side, and the stain-separation measure of each (printed); under them, a procedural slide
the default model flags as out of domain, its warning written on the heatmap.

    python docs/figures/make_heatmap_figure.py            # writes docs/figures/heatmaps.png

Slides are mosaicked from the PCam patches in ``../shared/data/pcam/valid`` (``wsi-mamba synth --from-patches
… --slides 2 --seed 3``, the README's real-tissue example) into ``--work``; the figure is their rendered
heatmaps (not the patches), reduced to a small palette PNG. The procedural slide is ``wsi-mamba synth --slides 1
--size 4096``. The measure (``wsi_mamba.outputs.stain_contrast``):
the share of the colour thumbnail's stained tissue pixels whose hue lies within 30° of a hue the overlay uses on
the tiles at or above the threshold, and the hue gap between the two.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from wsi_mamba.cli import main as cli
from wsi_mamba.outputs.grid import score_grid
from wsi_mamba.outputs.heatmap import TRANSPARENT_BELOW, render_heatmap
from wsi_mamba.outputs.heatmap_colours import cell_map
from wsi_mamba.outputs.stain_contrast import StainSeparation, stain_separation
from wsi_mamba.slide import open_slide
from wsi_mamba.workflows.predict import THUMBNAIL_PX

SLIDES = ("tumor/tumor_001", "normal/normal_001")
PANEL_WIDTH = 760


def _panel(path: Path) -> Image.Image:
    """A heatmap PNG scaled to :data:`PANEL_WIDTH`."""
    with Image.open(path) as image:
        panel = image.convert("RGB")
    return panel.resize((PANEL_WIDTH, round(panel.height * PANEL_WIDTH / panel.width)), Image.Resampling.LANCZOS)


def separation(slide_path: Path, tiles_geojson: Path, threshold: float, lesion_only: bool) -> StainSeparation:
    """The stain separation of the default heatmap of a predicted slide (its scores read back from the GeoJSON):
    of the overlay on the tiles at or above ``threshold`` (``lesion_only``), or on every tile drawn."""
    features = json.loads(tiles_geojson.read_text())["features"]
    corners = np.array([f["geometry"]["coordinates"][0][0] for f in features])
    size0 = features[0]["geometry"]["coordinates"][0][1][0] - corners[0, 0]
    scores = np.array([f["properties"]["measurements"]["tumor_probability"] for f in features])
    with open_slide(slide_path) as slide:
        thumb = np.asarray(slide.get_thumbnail(THUMBNAIL_PX))
        w0, h0 = slide.dimensions
    rows, cols = np.round(corners[:, 1] / size0).astype(int), np.round(corners[:, 0] / size0).astype(int)
    grid = score_grid(rows, cols, scores, (math.ceil(h0 / size0), math.ceil(w0 / size0)))
    rendered = render_heatmap(thumb, grid, (w0, h0), size0)
    ri, ci = cell_map(thumb.shape[:2], (0, 0, w0, h0), size0, grid.shape)
    cells = grid[ri, ci]
    with np.errstate(invalid="ignore"):
        lesion = cells >= threshold if lesion_only else cells > TRANSPARENT_BELOW
    return stain_separation(thumb[np.isfinite(cells)], rendered[lesion])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", default="../shared/data/pcam/valid", help="labelled PCam patch folder")
    parser.add_argument("--work", default="/tmp/wsi-mamba-heatmap-figure", help="folder for the slides and results")
    parser.add_argument("--out", default=str(Path(__file__).with_name("heatmaps.png")))
    args = parser.parse_args()
    work = Path(args.work)
    cohort, results = work / "slides", work / "results"
    synth = [
        "synth",
        str(cohort),
        "--from-patches",
        args.patches,
        "--slides",
        "2",
        "--seed",
        "3",
        "--test-fraction",
        "0",
    ]
    if cli(synth) != 0:
        raise SystemExit("synth failed")
    paths = [cohort / "training" / f"{name}.tif" for name in SLIDES]
    if cli(["predict", *map(str, paths), "--heatmap", "--out", str(results)]) != 0:
        raise SystemExit("predict failed")
    panels = []
    for path in paths:
        result = json.loads((results / f"{path.stem}.json").read_text())
        for lesion_only in (True, False):
            measure = separation(path, results / f"{path.stem}.tiles.geojson", result["threshold"], lesion_only)
            print(
                f"{path.stem} ({result['prediction']}, {result['score']:.4f}), overlay on the tiles "
                f"{'at or above the threshold' if lesion_only else 'drawn (score > 0.2)'}: {measure.overlap:.3%} "
                f"of {measure.stained_pixels} stained tissue pixels within 30 deg of its hues, hue gap "
                f"{measure.hue_gap_deg:.0f} deg ({measure.overlay_pixels} coloured overlay pixels)"
            )
        panels.append(_panel(results / f"{path.stem}.heatmap.png"))
    procedural = work / "procedural"
    if cli(["synth", str(procedural), "--slides", "1", "--size", "4096", "--test-fraction", "0"]) != 0:
        raise SystemExit("synth failed")
    slide = next((procedural / "training").rglob("*.tif"))
    if cli(["predict", str(slide), "--heatmap", "--out", str(results / "procedural")]) != 0:
        raise SystemExit("predict failed")
    panels.append(_panel(results / "procedural" / f"{slide.stem}.heatmap.png"))
    gap = 12
    top_h = max(panels[0].height, panels[1].height)
    figure = Image.new("RGB", (2 * PANEL_WIDTH + gap, top_h + gap + panels[2].height), (255, 255, 255))
    figure.paste(panels[0], (0, 0))
    figure.paste(panels[1], (PANEL_WIDTH + gap, 0))
    figure.paste(panels[2], (0, top_h + gap))
    figure.quantize(colors=192, method=Image.Quantize.FASTOCTREE).save(args.out, optimize=True)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
