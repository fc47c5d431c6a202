"""Heatmaps that read on H&E: the overlay's hues are not the stain's (measured on a procedural and a real-tissue
thumbnail), the threshold and the caveats are on the image, small regions of a large slide get a zoom panel read
in bounded pieces, and the regions GeoJSON carries the slide's call."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsi_mamba.outputs.grid import score_grid
from wsi_mamba.outputs.heatmap import render_heatmap, render_heatmap_png
from wsi_mamba.outputs.heatmap_colours import blend_scores, cell_map
from wsi_mamba.outputs.heatmap_legend import (
    CAVEAT_COLOR,
    MARKER_PX,
    PAD,
    font,
    heatmap_caveats,
    heatmap_title,
    legend_lines,
    regions_rule,
    text_size,
)
from wsi_mamba.outputs.heatmap_zoom import MAX_READ_PX, ZOOM_PANEL_PX, read_box
from wsi_mamba.outputs.region_calling import (
    UNCALIBRATED,
    RegionCalling,
    call_regions,
    called_regions_geojson,
    write_called_regions_geojson,
)
from wsi_mamba.outputs.stain_contrast import stain_separation

PCAM = Path(__file__).resolve().parents[2] / "shared" / "data" / "pcam"
THRESHOLD = 0.5


def _he_thumbnail(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Procedural H&E: eosin pink and haematoxylin purple blotches with texture."""
    rng = np.random.default_rng(seed)
    pink, purple = np.array([235, 160, 200], np.float32), np.array([120, 70, 170], np.float32)
    mix = rng.random((h // 4 + 1, w // 4 + 1)).repeat(4, 0).repeat(4, 1)[:h, :w, None]
    pixels = (1 - mix) * pink + mix * purple + rng.normal(0, 10, (h, w, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _lesion_separation(thumb: np.ndarray, grid: np.ndarray, size0: float, rendered: np.ndarray):
    """stain_separation between the thumbnail's tissue (cells with a score) and the rendered lesion cells."""
    w0, h0 = grid.shape[1] * size0, grid.shape[0] * size0
    ri, ci = cell_map(thumb.shape[:2], (0, 0, w0, h0), size0, grid.shape)
    cells = grid[ri, ci]
    with np.errstate(invalid="ignore"):
        lesion = cells >= THRESHOLD
    return stain_separation(thumb[np.isfinite(cells)], rendered[lesion])


def test_overlay_hues_are_not_the_stains_procedural() -> None:
    thumb = _he_thumbnail(120, 200)
    grid = np.full((12, 20), 0.05, np.float32)
    grid[3:7, 5:11] = np.linspace(0.5, 1.0, 24).reshape(4, 6)  # the lesion, the whole scale above threshold
    rendered = render_heatmap(thumb, grid, (2000, 1200), 100.0)
    new = _lesion_separation(thumb, grid, 100.0, rendered)
    assert new.stained_pixels > 10_000 and new.overlay_pixels > 1_000
    assert new.overlap < 0.01 and new.hue_gap_deg >= 60
    # The measure can fail: the old red scale over the colour thumbnail shares the stain's hues.
    old = blend_scores(thumb, grid, (0, 0, 2000, 1200), 100.0, alpha=0.7, cmap="YlOrRd")
    assert _lesion_separation(thumb, grid, 100.0, old).overlap > 0.3


def _pcam_patches(label: str, n: int) -> list[np.ndarray]:
    files = sorted((PCAM / "valid" / label).glob("*"))[:n]
    return [np.asarray(Image.open(f).convert("RGB").resize((16, 16))) for f in files]


@pytest.mark.skipif(not (PCAM / "valid").is_dir(), reason=f"real PCam patches not found at {PCAM}")
def test_overlay_hues_are_not_the_stains_real_tissue() -> None:
    # A 10 x 14 mosaic of real patches (16 px each): a block of tumour patches scored high, normal ones low.
    normal, tumour = _pcam_patches("0", 140), _pcam_patches("1", 20)
    assert len(normal) == 140 and len(tumour) == 20
    grid = np.full((10, 14), 0.05, np.float32)
    thumb = np.zeros((160, 224, 3), np.uint8)
    lesion_cells = [(r, c) for r in range(3, 7) for c in range(4, 9)]
    for i in range(140):
        r, c = divmod(i, 14)
        thumb[16 * r : 16 * r + 16, 16 * c : 16 * c + 16] = normal[i]
    for k, (r, c) in enumerate(lesion_cells):
        thumb[16 * r : 16 * r + 16, 16 * c : 16 * c + 16] = tumour[k]
        grid[r, c] = 0.55 + 0.45 * k / len(lesion_cells)
    rendered = render_heatmap(thumb, grid, (1400, 1000), 100.0)
    separation = _lesion_separation(thumb, grid, 100.0, rendered)
    assert separation.stained_pixels > 5_000
    assert separation.overlap < 0.01 and separation.hue_gap_deg >= 45


def test_caveat_and_title_text() -> None:
    result = {
        "slide": "skin",
        "score": 0.994,
        "prediction": "tumor",
        "threshold": 0.5,
        "model": "pcam-camelyon",
        "warnings": ["its colour statistics are unlike the training slides'"],
        "corrupt_tiles": 3,
    }
    assert heatmap_title(result) == "skin: metastasis probability 0.994, called tumor (threshold 0.5)"
    caveats = heatmap_caveats(result, regions=2)
    assert caveats[0].startswith("Out of domain for model pcam-camelyon: its colour statistics are unlike")
    assert "3 tiles could not be decoded" in caveats[1] and len(caveats) == 2  # regions on a tumour call: fine
    normal = heatmap_caveats({**result, "prediction": "normal", "warnings": [], "corrupt_tiles": 0}, regions=1)
    assert len(normal) == 1 and "called normal, yet 1 region" in normal[0]
    assert heatmap_caveats({"slide": "blank", "score": None, "reason": "no tissue found"}) == [
        "No score: no tissue found."
    ]
    assert heatmap_title({"slide": "blank", "score": None}) == "blank: no score"
    assert heatmap_caveats({"score": 0.1, "prediction": "normal", "warnings": [], "corrupt_tiles": 0}, 0) == []
    assert any("threshold 0.35" in line for line in legend_lines(0.2, 0.35))
    assert not any("threshold" in line for line in legend_lines(0.2, None))


def test_legend_states_the_threshold_that_called_the_regions() -> None:
    calibrated = RegionCalling(0.31, "mean3x3", 4, 0.95, 0.005)
    lines = legend_lines(0.2, 0.51, regions_rule(calibrated))
    assert lines[1] == "slide threshold 0.51 (triangle): the slide is called tumor at or above it"
    assert lines[2:] == [
        "outlined in black: the called regions (regions GeoJSON)",
        "regions called at smoothed evidence >= 0.31 over >= 4 tiles, or strong single-tile evidence >= 0.95",
    ]
    plain = legend_lines(0.2, 0.51, regions_rule(RegionCalling.uncalibrated(0.51)))
    assert plain[-1] == "regions called at tile score >= 0.51 over >= 1 tile"
    assert legend_lines(0.2, None, regions_rule(None)) == [lines[0], lines[2]]  # no calling known: no rule
    # The PNG's legend gets the calling's line: one line taller than with the regions alone.
    grid = np.full((6, 30), 0.1, np.float32)
    grid[2:4, 10:12] = 0.9
    called = call_regions(grid, calibrated, 0.01)
    args = (_he_thumbnail(60, 300), grid, (3000, 600), 100.0)
    without = render_heatmap_png(*args, threshold=0.51, regions=called)
    stated = render_heatmap_png(*args, threshold=0.51, regions=called, calling=calibrated)
    assert stated.height == without.height + text_size("Ag", font())[1] + 2


def _reddish(pixels: np.ndarray) -> int:
    r, g, b = (pixels[..., i].astype(int) for i in range(3))
    return int(((r > 120) & (g < 80) & (b < 80)).sum())


def test_png_shows_caveats_and_threshold_marker() -> None:
    thumb = _he_thumbnail(60, 300)
    grid = np.full((6, 30), 0.1, np.float32)
    grid[2:4, 10:12] = 0.9
    caveat = "Out of domain for model m: its colour statistics are unlike the training slides'."
    plain = np.asarray(render_heatmap_png(thumb, grid, (3000, 600), 100.0, threshold=None))
    marked = np.asarray(render_heatmap_png(thumb, grid, (3000, 600), 100.0, threshold=0.5, caveats=[caveat]))
    # The caveat is written in its colour above the heatmap (the heatmap itself has no red: greyscale + viridis).
    assert CAVEAT_COLOR == (170, 0, 0) and _reddish(plain) == 0
    heat = render_heatmap(thumb, grid, (3000, 600), 100.0, threshold=0.5)
    left = (marked.shape[1] - 300) // 2  # centred when the text is wider than the heatmap
    top = next(t for t in range(marked.shape[0] - 60) if np.array_equal(marked[t : t + 60, left : left + 300], heat))
    assert top > 0 and _reddish(marked[:top]) > 50  # the heatmap is drawn as render_heatmap draws it
    # The lesion's outline: black pixels just outside its cells (level-0 1000..1200 px = thumbnail 10..12 px).
    assert (heat[18:20, 100:120].max(axis=2) < 30).all() and (heat[40:42, 100:120].max(axis=2) < 30).all()
    # The threshold's marker: a dark triangle under the label "threshold 0.5", above the bar at x of 0.5.
    width = marked.shape[1]
    x = PAD + round(0.5 * (width - 2 * PAD - 1))
    marker_top = top + 60 + PAD + text_size("Ag", font())[1] + 2
    triangle = marked[marker_top : marker_top + MARKER_PX - 2, x - 1 : x + 2].max(axis=2)
    assert (triangle < 40).mean() > 0.8
    x_plain = PAD + round(0.5 * (plain.shape[1] - 2 * PAD - 1))
    # Without a threshold: no marker band, the bar's frame comes right under the heatmap.
    assert (plain[60 : 60 + PAD - 1, x_plain - 1 : x_plain + 2] == 255).all() and (plain[60 + PAD - 1] == 0).any()


class FakeSlide:
    """A 200,000 x 100,000 px slide that draws a pattern and records every read's size."""

    def __init__(self, downsamples: Sequence[float] = (1.0, 4.0, 16.0, 64.0)) -> None:
        self.dimensions = (200_000, 100_000)
        self.level_downsamples = tuple(downsamples)
        self.reads: list[int] = []

    def best_level_for_downsample(self, downsample: float) -> int:
        return max(i for i, ds in enumerate(self.level_downsamples) if ds <= downsample * 1.01)

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        self.reads.append(size[0] * size[1])
        pixels = np.full((size[1], size[0], 3), 180, np.uint8)
        pixels[::7, :, 0] = 90  # some texture
        return pixels


def test_zoom_panel_on_a_large_grid_is_bounded() -> None:
    # 80,000 tiles of 500 px (400 x 200) on a 200,000 x 100,000 px slide; a 2 x 2-tile lesion is 5 px in the
    # 1,024 px thumbnail: it gets a zoom panel where it is large.
    size0 = 500.0
    grid = np.full((200, 400), 0.05, np.float32)
    grid[120:122, 300:302] = 0.97
    thumb = np.full((512, 1024, 3), 200, np.uint8)
    slide = FakeSlide()
    plain = render_heatmap_png(thumb, grid, slide.dimensions, size0, threshold=THRESHOLD)
    zoomed = render_heatmap_png(thumb, grid, slide.dimensions, size0, threshold=THRESHOLD, slide=slide)
    assert zoomed.height >= plain.height + ZOOM_PANEL_PX and slide.reads
    assert max(slide.reads) <= MAX_READ_PX
    # In the panel the lesion is tens of pixels a side (in the thumbnail: 5 px), in viridis's top colour.
    pixels = np.asarray(zoomed).astype(int)
    yellow = (pixels[..., 0] > 170) & (pixels[..., 1] > 170) & (pixels[..., 2] < 120)
    rows, cols = np.nonzero(yellow[512:])
    assert len(rows) and rows.max() - rows.min() >= 40 and cols.max() - cols.min() >= 40
    in_thumbnail = np.nonzero(yellow[:512].any(axis=1))[0]
    assert len(in_thumbnail) <= 12
    # No zoom for a region already large in the thumbnail, nor without a threshold.
    big = grid.copy()
    big[20:80, 20:120] = 0.9
    big[120:122, 300:302] = 0.05
    assert render_heatmap_png(thumb, big, slide.dimensions, size0, threshold=THRESHOLD, slide=slide).height == (
        plain.height
    )


def test_read_box_without_a_pyramid_reads_bands() -> None:
    slide = FakeSlide(downsamples=(1.0,))
    out = read_box(slide, (10_000.0, 10_000.0, 16_000.0, 16_000.0), 256)  # 36 M px at level 0
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8
    assert len(slide.reads) > 1 and max(slide.reads) <= MAX_READ_PX


def test_regions_geojson_says_the_slide_call(tmp_path: Path) -> None:
    rows, cols = np.array([0, 0, 3]), np.array([0, 1, 3])
    x, y, scores = cols * 100.0, rows * 100.0, np.array([0.9, 0.8, 0.7])
    calling = RegionCalling.uncalibrated(0.5)
    called = call_regions(score_grid(rows, cols, scores, (4, 4)), calling, 0.01)
    cells = (rows, cols, x, y, 100.0)
    normal = called_regions_geojson(*cells, called, calling, slide_score=0.12, threshold=0.5)
    call = {"slide_prediction": "normal", "slide_score": 0.12, "threshold": 0.5}
    assert normal["properties"] == {**call, "region_calling": UNCALIBRATED} and len(normal["features"]) == 2
    for feature in normal["features"]:
        props = feature["properties"]
        assert props["slide_prediction"] == "normal" and props["slide_score"] == 0.12 and props["threshold"] == 0.5
        assert props["measurements"]["slide_score"] == 0.12 and props["classification"]["name"] == "Tumor"
    tumour = called_regions_geojson(*cells, called, calling, slide_score=0.5, threshold=0.5)
    assert {f["properties"]["slide_prediction"] for f in tumour["features"]} == {"tumor"}
    plain = called_regions_geojson(*cells, called, calling)  # no score given: no call
    assert "slide_prediction" not in plain["properties"]
    assert "slide_prediction" not in plain["features"][0]["properties"]
    # Written: the call is in the file even with no region at all.
    target = tmp_path / "r.geojson"
    high = RegionCalling.uncalibrated(0.95)
    assert write_called_regions_geojson(target, *cells, [], high, slide_score=0.3, threshold=0.95) == 0
    written = json.loads(target.read_text())
    call = {"slide_prediction": "normal", "slide_score": 0.3, "threshold": 0.95}
    assert written["properties"] == {**call, "region_calling": UNCALIBRATED} and written["features"] == []
