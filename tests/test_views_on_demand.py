"""Views on demand: every tile in view 0, the other views only for tiles whose first-view tumour probability lies
in a band; recorded in the feature mode, the stores and predict's result, taken by resolve and score-patches."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import assert_one_error, run
from PIL import Image
from slide_fixtures import synthetic_slide

from wsi_mamba.data.patches import open_patches
from wsi_mamba.features.encode import encode_slide
from wsi_mamba.features.modes import TileMode, ViewsOnDemand, mode_from_attrs, requested_mode, resolve
from wsi_mamba.features.options import ReadOptions
from wsi_mamba.features.store import read_store, store_path
from wsi_mamba.features.tile_mode import encode_tiles
from wsi_mamba.models.encoder import TileEncoder, load_encoder
from wsi_mamba.models.encoders import save_encoder
from wsi_mamba.models.encoders.base import dihedral_views
from wsi_mamba.slide import open_slide
from wsi_mamba.slide.tiling import TileGrid, make_tile_grid
from wsi_mamba.slide.tissue import detect_tissue
from wsi_mamba.workflows.bundle import check_manifest
from wsi_mamba.workflows.extract import extract_slides
from wsi_mamba.workflows.predict import extra_view_tiles
from wsi_mamba.workflows.reports.score_patches import classify

TILE_PX = 64
TILES = 12  # the synthetic slide's whole grid at 64 px
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def encoder() -> TileEncoder:
    enc = load_encoder("vmamba_pico", seed=0, tile_px=TILE_PX, mpp=1.0, num_classes=1)
    with torch.no_grad():  # a head far from zero: first-view probabilities spread over (0, 1)
        enc.model.classifier.head.weight.normal_(0, 1, generator=torch.Generator().manual_seed(0))
    return enc


def first_tiles(grid: TileGrid, n: int) -> TileGrid:
    return replace(grid, rows=grid.rows[:n], cols=grid.cols[:n], x=grid.x[:n], y=grid.y[:n], tissue=grid.tissue[:n])


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_slide(tmp_path_factory, "tiff")


@pytest.fixture(scope="module")
def reference(slide_path: Path, encoder: TileEncoder) -> dict:
    """Features of the slide's first tiles in 1 and 4 views, and their first-view probabilities."""
    with open_slide(slide_path) as slide:
        grid = first_tiles(make_tile_grid(slide, TILE_PX, 1.0, 0.25, tissue=detect_tissue(slide)), TILES)
        one, four = (encode_tiles(slide, grid, encoder, views, READ).features for views in (1, 4))
    with torch.no_grad():
        p = torch.sigmoid(encoder.logits_from_features(torch.from_numpy(one))[:, 0]).numpy()
    assert len(grid) == TILES and len(np.unique(p)) == TILES
    return {"grid": grid, "one": one, "four": four, "p": np.sort(p), "p_by_tile": p}


READ = ReadOptions(batch_size=5, read_threads=2)  # three batches, the last one short


def on_demand(slide_path: Path, encoder: TileEncoder, grid: TileGrid, band: tuple[float, float]):
    with open_slide(slide_path) as slide:
        return encode_tiles(slide, grid, encoder, 4, READ, on_demand=band)


def between(p: np.ndarray, i: int) -> float:
    """A probability strictly between the i-th and (i+1)-th smallest first-view probabilities."""
    return float((p[i] + p[i + 1]) / 2)


def test_band_0_1_is_the_full_views(slide_path: Path, encoder: TileEncoder, reference: dict) -> None:
    found = on_demand(slide_path, encoder, reference["grid"], (0.0, 1.0))
    np.testing.assert_allclose(found.features, reference["four"], rtol=1e-4, atol=1e-5)
    assert found.views.dtype == np.uint8 and (found.views == 4).all()


def test_a_band_no_probability_falls_in_is_one_view(slide_path: Path, encoder: TileEncoder, reference: dict) -> None:
    gap = between(reference["p"], 5)
    found = on_demand(slide_path, encoder, reference["grid"], (gap, gap))
    np.testing.assert_array_equal(found.features, reference["one"])
    assert (found.views == 1).all()


def test_mixed_band_tile_by_tile(slide_path: Path, encoder: TileEncoder, reference: dict) -> None:
    p = reference["p"]
    lo, hi = between(p, 3), between(p, 9)  # six tiles inside
    found = on_demand(slide_path, encoder, reference["grid"], (lo, hi))
    inside = (reference["p_by_tile"] >= lo) & (reference["p_by_tile"] <= hi)
    assert inside.sum() == 6
    for i in range(TILES):
        expected = reference["four"][i] if inside[i] else reference["one"][i]
        np.testing.assert_allclose(found.features[i], expected, rtol=1e-4, atol=1e-5, err_msg=f"tile {i}")
        assert found.views[i] == (4 if inside[i] else 1)
    assert not np.allclose(reference["four"][inside], reference["one"][inside], atol=1e-3)  # the test can fail


def test_mode_records_validates_and_describes_the_band(encoder: TileEncoder) -> None:
    mode = TileMode(4, on_demand=(0.1, 0.9))
    assert mode.attrs() == {"mode": "tile", "views": 4, "views_on_demand": [0.1, 0.9]}
    assert mode_from_attrs(json.loads(json.dumps(mode.attrs()))) == mode
    assert mode.describe() == "tile mode (4 views on demand, first-view p in [0.1, 0.9])"
    assert mode != TileMode(4) and mode != TileMode(4, on_demand=(0.2, 0.9))
    assert "views_on_demand" not in TileMode(4).attrs()  # older stores and models read as before
    assert mode.check(encoder) is mode
    for band, message in [
        ((0.9, 0.1), "lo ≤ hi"),
        ((0.1, 1.5), r"in \[0, 1\]"),
        ((float("nan"), 0.5), "lo must be"),
        ((0.1,), "pair"),
    ]:
        with pytest.raises(ValueError, match=message):
            TileMode(4, on_demand=band)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs views 4 or 8"):
        TileMode(1, on_demand=(0.1, 0.9))
    two_classes = load_encoder("vmamba_pico", seed=0, tile_px=TILE_PX, mpp=1.0, num_classes=2)
    with pytest.raises(ValueError, match="one tumour logit; vmamba_pico-random0 has 2 outputs") as caught:
        mode.check(two_classes)
    assert "\n" not in str(caught.value)
    check_manifest({"feature_mode": mode.attrs()})
    with pytest.raises(ValueError, match="lo ≤ hi"):
        check_manifest({"feature_mode": {"mode": "tile", "views": 4, "views_on_demand": [0.9, 0.1]}})


def test_stores_keep_the_views_of_each_tile(
    slide_path: Path, encoder: TileEncoder, reference: dict, tmp_path: Path
) -> None:
    band = (between(reference["p"], 3), between(reference["p"], 9))
    mode = TileMode(4, on_demand=band)
    read = ReadOptions(batch_size=32, read_threads=1, min_tissue=0.9)  # few tiles: the store, not the encoder
    assert extract_slides([slide_path], tmp_path, encoder, mode, read, progress=False) == {"slide": "done"}
    stored = read_store(store_path(tmp_path, "slide"))
    assert mode_from_attrs(stored.attrs) == mode and stored.attrs["views_on_demand"] == list(band)
    with open_slide(slide_path) as slide:
        encoded = encode_slide(slide, encoder, mode, read)
    assert stored.views is not None and stored.views.dtype == np.uint8
    np.testing.assert_array_equal(stored.views, encoded.views)
    assert set(np.unique(stored.views)) <= {1, 4}
    assert extra_view_tiles(encoded) == {"extra_view_tiles": int((encoded.views == 4).sum())}
    plain = tmp_path / "plain"
    extract_slides([slide_path], plain, encoder, TileMode(1), read, progress=False)
    assert read_store(store_path(plain, "slide")).views is None  # recorded only on demand, as older stores
    with open_slide(slide_path) as slide:
        assert extra_view_tiles(encode_slide(slide, encoder, TileMode(1), read)) == {}


def test_resolve_takes_the_model_band_and_refuses_others() -> None:
    trained = {"mode": "tile", "views": 4, "views_on_demand": [0.1, 0.9]}
    mode = TileMode(4, on_demand=(0.1, 0.9))
    assert resolve(None, trained, "m") == mode
    assert resolve(TileMode(4, on_demand=(0.1, 0.9)), trained, "m") == mode
    assert resolve(ViewsOnDemand((0.1, 0.9)), trained, "m") == mode
    assert requested_mode(None, None, None, (0.1, 0.9)) == ViewsOnDemand((0.1, 0.9))
    assert requested_mode(None, None, 4, (0.1, 0.9)) == mode
    refusals = [
        (TileMode(4), trained, "not of tile mode \\(4 views\\): leave --views and --views-on-demand out"),
        (TileMode(4, on_demand=(0.2, 0.9)), trained, "not of tile mode \\(4 views on demand, first-view p in"),
        (ViewsOnDemand((0.2, 0.9)), trained, "not of views on demand .*leave --views-on-demand out"),
        (ViewsOnDemand((0.1, 0.9)), {"mode": "tile", "views": 4}, r"trained on features of tile mode \(4 views\)"),
        (mode, {"mode": "tile", "views": 4}, "not of tile mode \\(4 views on demand"),
    ]
    for requested, model_mode, message in refusals:
        with pytest.raises(ValueError, match=message):
            resolve(requested, model_mode, "m")
    with pytest.raises(ValueError, match="--views-on-demand is for tile mode"):
        requested_mode(128, None, None, (0.1, 0.9))
    with pytest.raises(ValueError, match="--views-on-demand needs --views 4 or 8"):
        requested_mode(None, None, 1, (0.1, 0.9))


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["predict", "x.tif", "--views-on-demand", "0.9,0.1"], ["--views-on-demand", "LO ≤ HI", "'0.9,0.1'"]),
        (["cohort", "m.csv", "--out", "o", "--views-on-demand", "0.5"], ["--views-on-demand", "LO,HI"]),
        (["extract", "x.tif", "--out", "o", "--views-on-demand", "a,1"], ["--views-on-demand", "'a,1'"]),
        (["score-patches", "p", "--views-on-demand", "0.1,2"], ["--views-on-demand", "in [0, 1]"]),
        (["extract", "x.tif", "--out", "o", "--views-on-demand", "0.1,0.9"], ["--views 4 or 8 in extract"]),
        (["predict", "x.tif", "--views", "1", "--views-on-demand", "0.1,0.9"], ["--views 4 or 8"]),
        (["predict", "x.tif", "--region-px", "256", "--views-on-demand", "0.1,0.9"], ["is for tile mode"]),
        (["score-patches", "p", "--views", "1", "--views-on-demand", "0.1,0.9"], ["--views 4 or 8"]),
    ],
)
def test_cli_refuses_bad_bands_in_one_line(
    argv: list, fragments: list, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run(argv, capsys)
    assert code == 2
    assert_one_error(err, *fragments)
    assert list(tmp_path.iterdir()) == []  # refused before any work


def test_score_patches_in_views_on_demand(
    encoder: TileEncoder, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(1)
    for label in ("0", "1"):
        (tmp_path / "patches" / label).mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 256, (TILE_PX, TILE_PX, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "patches" / label / f"{i}.png")
    source = open_patches([str(tmp_path / "patches")])
    patches = source.read(np.arange(len(source)))
    x = encoder.preprocess(patches)
    with torch.no_grad():  # the manual reference: view-0 logit, or the mean of the four views' logits
        logits = torch.stack([encoder.model(view)[:, 0] for view in dihedral_views(x, 4)])
    first, mean = torch.sigmoid(logits[0]).numpy(), torch.sigmoid(logits.mean(0)).numpy()
    p = np.sort(first)
    band = (between(p, 1), between(p, 5))
    inside = (first >= band[0]) & (first <= band[1])
    expected = np.where(inside, mean, first)
    assert 0 < inside.sum() < len(first) and not np.allclose(mean[inside], first[inside], atol=1e-4)
    np.testing.assert_allclose(classify(encoder, patches, 4, band), expected, rtol=1e-4, atol=1e-6)

    checkpoint = save_encoder(encoder, tmp_path / "enc.safetensors")
    argv = ["score-patches", tmp_path / "patches", "--model", checkpoint, "--views", "4", "--json"]
    code, out, err = run([*argv, "--views-on-demand", f"{band[0]!r},{band[1]!r}"], capsys)
    assert code == 0, err
    scores = np.array([row["score"] for row in json.loads(out)])
    np.testing.assert_allclose(scores, expected, atol=2e-6)  # the JSON rounds to 6 decimals
