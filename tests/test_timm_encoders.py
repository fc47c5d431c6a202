"""timm encoders from local weights: parity with timm's own features, weights formats (safetensors, weights-only
pickles, Hugging Face-style folders), refusals, our checkpoint of a timm encoder, model folders and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from slide_fixtures import synthetic_slide
from test_patches import run, write_folder
from workflow_fixtures import write_booby_pickle

from wsi_mamba.models.encoder import TileEncoder, load_encoder, weights_hash
from wsi_mamba.models.encoders import list_encoder_families, save_encoder
from wsi_mamba.models.encoders.timm import import_timm

ARCH = "resnet18"
PX = 32


def timm_model(seed: int) -> torch.nn.Module:
    """A randomly initialised timm resnet18 (never pretrained: nothing is downloaded), in eval mode."""
    torch.manual_seed(seed)
    return import_timm().create_model(ARCH, pretrained=False).eval()


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same random weights as safetensors and as a weights-only .pth; other weights as safetensors."""
    root = tmp_path_factory.mktemp("timm")
    model, other = timm_model(0), timm_model(1)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "a.safetensors"))
    torch.save(model.state_dict(), root / "a.pth")
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(root / "b.safetensors"))
    return {"a": root / "a.safetensors", "a_pth": root / "a.pth", "b": root / "b.safetensors", "root": root}


def tiles(n: int = 3, px: int = PX) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, px, px, 3), dtype=np.uint8)


def timm_reference(model: torch.nn.Module, batch: np.ndarray) -> np.ndarray:
    """timm's own pooled pre-logit features on the input normalised with the model's pretrained mean/std."""
    cfg = model.pretrained_cfg
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        return model.forward_head(model.forward_features(x), pre_logits=True).numpy()


def test_timm_is_a_registered_family() -> None:
    assert {"timm", "vmamba"} <= set(list_encoder_families())


@pytest.mark.parametrize("kind", ["a", "a_pth"])
def test_features_equal_timms_own(weights: dict[str, Path], kind: str) -> None:
    encoder = load_encoder(f"timm:{ARCH}", weights=weights[kind], tile_px=PX, mpp=1.0)
    assert isinstance(encoder, TileEncoder)
    assert (encoder.name, encoder.tile_px, encoder.mpp, encoder.dim) == (f"timm:{ARCH}", PX, 1.0, 512)
    reference = timm_model(0)
    assert encoder.mean == tuple(reference.pretrained_cfg["mean"]) and encoder.hash == weights_hash(reference)
    batch = tiles()
    assert np.abs(encoder.encode(batch) - timm_reference(reference, batch)).max() <= 1e-5
    assert encoder.identity() == {"encoder": f"timm:{ARCH}", "encoder_hash": encoder.hash, "tile_px": PX, "mpp": 1.0}


def test_other_weights_give_other_features_and_hash(weights: dict[str, Path]) -> None:
    a = load_encoder(f"timm:{ARCH}", weights=weights["a"], tile_px=PX)
    b = load_encoder(f"timm:{ARCH}", weights=weights["b"], tile_px=PX)
    assert a.hash != b.hash
    assert np.abs(a.encode(tiles()) - b.encode(tiles())).max() > 1e-3
    assert load_encoder(f"timm:{ARCH}", weights=weights["a_pth"]).hash == a.hash  # same tensors, same hash


def test_defaults_come_from_the_models_pretrained_config(weights: dict[str, Path]) -> None:
    encoder = load_encoder(f"timm:{ARCH}", weights=weights["a"])
    assert encoder.tile_px == 224 and encoder.mpp == 0.5 and encoder.input_px is None  # a CNN takes any size


@pytest.mark.parametrize("weights_name", ["model.safetensors", "pytorch_model.bin"])
def test_hugging_face_folder_loads(weights: dict[str, Path], tmp_path: Path, weights_name: str) -> None:
    """A folder as timm's push_to_hf_hub writes it (UNI/CONCH-style): config.json + weights."""
    folder = tmp_path / "hf"
    folder.mkdir()
    state = timm_model(0).state_dict()
    if weights_name.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / weights_name))
    else:
        torch.save(state, folder / weights_name)
    config = {
        "architecture": ARCH,
        "num_classes": 1000,
        "num_features": 512,
        "global_pool": "avg",
        "pretrained_cfg": {"input_size": [3, 64, 64], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
                           "classifier": "fc", "hf_hub_id": "nobody/never-downloaded"},
    }
    (folder / "config.json").write_text(json.dumps(config))
    encoder = load_encoder(folder)
    assert encoder.hash == load_encoder(f"timm:{ARCH}", weights=weights["a"]).hash
    assert (encoder.mean, encoder.std, encoder.tile_px) == ((0.5,) * 3, (0.25,) * 3, 64)
    assert load_encoder(f"timm:{ARCH}", weights=folder).hash == encoder.hash


def test_a_pickle_that_is_not_weights_only_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "sprung"
    evil = write_booby_pickle(tmp_path / "evil.pth", marker)
    with pytest.raises(ValueError, match="refused") as caught:
        load_encoder(f"timm:{ARCH}", weights=evil)
    assert str(evil) in str(caught.value) and not marker.exists()


def test_missing_weights_is_one_line_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(ValueError) as caught:
        load_encoder(f"timm:{ARCH}", weights=missing)
    assert str(missing) in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(ValueError, match="unknown timm architecture"):
        load_encoder("timm:no_such_net", weights=missing)


def test_our_checkpoint_of_a_timm_encoder_round_trips(weights: dict[str, Path], tmp_path: Path) -> None:
    encoder = load_encoder(f"timm:{ARCH}", weights=weights["a"], tile_px=PX, mpp=2.0)
    path = save_encoder(encoder, tmp_path / "enc.safetensors", {"name": "mine"})
    meta = json.loads(path.with_suffix(".json").read_text())
    assert (meta["format"], meta["family"], meta["architecture"]) == ("wsi-mamba/timm-encoder", "timm", ARCH)
    assert meta["metadata"]["tile_px"] == PX and meta["config"]["num_classes"] == 1000
    again = load_encoder(path)
    assert (again.name, again.hash, again.tile_px, again.mpp, again.family) == ("mine", encoder.hash, PX, 2.0, "timm")
    assert np.array_equal(again.encode(tiles()), encoder.encode(tiles()))


def test_model_folder_with_a_timm_encoder_loads(weights: dict[str, Path], tmp_path: Path) -> None:
    from wsi_mamba.models.slide_model import SlideMamba
    from wsi_mamba.models.slide_model_config import SlideModelConfig
    from wsi_mamba.workflows.bundle import load_bundle, save_bundle

    encoder = load_encoder(f"timm:{ARCH}", weights=weights["a_pth"], tile_px=PX)  # a .pth: converted on saving
    slide_model = SlideMamba(SlideModelConfig(encoder.dim, 8, 1, 2))
    out = save_bundle(tmp_path / "model", encoder, slide_model, {"name": "timm-model"})
    bundle = load_bundle(out)
    assert (bundle.encoder.hash, bundle.encoder.family, bundle.encoder.tile_px) == (encoder.hash, "timm", PX)


def test_cli_extract_records_name_and_hash(
    weights: dict[str, Path],
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import zarr

    slides = [synthetic_slide(tmp_path_factory, "tiff")]
    code, _, err = run(
        ["extract", *slides, "--out", tmp_path / "features", "--encoder", f"timm:{ARCH}",
         "--encoder-weights", weights["a"], "--encoder-tile-px", 64, "--encoder-mpp", 2, "--threads", 1],
        capsys,
    )
    assert code == 0, err
    store = next((tmp_path / "features").iterdir())
    attrs = dict(zarr.open_group(str(store), mode="r").attrs)
    expected = load_encoder(f"timm:{ARCH}", weights=weights["a"])
    assert (attrs["encoder"], attrs["encoder_hash"], attrs["tile_px"]) == (f"timm:{ARCH}", expected.hash, 64)
    assert attrs["encoder_spec"] == f"timm:{ARCH}" and attrs["encoder_source"] == str(weights["a"].resolve())
    n, dim = zarr.open_group(str(store), mode="r")["features"].shape
    assert n > 0 and dim == 512
    code, _, err = run(["extract", *slides, "--out", tmp_path / "f2", "--encoder-weights", weights["a"]], capsys)
    assert code == 2 and "--encoder-weights needs" in err


def test_cli_train_encoder_and_score_patches_with_timm(
    weights: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    patches = write_folder(tmp_path / "patches", 8)
    out = tmp_path / "enc.safetensors"
    code, _, err = run(
        ["train-encoder", "--patches", patches, "--model", f"timm:{ARCH}", "--encoder-weights", weights["a"],
         "--epochs", 1, "--batch-size", 8, "--val-fraction", 0.25, "--out", out, "--threads", 1],
        capsys,
    )
    assert code == 0, err
    meta = json.loads(out.with_suffix(".json").read_text())
    assert (meta["family"], meta["architecture"], meta["config"]["num_classes"]) == ("timm", ARCH, 1)
    assert meta["metadata"]["tile_px"] == PX
    code, stdout, err = run(["score-patches", patches, "--model", out, "--json", "--threads", 1], capsys)
    assert code == 0, err
    scores = [row["score"] for row in json.loads(stdout)]
    assert len(scores) == 16 and all(0 <= s <= 1 for s in scores)
