"""wsi_mamba.outputs: atomic writers, score grid, heatmap rendering / PNG, QuPath GeoJSON of scored tiles."""

from __future__ import annotations

import csv
import json
import math
import os
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


class Boom(RuntimeError):
    pass


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if TEMP_MARKER in p.name)


# ---- atomic writers ---------------------------------------------------------------------------------------
def test_atomic_path_renames_on_success(tmp_path: Path) -> None:
    target = tmp_path / "result.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name == f"result.bin{TEMP_MARKER}{os.getpid()}"
        tmp.write_bytes(b"done")
        assert not target.exists()  # nothing under the final name while writing
    assert target.read_bytes() == b"done"
    assert _leftovers(tmp_path) == []


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


def test_render_heatmap_exact_mapping() -> None:
    # Slide 1000 x 600 level-0 px, cells of 100: the thumbnail at 1/10 has 10 px per cell.
    thumb = _thumbnail(60, 100)
    grid = np.full((6, 10), np.nan, np.float32)
    grid[1, 2] = 0.95
    grid[4, 7] = 0.02
    out = render_heatmap(thumb, grid, (1000, 600), 100.0)
    assert out.shape == thumb.shape and out.dtype == np.uint8
    changed = (out != thumb).any(axis=2)
    covered = np.zeros((60, 100), bool)
    covered[10:20, 20:30] = True
    covered[40:50, 70:80] = True
    assert np.array_equal(out[~covered], thumb[~covered])  # no tile: the thumbnail exactly
    assert changed[covered].mean() > 0.9
    # Each cell is one flat colour blended in: compare against the colormap directly.
    lut = colormap_lut("inferno")
    expected_high = np.round(0.55 * thumb[10:20, 20:30] + 0.45 * lut[round(0.95 * 255)].astype(np.float32))
    assert np.abs(out[10:20, 20:30].astype(int) - expected_high).max() <= 1
    # alpha = 1: colours only; high and low scores far apart.
    solid = render_heatmap(thumb, grid, (1000, 600), 100.0, alpha=1.0)
    high, low = solid[15, 25].astype(int), solid[45, 75].astype(int)
    assert np.abs(high - low).sum() > 200
    assert np.array_equal(solid[45, 75], lut[round(0.02 * 255)])
    assert np.array_equal(render_heatmap(thumb, grid, (1000, 600), 100.0, alpha=0.0), thumb)


def test_render_heatmap_grid_larger_than_slide() -> None:
    # Slide 950 x 530 with cells of 100: grid (6, 10) covers 1000 x 600, past the slide's right/bottom edges.
    w0, h0, size0 = 950, 530, 100.0
    shape = (math.ceil(h0 / size0), math.ceil(w0 / size0))
    thumb = _thumbnail(53, 95)  # 1/10 of the slide
    grid = np.full(shape, np.nan, np.float32)
    grid[-1, -1] = 1.0  # the partial corner cell: level-0 [900, 950) x [500, 530)
    grid[0, 0] = 1.0
    out = render_heatmap(thumb, grid, (w0, h0), size0, alpha=1.0)
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
    thumb = _thumbnail(120, 200)
    grid = score_grid([0, 1, 2], [0, 1, 3], [0.0, 0.5, 1.0], (3, 4))
    target = tmp_path / "heatmap.png"
    write_heatmap_png(target, thumb, grid, (2000, 1200), 500.0, title="slide 1: 0.93")
    with Image.open(target) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        width, height = im.size
        pixels = np.asarray(im)
    assert width >= 200 and height > 120
    assert _leftovers(tmp_path) == []
    # Without a title the heatmap sits on top; without a legend either, the PNG is the heatmap itself.
    plain = tmp_path / "plain.png"
    write_heatmap_png(plain, thumb, grid, (2000, 1200), 500.0, legend=False)
    with Image.open(plain) as im:
        assert np.array_equal(np.asarray(im), render_heatmap(thumb, grid, (2000, 1200), 500.0))
    bar_only = tmp_path / "legend.png"
    write_heatmap_png(bar_only, thumb, grid, (2000, 1200), 500.0)
    with Image.open(bar_only) as im:
        legend = np.asarray(im)
    assert legend.shape[0] > 120 and legend.shape[1] == 200
    assert np.array_equal(legend[:120], render_heatmap(thumb, grid, (2000, 1200), 500.0))
    # The bar runs from the map's 0 colour to its 1 colour.
    lut = colormap_lut("inferno")
    bar_row = legend[120 + 6 + 6]
    assert np.abs(bar_row[6].astype(int) - lut[0]).max() <= 2
    assert np.abs(bar_row[200 - 7].astype(int) - lut[255]).max() <= 2
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
