"""Stain normalisation (wsi_mamba.data.stain_norm): Macenko / Reinhard fitted once per slide, applied per tile,
recorded in the feature mode and taken from the model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from wsi_mamba.data.stain import RGB_FROM_HED, from_optical_density, hed_scale_shift
from wsi_mamba.data.stain_norm import (
    StainEstimationError,
    StainNorm,
    builtin_target,
    fit_stain,
    target_from_image,
)
from wsi_mamba.features.modes import NO_STAIN_NORM, RegionMode, TileMode, mode_from_attrs, resolve, with_stain

METHODS = ("macenko", "reinhard")


def mixed_image(seed: int = 0, size: int = 64) -> np.ndarray:
    """uint8 RGB mixed by Beer–Lambert from the H and E vectors of data/stain.py: random concentrations, a fifth of
    the pixels pure haematoxylin, a fifth pure eosin, a tenth background."""
    rng = np.random.default_rng(seed)
    n = size * size
    concentrations = rng.uniform(0.2, 1.2, (n, 2))
    kind = rng.integers(0, 10, n)
    concentrations[kind < 2, 1] = 0
    concentrations[(kind >= 2) & (kind < 4), 0] = 0
    concentrations[kind == 9] = 0
    od = concentrations @ RGB_FROM_HED[:2]
    return (from_optical_density(od) + 0.5).astype(np.uint8).reshape(size, size, 3)


def test_macenko_recovers_a_known_stain_matrix() -> None:
    fitted = np.asarray(fit_stain("macenko", mixed_image()))
    vectors = fitted[:6].reshape(3, 2)
    for column, stain in enumerate(RGB_FROM_HED[:2]):  # haematoxylin first, then eosin
        assert np.dot(vectors[:, column], stain) / np.linalg.norm(vectors[:, column]) > 0.995
    assert np.all(fitted[6:] > 0.5)  # 99th percentile concentrations near the mixed maximum (1.2)


@pytest.mark.parametrize("method", METHODS)
def test_white_tile_passes_unchanged(method: str) -> None:
    stain = builtin_target(method)
    normalise = stain.normaliser(fit_stain(method, mixed_image()))
    white = np.full((2, 16, 16, 3), 255, np.uint8)
    out = normalise(white)
    assert out.dtype == np.uint8 and out.shape == white.shape
    np.testing.assert_array_equal(out, white)
    black = normalise(np.zeros((1, 4, 4, 3), np.uint8))  # no NaN even at the other extreme
    assert black.dtype == np.uint8


@pytest.mark.parametrize("method", METHODS)
def test_normalising_the_target_itself_is_close_to_identity(method: str) -> None:
    image = mixed_image(1)
    stain = StainNorm(method, fit_stain(method, image), "self")
    out = stain.normaliser(stain.target)(image)
    assert np.abs(out.astype(int) - image).mean() < 1.0
    assert np.abs(out.astype(int) - image).max() <= 3


@pytest.mark.parametrize(("method", "kept"), [("macenko", 0.5), ("reinhard", 0.75)])  # Reinhard: global colour only
def test_a_stain_shift_is_undone(method: str, kept: float) -> None:
    image = mixed_image(2)
    shifted = hed_scale_shift(image, (1.5, 0.6, 1.0), (0, 0, 0))
    stain = StainNorm(method, fit_stain(method, image), "original")
    restored = stain.normaliser(fit_stain(method, shifted))(shifted)
    before, after = np.abs(shifted.astype(int) - image).mean(), np.abs(restored.astype(int) - image).mean()
    assert after < kept * before


def test_background_only_cannot_be_estimated() -> None:
    with pytest.raises(StainEstimationError, match="too little tissue"):
        fit_stain("macenko", np.full((32, 32, 3), 250, np.uint8))
    with pytest.raises(StainEstimationError):
        fit_stain("reinhard", mixed_image(), mask=np.zeros((64, 64), bool))


def test_stain_target_image_errors_are_one_line(tmp_path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read the stain target") as info:
        target_from_image("macenko", broken)
    assert "\n" not in str(info.value)
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((40, 40, 3), 255, np.uint8)).save(blank)
    with pytest.raises(ValueError, match="no stain target"):
        target_from_image("reinhard", blank)
    good = tmp_path / "good.png"
    Image.fromarray(mixed_image()).save(good)
    target = target_from_image("macenko", good)
    assert target.target_name == "good.png" and target == StainNorm("macenko", fit_stain("macenko", mixed_image()))
    assert target_from_image("none", good) is None


def test_builtin_targets_are_valid() -> None:
    for method in METHODS:
        assert builtin_target(method).method == method
    assert builtin_target("none") is None
    with pytest.raises(ValueError, match="needs 8 finite numbers"):
        StainNorm("macenko", (1.0, 2.0))
    with pytest.raises(ValueError, match="unknown stain normalisation"):
        StainNorm("vahadane", ())


@pytest.mark.parametrize("mode", [TileMode(4), RegionMode(512, 128)])
def test_mode_round_trips_through_attrs(mode) -> None:
    stain = builtin_target("macenko")
    normalised = with_stain(mode, stain)
    attrs = normalised.attrs()
    assert attrs["stain_norm"] == "macenko" and len(attrs["stain_target"]) == 8
    assert mode_from_attrs(attrs) == normalised
    assert mode_from_attrs(attrs) != mode  # features of different normalisations never mix
    assert mode_from_attrs(mode.attrs()).stain is None  # stores without the keys: none
    assert "macenko stain normalisation" in normalised.describe()


def test_model_with_stain_norm_refuses_other_features() -> None:
    model_mode = with_stain(TileMode(4), builtin_target("macenko")).attrs()
    assert resolve(None, model_mode, "m").stain == builtin_target("macenko")  # taken from the model
    assert resolve(TileMode(4), model_mode, "m", builtin_target("macenko")).stain is not None
    for other in (NO_STAIN_NORM, builtin_target("reinhard"), StainNorm("macenko", (0.5,) * 6 + (1.0, 1.0), "x")):
        with pytest.raises(ValueError, match="leave --stain-norm / --stain-target out"):
            resolve(None, model_mode, "m", other)
    with pytest.raises(ValueError, match="not of macenko"):
        resolve(None, TileMode().attrs(), "plain", builtin_target("macenko"))
    assert resolve(None, TileMode().attrs(), "plain", NO_STAIN_NORM) == TileMode()


@pytest.fixture(scope="module")
def encoder():
    import torch

    from wsi_mamba.models.encoder import load_encoder

    torch.manual_seed(0)
    return load_encoder("vmamba_pico", seed=0, tile_px=64, mpp=1.0, num_classes=1)


@pytest.mark.usefixtures("one_torch_thread")
def test_extract_records_the_stain_and_stores_never_mix(encoder, tmp_path_factory: pytest.TempPathFactory) -> None:
    from slide_fixtures import synthetic_slide

    from wsi_mamba.features.options import ReadOptions
    from wsi_mamba.features.store import check_same_encoder, read_attrs, read_store, store_path
    from wsi_mamba.workflows.bundle import check_manifest
    from wsi_mamba.workflows.extract import extract_slides

    slide = synthetic_slide(tmp_path_factory, "tiff")
    read = ReadOptions(batch_size=16, read_threads=1)
    plain, normalised = tmp_path_factory.mktemp("plain"), tmp_path_factory.mktemp("macenko")
    mode = with_stain(TileMode(), builtin_target("macenko"))
    assert extract_slides([slide], plain, encoder, TileMode(), read, progress=False) == {"slide": "done"}
    assert extract_slides([slide], normalised, encoder, mode, read, progress=False) == {"slide": "done"}
    attrs = read_attrs(store_path(normalised, "slide"))
    assert mode_from_attrs(attrs) == mode and "stain_warning" not in attrs
    a, b = read_store(store_path(plain, "slide")), read_store(store_path(normalised, "slide"))
    assert a.features.shape == b.features.shape and not np.allclose(a.features, b.features)
    np.testing.assert_array_equal(a.colour, b.colour)  # colour statistics: of the tiles as read
    ident = (attrs["encoder"], attrs["encoder_hash"])
    with pytest.raises(ValueError, match="macenko stain normalisation"):
        check_same_encoder({"slide": attrs}, ident, expected_mode={"mode": "tile"})
    check_manifest({"feature_mode": mode.attrs()})
    with pytest.raises(ValueError, match="needs 8 finite numbers"):
        check_manifest({"feature_mode": {"mode": "tile", "stain_norm": "macenko", "stain_target": [1, "x"]}})


@pytest.mark.usefixtures("one_torch_thread")
def test_a_slide_without_tissue_is_encoded_as_read_with_a_warning(encoder, tmp_path) -> None:
    import tifffile

    from wsi_mamba.features.encode import encode_slide
    from wsi_mamba.slide import open_slide

    path = tmp_path / "blank.tif"
    tifffile.imwrite(path, np.full((512, 512, 3), 245, np.uint8), photometric="rgb", tile=(128, 128),
                     resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    with open_slide(path) as slide, pytest.warns(UserWarning, match="stain normalisation not applied"):
        encoded = encode_slide(slide, encoder, with_stain(TileMode(), builtin_target("reinhard")))
    assert encoded.stain_warning and "too little tissue" in encoded.stain_warning
    assert len(encoded.grid) == 0


def test_cli_stain_target_errors_come_before_any_work(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from cli_helpers import assert_one_error, run

    broken = tmp_path / "target.png"
    broken.write_bytes(b"\x89PNG broken")
    missing_slides = tmp_path / "no-such-slides"  # never reached: the target fails first
    code, _, err = run(["extract", missing_slides, "--out", tmp_path / "f", "--stain-norm", "macenko",
                        "--stain-target", broken], capsys)
    assert code == 1
    assert_one_error(err, "target.png", "cannot read the stain target")
    code, _, err = run(["predict", missing_slides, "--stain-norm", "none", "--stain-target", broken], capsys)
    assert code == 2
    assert_one_error(err, "--stain-target needs --stain-norm")
    unread = tmp_path / "unread.tif"  # never opened: the default model (no stain normalisation) refuses first
    unread.write_bytes(b"")
    code, _, err = run(["predict", unread, "--stain-norm", "reinhard", "--out", tmp_path / "r"], capsys)
    assert code == 1
    assert_one_error(err, "not of reinhard stain normalisation", "leave --stain-norm / --stain-target out")
    assert not (tmp_path / "f").exists() and not (tmp_path / "r").exists()


@pytest.mark.usefixtures("one_torch_thread")
def test_score_patches_normalises_each_patch(encoder, tmp_path) -> None:
    from wsi_mamba.data.patches import open_patches
    from wsi_mamba.workflows.reports.score_patches import score_patch_source

    for label in ("0", "1"):
        (tmp_path / label).mkdir()
        for i in range(2):
            Image.fromarray(mixed_image(10 * int(label) + i)).save(tmp_path / label / f"p{i}.png")
    Image.fromarray(np.full((64, 64, 3), 255, np.uint8)).save(tmp_path / "0" / "white.png")
    source = open_patches([str(tmp_path)])
    plain = score_patch_source(source, encoder)
    normalised = score_patch_source(source, encoder, stain=builtin_target("macenko"))
    assert normalised.stain_skipped == 1 and plain.stain_skipped == 0  # the white patch: scored as read
    white = [i for i, (path, _) in enumerate(plain.locations) if path.endswith("white.png")]
    others = np.setdiff1d(np.arange(len(source)), white)
    assert plain.scores[white] == pytest.approx(normalised.scores[white])
    assert not np.allclose(plain.scores[others], normalised.scores[others])


def test_score_patches_reads_the_models_tile_mode_once(tmp_path) -> None:
    """A model folder's views, views on demand and stain come from one read of its model.json; a region-mode
    model scores patches in one view with its stain."""
    from wsi_mamba.workflows.bundle import model_path, model_tile_mode
    from wsi_mamba.workflows.reports.score_patches import load_patch_classifier

    shipped = model_path(None)
    meta = json.loads((shipped / "model.json").read_text())
    stain = builtin_target("macenko")
    tile, region = TileMode(4, stain, (0.1, 0.9)), with_stain(RegionMode(512, 128), stain)
    for name, mode, expected in (("tile", tile, tile), ("region", region, TileMode(stain=stain))):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "model.json").write_text(json.dumps({**meta, "feature_mode": mode.attrs()}))
        assert model_tile_mode(folder) == expected
    for part in ("encoder.safetensors", "encoder.json"):
        (tmp_path / "tile" / part).symlink_to(shipped / part)
    encoder, mode = load_patch_classifier(tmp_path / "tile")
    assert mode == tile and encoder.num_classes == 1


def test_train_encoder_patches_come_normalised(tmp_path) -> None:
    from wsi_mamba.data.patches import open_patches
    from wsi_mamba.data.stain_norm import normalise_each
    from wsi_mamba.data.stain_patches import StainNormalisedPatches

    for label in ("0", "1"):
        (tmp_path / label).mkdir()
        Image.fromarray(mixed_image(int(label))).save(tmp_path / label / "p.png")
    source = open_patches([str(tmp_path)])
    stain = builtin_target("reinhard")
    normalised = StainNormalisedPatches(source, stain)
    np.testing.assert_array_equal(normalised.read([0, 1]), normalise_each(source.read([0, 1]), stain)[0])
    assert not np.array_equal(normalised.read([0]), source.read([0]))
    assert normalised.location(1) == source.location(1) and list(normalised.labels) == list(source.labels)
    assert "reinhard stain normalisation" in normalised.description
