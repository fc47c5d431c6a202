"""wsi_mamba.outputs: atomic writers, score grid, heatmap rendering / PNG, QuPath GeoJSON of scored tiles."""

from __future__ import annotations

import csv
import json
import math
import os
import stat
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsi_mamba.outputs import (
    TEMP_MARKER,
    atomic_path,
    colormap_lut,
    json_safe,
    render_heatmap,
    score_grid,
    tiles_geojson,
    write_csv_atomic,
    write_heatmap_png,
    write_json_atomic,
    write_text_atomic,
    write_tiles_geojson,
)
from wsi_mamba.outputs.atomic import FILE_MODE
from wsi_mamba.outputs.geojson import TUMOR_COLOR
from wsi_mamba.outputs.heatmap import DEFAULT_ALPHA, DEFAULT_CMAP, TRANSPARENT_BELOW, overlay_opacity
from wsi_mamba.outputs.heatmap_colours import greyscale_backdrop
from wsi_mamba.outputs.region_calling import (
    UNCALIBRATED,
    RegionCalling,
    call_regions,
    called_regions_geojson,
    write_called_regions_geojson,
)


class Boom(RuntimeError):
    pass


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if TEMP_MARKER in p.name)


# ---- atomic writers ---------------------------------------------------------------------------------------
def test_atomic_path_renames_on_success(tmp_path: Path) -> None:
    target = tmp_path / "result.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent.parent == tmp_path and tmp.name == "result.bin"  # in a private folder beside the target
        assert tmp.parent.name.startswith(f"result.bin{TEMP_MARKER}{os.getpid()}-")
        tmp.write_bytes(b"done")
        assert not target.exists()  # nothing under the final name while writing
    assert target.read_bytes() == b"done"
    assert _leftovers(tmp_path) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_atomic_path_gives_results_the_usual_mode(tmp_path: Path) -> None:
    """A writer that creates its file private (safetensors, mkstemp: 0600) still leaves a result file with
    the mode ``open()`` gives, so results are readable like any other output."""
    target = tmp_path / "model.safetensors"
    with atomic_path(target) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"x")
        os.close(fd)
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == FILE_MODE


@pytest.mark.skipif(os.name != "posix", reason="umask modes are POSIX")
def test_result_modes_follow_the_umask_and_leave_it_unchanged() -> None:
    """Under umask 027 results are 0640 and folders 0750, and importing the writers leaves the umask as it was."""
    import subprocess
    import sys

    code = (
        "import os; os.umask(0o027)\n"
        "from wsi_mamba.outputs.atomic import DIR_MODE, FILE_MODE\n"
        "print(oct(FILE_MODE), oct(DIR_MODE), oct(os.umask(0o022)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0o640", "0o750", "0o27"]


def test_atomic_path_error_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    with pytest.raises(Boom), atomic_path(target) as tmp:
        tmp.write_text('{"half": ')
        raise Boom
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_error_keeps_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "result.txt"
    target.write_text("old complete result")
    with pytest.raises(Boom), atomic_path(target) as tmp:
        tmp.write_text("new, half")
        assert target.read_text() == "old complete result"
        raise Boom
    assert target.read_text() == "old complete result"
    assert _leftovers(tmp_path) == []
    write_text_atomic(target, "new complete result")
    assert target.read_text() == "new complete result"


def test_atomic_path_nothing_written_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError), atomic_path(tmp_path / "x.txt"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_write_text_atomic_keeps_line_endings(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    write_text_atomic(target, "α\nβ\r\n")
    assert target.read_bytes() == "α\nβ\r\n".encode()


def test_write_json_atomic(tmp_path: Path) -> None:
    target = tmp_path / "score.json"
    obj = {"slide": "a.svs", "score": np.float32(0.25), "n": np.int64(3), "xy": np.arange(2), "path": tmp_path}
    write_json_atomic(target, obj)
    text = target.read_text()
    assert text.endswith("}\n") and '\n  "slide": "a.svs"' in text  # indent 2, trailing newline
    assert json.loads(text) == {"slide": "a.svs", "score": 0.25, "n": 3, "xy": [0, 1], "path": str(tmp_path)}


def test_write_json_atomic_refuses_nan_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "score.json"
    target.write_text('{"score": 0.5}\n')
    with pytest.raises(ValueError):
        write_json_atomic(target, {"score": float("nan")})
    with pytest.raises(ValueError):
        write_json_atomic(target, {"score": np.float32("inf")})
    assert json.loads(target.read_text()) == {"score": 0.5}
    assert _leftovers(tmp_path) == []
    write_json_atomic(target, json_safe({"score": float("nan"), "all": np.array([1.0, np.nan]), "t": (np.inf, 1)}))
    assert json.loads(target.read_text()) == {"score": None, "all": [1.0, None], "t": [None, 1]}


def test_write_csv_atomic(tmp_path: Path) -> None:
    target = tmp_path / "tiles.csv"
    write_csv_atomic(target, ["x", "y", "score"], [(0, 0, 0.5), [512, 0, 0.125]])
    assert target.read_text() == "x,y,score\n0,0,0.5\n512,0,0.125\n"
    with open(target, newline="") as f:
        assert list(csv.reader(f)) == [["x", "y", "score"], ["0", "0", "0.5"], ["512", "0", "0.125"]]


def test_write_csv_atomic_failing_rows_leave_nothing(tmp_path: Path) -> None:
    target = tmp_path / "tiles.csv"

    def rows():
        yield (1, 2)
        raise Boom

    with pytest.raises(Boom):
        write_csv_atomic(target, ["a", "b"], rows())
    with pytest.raises(ValueError, match="row has 3 values"):
        write_csv_atomic(target, ["a", "b"], [(1, 2, 3)])
    assert list(tmp_path.iterdir()) == []


# ---- score grid and heatmap ---------------------------------------------------------------------------------
def test_score_grid_placement() -> None:
    grid = score_grid(np.array([0, 1, 2]), np.array([3, 0, 1]), [0.1, 0.5, 0.9], (3, 4))
    assert grid.shape == (3, 4) and grid.dtype == np.float32
    assert grid[0, 3] == np.float32(0.1) and grid[1, 0] == np.float32(0.5) and grid[2, 1] == np.float32(0.9)
    assert np.isnan(grid).sum() == 12 - 3
    empty = score_grid([], [], [], (2, 2))
    assert np.isnan(empty).all()
    with pytest.raises(ValueError, match="outside"):
        score_grid([3], [0], [0.5], (3, 4))
    with pytest.raises(ValueError, match="length"):
        score_grid([0, 1], [0], [0.5], (3, 4))


def _thumbnail(h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_overlay_opacity_ramp() -> None:
    scores = np.array([np.nan, 0.0, 0.1, 0.2, 0.6, 1.0, 1.5], np.float32)
    opacity = overlay_opacity(scores, alpha=0.8, transparent_below=0.2)
    assert opacity == pytest.approx([0.0, 0.0, 0.0, 0.0, 0.4, 0.8, 0.8])
    assert np.all(np.diff(overlay_opacity(np.linspace(0, 1, 101))) >= 0)  # never less opaque for a higher score
    with pytest.raises(ValueError, match="transparent_below"):
        overlay_opacity(scores, transparent_below=1.0)


def test_render_heatmap_exact_mapping() -> None:
    # Slide 1000 x 600 level-0 px, cells of 100: the thumbnail at 1/10 has 10 px per cell.
    thumb = _thumbnail(60, 100)
    grid = np.full((6, 10), np.nan, np.float32)
    grid[1, 2] = 0.95
    grid[4, 7] = 0.6
    grid[0, 0] = 0.02  # below TRANSPARENT_BELOW: not drawn at all
    out = render_heatmap(thumb, grid, (1000, 600), 100.0, greyscale=False)
    assert out.shape == thumb.shape and out.dtype == np.uint8
    grey = render_heatmap(thumb, grid, (1000, 600), 100.0)  # the default: over the greyscale thumbnail
    assert np.array_equal(grey[0, 0:10], greyscale_backdrop(thumb)[0, 0:10])
    changed = (out != thumb).any(axis=2)
    covered = np.zeros((60, 100), bool)
    covered[10:20, 20:30] = True
    covered[40:50, 70:80] = True
    assert np.array_equal(out[~covered], thumb[~covered])  # no tile, or a low score: the thumbnail exactly
    assert changed[covered].mean() > 0.9
    # Each cell is one flat colour blended in with its score's opacity: compare against the colormap directly.
    lut = colormap_lut(DEFAULT_CMAP)
    for (r, c), score in (((1, 2), 0.95), ((4, 7), 0.6)):
        a = DEFAULT_ALPHA * (score - TRANSPARENT_BELOW) / (1 - TRANSPARENT_BELOW)
        cell = thumb[10 * r : 10 * r + 10, 10 * c : 10 * c + 10].astype(np.float32)
        expected = np.round((1 - a) * cell + a * lut[round(score * 255)].astype(np.float32))
        assert np.abs(out[10 * r : 10 * r + 10, 10 * c : 10 * c + 10].astype(int) - expected).max() <= 1
    # alpha = 1, nothing transparent: score 1 is the colour alone, score 0.5 half of it; another colormap.
    grid[1, 2], grid[4, 7] = 1.0, 0.5
    solid = render_heatmap(
        thumb, grid, (1000, 600), 100.0, alpha=1.0, transparent_below=0.0, cmap="inferno", greyscale=False
    )
    inferno = colormap_lut("inferno")
    assert (solid[10:20, 20:30] == inferno[255]).all()
    half = np.round(0.5 * thumb[40:50, 70:80] + 0.5 * inferno[round(0.5 * 255)].astype(np.float32))
    assert np.abs(solid[40:50, 70:80].astype(int) - half).max() <= 1
    assert np.array_equal(render_heatmap(thumb, grid, (1000, 600), 100.0, alpha=0.0, greyscale=False), thumb)


def test_heatmap_png_low_scores_leave_the_tissue_visible(tmp_path: Path) -> None:
    # Pink "tissue" with some texture; one cell scored low (0.1), one at 0.3 (barely tinted), one high (0.95).
    rng = np.random.default_rng(1)
    thumb = np.clip(np.array([230, 150, 180]) + rng.normal(0, 12, (60, 300, 3)), 0, 255).astype(np.uint8)
    grid = np.full((6, 30), np.nan, np.float32)
    grid[1, 1], grid[4, 8], grid[3, 5] = 0.1, 0.3, 0.95
    target = tmp_path / "heatmap.png"
    write_heatmap_png(target, thumb, grid, (3000, 600), 100.0)  # legend below: the heatmap is the top 60 rows
    with Image.open(target) as im:
        drawn = np.asarray(im)[:60].astype(int)
    backdrop = greyscale_backdrop(thumb).astype(int)

    def difference(r: int, c: int) -> float:
        cell = np.s_[10 * r : 10 * r + 10, 10 * c : 10 * c + 10]
        return float(np.abs(drawn[cell] - backdrop[cell]).mean())

    assert difference(1, 1) < 3  # low score: the tissue as it is
    assert difference(3, 5) > 30  # high score: clearly coloured
    assert difference(1, 1) <= difference(4, 8) < difference(3, 5)


def test_render_heatmap_grid_larger_than_slide() -> None:
    # Slide 950 x 530 with cells of 100: grid (6, 10) covers 1000 x 600, past the slide's right/bottom edges.
    w0, h0, size0 = 950, 530, 100.0
    shape = (math.ceil(h0 / size0), math.ceil(w0 / size0))
    thumb = _thumbnail(53, 95)  # 1/10 of the slide
    grid = np.full(shape, np.nan, np.float32)
    grid[-1, -1] = 1.0  # the partial corner cell: level-0 [900, 950) x [500, 530)
    grid[0, 0] = 1.0
    out = render_heatmap(thumb, grid, (w0, h0), size0, alpha=1.0, greyscale=False)
    assert out.shape == thumb.shape
    covered = (out != thumb).any(axis=2)
    expected = np.zeros((53, 95), bool)
    expected[50:53, 90:95] = True
    expected[0:10, 0:10] = True
    # Pixels of both cells take the colour (one may by chance equal the thumbnail), none elsewhere.
    assert not covered[~expected].any()
    assert covered[expected].mean() > 0.9
    # A PIL thumbnail of another size works too and every row/col maps to a valid cell.
    pil = Image.fromarray(_thumbnail(31, 57))
    assert render_heatmap(pil, grid, (w0, h0), size0).shape == (31, 57, 3)


def test_render_heatmap_rejects_bad_input() -> None:
    thumb = _thumbnail(10, 10)
    with pytest.raises(ValueError, match="thumbnail"):
        render_heatmap(thumb[:, :, 0], np.zeros((2, 2)), (100, 100), 50.0)
    with pytest.raises(ValueError, match="alpha"):
        render_heatmap(thumb, np.zeros((2, 2)), (100, 100), 50.0, alpha=2.0)
    with pytest.raises(ValueError, match="colormap"):
        render_heatmap(thumb, np.zeros((2, 2)), (100, 100), 50.0, cmap="no-such-map")


def test_write_heatmap_png(tmp_path: Path) -> None:
    thumb = _thumbnail(120, 400)
    grid = score_grid([0, 1, 2], [0, 1, 3], [0.0, 0.5, 1.0], (3, 8))
    target = tmp_path / "heatmap.png"
    write_heatmap_png(target, thumb, grid, (4000, 1200), 500.0, title="slide 1: 0.93")
    with Image.open(target) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        width, height = im.size
        pixels = np.asarray(im)
    assert width >= 400 and height > 120
    assert _leftovers(tmp_path) == []
    # Without a title the heatmap sits on top; without a legend either, the PNG is the heatmap itself.
    plain = tmp_path / "plain.png"
    write_heatmap_png(plain, thumb, grid, (4000, 1200), 500.0, legend=False)
    with Image.open(plain) as im:
        assert np.array_equal(np.asarray(im), render_heatmap(thumb, grid, (4000, 1200), 500.0))
    bar_only = tmp_path / "legend.png"
    write_heatmap_png(bar_only, thumb, grid, (4000, 1200), 500.0)
    with Image.open(bar_only) as im:
        legend = np.asarray(im)
    assert legend.shape[0] > 120 and legend.shape[1] == 400
    assert np.array_equal(legend[:120], render_heatmap(thumb, grid, (4000, 1200), 500.0))
    # The bar: transparent (the grey and white checkerboard) at 0, the map's colour for 1 blended as drawn at 1.
    lut = colormap_lut(DEFAULT_CMAP).astype(np.float32)
    bar_row = legend[120 + 6 + 6]
    assert set(map(tuple, bar_row[6:30].tolist())) == {(255, 255, 255), (204, 204, 204)}
    top_colours = [np.round((1 - DEFAULT_ALPHA) * backdrop + DEFAULT_ALPHA * lut[255]) for backdrop in (255.0, 204.0)]
    assert min(np.abs(bar_row[400 - 7].astype(int) - colour).max() for colour in top_colours) <= 1
    assert pixels.shape[0] > legend.shape[0]  # the title band adds height


def test_write_heatmap_png_narrow_thumbnail(tmp_path: Path) -> None:
    target = tmp_path / "tiny.png"
    write_heatmap_png(target, _thumbnail(8, 12), np.full((1, 1), 0.7, np.float32), (120, 80), 128.0)
    with Image.open(target) as im:
        assert im.size[0] > 12 and im.size[1] > 8  # padded to fit the legend's text


# ---- GeoJSON ------------------------------------------------------------------------------------------------
def test_tiles_geojson_structure() -> None:
    x, y, size0 = np.array([0, 512, 1024]), np.array([0, 0, 512]), 512.0
    scores = np.array([0.2, 0.5, 0.97], np.float32)
    collection = json.loads(json.dumps(tiles_geojson(x, y, size0, scores), allow_nan=False))
    assert collection["type"] == "FeatureCollection"
    features = collection["features"]
    assert len(features) == 3
    for feature, xi, yi, score in zip(features, x, y, scores, strict=True):
        assert feature["type"] == "Feature"
        geometry = feature["geometry"]
        assert geometry["type"] == "Polygon" and len(geometry["coordinates"]) == 1
        ring = geometry["coordinates"][0]
        assert ring[0] == ring[-1] and len(ring) == 5
        assert {tuple(p) for p in ring} == {(xi, yi), (xi + size0, yi), (xi + size0, yi + size0), (xi, yi + size0)}
        props = feature["properties"]
        assert props["objectType"] == "tile" and props["isLocked"] is False
        assert props["measurements"] == {"tumor_probability": pytest.approx(float(score))}
        cls = props["classification"]
        assert cls["name"] == ("Tumor" if score >= 0.5 else "Normal")
        assert len(cls["color"]) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in cls["color"])
    assert features[1]["properties"]["classification"]["name"] == "Tumor"  # 0.5 is Tumor
    assert features[2]["properties"]["name"] == "tile_1024_512"


def test_tiles_geojson_threshold_and_nan() -> None:
    x, y = np.arange(4) * 100, np.zeros(4)
    scores = [0.1, 0.6, float("nan"), 0.9]
    kept = tiles_geojson(x, y, 100.0, scores, threshold=0.5, name_prefix="s1")["features"]
    assert [f["properties"]["measurements"]["tumor_probability"] for f in kept] == pytest.approx([0.6, 0.9])
    assert [f["properties"]["name"] for f in kept] == ["s1_100_0", "s1_300_0"]
    assert len(tiles_geojson(x, y, 100.0, scores)["features"]) == 3  # the NaN tile is left out
    assert tiles_geojson([], [], 100.0, [])["features"] == []
    with pytest.raises(ValueError, match="length"):
        tiles_geojson([0], [0, 1], 100.0, [0.5])


def test_write_tiles_geojson(tmp_path: Path) -> None:
    target = tmp_path / "tiles.geojson"
    x, y, scores = np.array([0, 256]), np.array([256, 256]), np.array([0.3, 0.8])
    write_tiles_geojson(target, x, y, 256.0, scores)
    assert json.loads(target.read_text()) == json.loads(json.dumps(tiles_geojson(x, y, 256.0, scores)))
    assert target.read_text().endswith("]}\n")
    write_tiles_geojson(target, x, y, 256.0, scores, threshold=0.99)
    assert json.loads(target.read_text()) == {"type": "FeatureCollection", "features": []}
    assert _leftovers(tmp_path) == []


# ---- tumour regions -----------------------------------------------------------------------------------------
def _tiles(mask: list[str], size0: float = 100.0, high: float = 0.9, low: float = 0.1):
    """A tile on every cell of the picture ``mask`` ('#' scored ``high``, '.' ``low``), as a TileGrid lays
    them out: rows, cols, x, y (level-0 top-left, rounded like make_tile_grid) and scores."""
    cells = np.array([[ch == "#" for ch in line] for line in mask])
    rows, cols = np.nonzero(np.ones_like(cells))
    x, y = np.round(cols * size0), np.round(rows * size0)
    return rows, cols, x, y, np.where(cells[rows, cols], high, low)


def _shoelace(ring: list[list[float]]) -> float:
    return 0.5 * sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in pairwise(ring))


def _uncalibrated(rows, cols, scores, threshold: float = 0.5, connectivity: int = 8):
    """What predict calls with a model without calibration: the connected groups of tiles ≥ ``threshold``."""
    calling = replace(RegionCalling.uncalibrated(threshold), connectivity=connectivity)
    grid = score_grid(rows, cols, scores, (int(np.max(rows)) + 1, int(np.max(cols)) + 1))
    return call_regions(grid, calling, 0.01), calling


def _regions_geojson(rows, cols, x, y, size0: float, scores, threshold: float = 0.5, connectivity: int = 8) -> dict:
    """The regions GeoJSON (the calibrated writer) of :func:`_uncalibrated`'s regions."""
    called, calling = _uncalibrated(rows, cols, scores, threshold, connectivity)
    return called_regions_geojson(rows, cols, x, y, size0, called, calling, threshold=threshold)


def _polygons(feature: dict) -> list[list[list[list[float]]]]:
    geometry = feature["geometry"]
    return [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]


def test_regions_l_shape_is_one_polygon() -> None:
    rows, cols, x, y, scores = _tiles(["....", ".#..", ".#..", ".##."], size0=256.0)
    scores[(rows == 3) & (cols == 2)] = 0.7
    collection = json.loads(json.dumps(_regions_geojson(rows, cols, x, y, 256.0, scores), allow_nan=False))
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == 1
    feature = collection["features"][0]
    assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Polygon"
    (ring,) = feature["geometry"]["coordinates"]  # no hole
    assert ring[0] == ring[-1] and len(ring) == 6 + 1  # an L has six corners
    assert {tuple(p) for p in ring} == {(256, 256), (512, 256), (512, 768), (768, 768), (768, 1024), (256, 1024)}
    assert _shoelace(ring) == pytest.approx(4 * 256.0**2)  # the tiles' area, outer ring counter-clockwise
    props = feature["properties"]
    assert props["objectType"] == "annotation" and props["isLocked"] is False and props["name"] == "region_1"
    assert props["classification"] == {"name": "Tumor", "color": list(TUMOR_COLOR)}
    stats = {"max_score": 0.9, "mean_score": (3 * 0.9 + 0.7) / 4, "tiles": 4, "area_px": 4 * 256.0**2}
    assert {k: props[k] for k in stats} == pytest.approx(stats)
    assert {k: props["measurements"][k] for k in stats} == pytest.approx(stats)
    assert props["called_by"] == "tile score >= 0.5 over >= 1 tile" and props["rank"] == 1


def test_regions_separate_groups_and_connectivity() -> None:
    rows, cols, x, y, scores = _tiles(["##...", "##...", ".....", "...#.", "....#"])
    scores[(rows == 4) & (cols == 4)] = 0.95
    features = _regions_geojson(rows, cols, x, y, 100.0, scores)["features"]
    assert len(features) == 2
    # Highest score first; the diagonal pair (8-connected) is one region of two squares touching at a corner.
    assert [f["properties"]["max_score"] for f in features] == pytest.approx([0.95, 0.9])
    assert [f["properties"]["name"] for f in features] == ["region_1", "region_2"]
    diagonal, square = features
    assert diagonal["geometry"]["type"] == "MultiPolygon" and len(diagonal["geometry"]["coordinates"]) == 2
    assert sum(_shoelace(p[0]) for p in _polygons(diagonal)) == pytest.approx(2 * 100.0**2)
    assert square["geometry"]["type"] == "Polygon" and len(square["geometry"]["coordinates"][0]) == 5
    assert square["properties"]["area_px"] == pytest.approx(4 * 100.0**2)
    four = _regions_geojson(rows, cols, x, y, 100.0, scores, connectivity=4)["features"]
    assert len(four) == 3 and all(f["geometry"]["type"] == "Polygon" for f in four)
    # The threshold decides which tiles count.
    assert len(_regions_geojson(rows, cols, x, y, 100.0, scores, threshold=0.92)["features"]) == 1
    with pytest.raises(ValueError, match="connectivity"):
        _regions_geojson(rows, cols, x, y, 100.0, scores, connectivity=6)


def test_regions_ring_has_a_hole() -> None:
    rows, cols, x, y, scores = _tiles([".....", ".###.", ".#.#.", ".###.", "....."])
    (feature,) = _regions_geojson(rows, cols, x, y, 100.0, scores)["features"]
    assert feature["geometry"]["type"] == "Polygon"
    outer, hole = feature["geometry"]["coordinates"]
    assert {tuple(p) for p in outer} == {(100, 100), (400, 100), (400, 400), (100, 400)}
    assert {tuple(p) for p in hole} == {(200, 200), (300, 200), (300, 300), (200, 300)}
    assert _shoelace(outer) == pytest.approx(9 * 100.0**2) and _shoelace(hole) == pytest.approx(-(100.0**2))
    assert feature["properties"]["tiles"] == 8
    assert feature["properties"]["area_px"] == pytest.approx(_shoelace(outer) + _shoelace(hole))


def test_regions_pinched_hole_and_fractional_tiles() -> None:
    # The hole at (1, 1) meets the outside only at a corner: it stays a hole touching the outer ring there.
    size0 = 263.37  # TileGrid sizes need not be whole pixels; x and y are rounded
    rows, cols, x, y, scores = _tiles(["###", "#.#", "##."], size0=size0)
    (feature,) = _regions_geojson(rows, cols, x, y, size0, scores)["features"]
    outer, hole = feature["geometry"]["coordinates"]
    for ring in (outer, hole):
        assert ring[0] == ring[-1] and len({tuple(p) for p in ring[:-1]}) == len(ring) - 1  # simple rings
    assert _shoelace(outer) + _shoelace(hole) == pytest.approx(7 * size0**2, rel=1e-5)
    assert feature["properties"]["area_px"] == pytest.approx(7 * size0**2)


def test_regions_nothing_above_threshold() -> None:
    rows, cols, x, y, scores = _tiles(["##", "##"], high=0.4)
    empty = {"type": "FeatureCollection", "properties": {"region_calling": UNCALIBRATED}, "features": []}
    assert _regions_geojson(rows, cols, x, y, 100.0, scores) == empty
    scores[0] = np.nan  # a NaN score is never a region
    (three,) = _regions_geojson(rows, cols, x, y, 100.0, scores, threshold=0.0)["features"]
    assert three["properties"]["tiles"] == 3


def test_write_called_regions_geojson(tmp_path: Path) -> None:
    target = tmp_path / "slide.regions.geojson"
    rows, cols, x, y, scores = _tiles(["#..#", "#...", "..##"])
    called, calling = _uncalibrated(rows, cols, scores)
    assert write_called_regions_geojson(target, rows, cols, x, y, 100.0, called, calling) == 3
    written = json.loads(target.read_text())
    assert written == json.loads(json.dumps(called_regions_geojson(rows, cols, x, y, 100.0, called, calling)))
    assert target.read_text().endswith("]}\n") and _leftovers(tmp_path) == []
    assert write_called_regions_geojson(target, rows, cols, x, y, 100.0, [], calling) == 0
    assert json.loads(target.read_text())["features"] == []
