"""Test-time views: tile features averaged over dihedral views, recorded in the feature mode, taken by predict."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from slide_fixtures import synthetic_slide

from wsi_mamba.data.augment import dihedral
from wsi_mamba.features.modes import TileMode, mode_from_attrs, requested_mode, resolve
from wsi_mamba.features.options import ReadOptions
from wsi_mamba.features.store import check_same_encoder, read_attrs, store_path
from wsi_mamba.models.encoder import TileEncoder, load_encoder
from wsi_mamba.models.encoders.base import dihedral_views
from wsi_mamba.workflows.bundle import check_manifest
from wsi_mamba.workflows.extract import extract_slides
from wsi_mamba.workflows.reports.score_patches import classify

TILE_PX = 64
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def encoder() -> TileEncoder:
    torch.manual_seed(0)
    enc = load_encoder("vmamba_pico", seed=0, tile_px=TILE_PX, mpp=1.0, num_classes=1)
    with torch.no_grad():  # a head that is not near zero, so logits differ between views
        enc.model.classifier.head.weight.normal_(0, 1)
    return enc


def tiles(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, TILE_PX, TILE_PX, 3), dtype=np.uint8)


def test_views_are_the_rotations_then_their_mirror_images() -> None:
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    eight = dihedral_views(x, 8)
    as_nhwc = x.permute(0, 2, 3, 1)
    for k, view in enumerate(eight):  # the augmentation's dihedral(k) on (n, h, w, c) patches
        expected = dihedral(as_nhwc, torch.full((2,), k)).permute(0, 3, 1, 2)
        torch.testing.assert_close(view, expected)
    assert len({tuple(v.flatten().tolist()) for v in eight}) == 8
    assert [v.data_ptr() for v in dihedral_views(x, 1)] == [x.data_ptr()]
    assert len(dihedral_views(x, 4)) == 4


@pytest.mark.parametrize("views", [4, 8])
def test_view_features_are_the_mean_of_the_views_and_rotation_invariant(encoder: TileEncoder, views: int) -> None:
    batch = tiles(3, seed=views)
    averaged = encoder.encode(batch, views)
    per_view = [
        encoder.encode(np.ascontiguousarray(dihedral(torch.from_numpy(batch), torch.full((3,), k)).numpy()))
        for k in range(views)
    ]
    np.testing.assert_allclose(averaged, np.mean(per_view, axis=0), rtol=1e-4, atol=1e-5)
    rotated = np.ascontiguousarray(np.rot90(batch, 1, axes=(1, 2)))
    np.testing.assert_allclose(encoder.encode(rotated, views), averaged, rtol=1e-4, atol=1e-5)
    assert not np.allclose(encoder.encode(rotated), encoder.encode(batch), rtol=1e-4, atol=1e-5)


def test_patch_scores_are_the_sigmoid_of_the_mean_logit(encoder: TileEncoder) -> None:
    batch = tiles(4, seed=1)
    head = encoder.model.classifier.head
    with torch.no_grad():
        logits = head(torch.from_numpy(encoder.encode(batch, 4))).squeeze(1)
    np.testing.assert_allclose(classify(encoder, batch, 4), torch.sigmoid(logits).numpy(), rtol=1e-4, atol=1e-6)
    single = classify(encoder, batch, 1)
    assert not np.allclose(single, classify(encoder, batch, 4), atol=1e-4)
    with pytest.raises(ValueError, match="views must be one of 1, 4, 8"):
        classify(encoder, batch, 2)


def test_stores_and_models_record_the_views(encoder: TileEncoder, tmp_path_factory: pytest.TempPathFactory) -> None:
    slide = synthetic_slide(tmp_path_factory, "tiff")
    out = tmp_path_factory.mktemp("views")
    read = ReadOptions(batch_size=16, read_threads=1)
    assert extract_slides([slide], out, encoder, TileMode(4), read, progress=False) == {"slide": "done"}
    attrs = read_attrs(store_path(out, "slide"))
    assert attrs["views"] == 4 and mode_from_attrs(attrs) == TileMode(4)
    assert mode_from_attrs(attrs).describe() == "tile mode (4 views)"
    ident = (attrs["encoder"], attrs["encoder_hash"])
    check_same_encoder({"slide": attrs}, ident, expected_mode={"mode": "tile", "views": 4})
    with pytest.raises(ValueError, match=r"tile mode \(4 views\), but the model uses tile mode: extract them again"):
        check_same_encoder({"slide": attrs}, ident, expected_mode={"mode": "tile"})
    with warnings.catch_warnings():  # the same folder with one view: the 4-view store is not taken as done
        warnings.simplefilter("ignore")
        again = extract_slides([slide], out, encoder, TileMode(), read, progress=False)
    assert again["slide"].startswith("failed:") and "4 views" in again["slide"]
    with pytest.raises(ValueError, match="--views 4 is for tile mode"):
        requested_mode(2 * TILE_PX, None, 4)  # the CLI's --views 4 --region-px: refused before any slide


def test_predict_takes_the_model_views_and_refuses_others() -> None:
    model_mode = {"mode": "tile", "views": 4}
    assert resolve(None, model_mode, "m") == TileMode(4)
    assert resolve(TileMode(4), model_mode, "m") == TileMode(4)
    assert resolve(None, {"mode": "tile"}, "m") == TileMode(1)
    with pytest.raises(ValueError, match=r"trained on features of tile mode \(4 views\), not of 1 view"):
        resolve(TileMode(1), model_mode, "m")
    with pytest.raises(ValueError, match="not of 4 view"):
        resolve(TileMode(4), {"mode": "tile"}, "m")
    check_manifest({"feature_mode": model_mode})
    with pytest.raises(ValueError, match="views must be one of"):
        check_manifest({"feature_mode": {"mode": "tile", "views": 3}})
