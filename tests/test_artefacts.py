"""Versioned artefacts (``wsi_mamba.outputs.artefact``): header checks, and every artefact's save interrupted
midway leaves the previous one intact and nothing partial under a final name."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import wsi_mamba.features.store as store_module
import wsi_mamba.models.checkpoint as checkpoint_module
from wsi_mamba.features.store import PARTIAL, SlideFeatures, read_store, store_path, write_store
from wsi_mamba.models.checkpoint import config_path, load_checkpoint, save_checkpoint
from wsi_mamba.models.encoder import load_encoder
from wsi_mamba.models.slide_model import SlideMamba, SlideModelConfig
from wsi_mamba.models.slide_model_io import load_slide_model, save_slide_model
from wsi_mamba.models.vmamba import VSSM, VMambaConfig
from wsi_mamba.outputs.artefact import ArtefactFormat, read_json_object
from wsi_mamba.outputs.atomic import TEMP_MARKER
from wsi_mamba.workflows.bundle import load_bundle, save_bundle

FMT = ArtefactFormat("wsi-mamba/test", 2, kind="manifest")


def files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its content."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_clean(folder: Path) -> None:
    """No temporary or partial names left anywhere under ``folder``."""
    left = [p for p in folder.rglob("*") if TEMP_MARKER in p.name or p.name.endswith(PARTIAL)]
    assert not left, left


# ------------------------------------------------------------------------------------------ the helper


def test_header_comes_first_and_wins(tmp_path: Path) -> None:
    path = FMT.write(tmp_path / "a.json", {"x": 1, "format": "other"})
    text = path.read_text()
    assert text == json.dumps({"format": "wsi-mamba/test", "format_version": 2, "x": 1}, indent=2) + "\n"
    assert FMT.read(path) == {"format": "wsi-mamba/test", "format_version": 2, "x": 1}
    assert FMT.matches(json.loads(text)) and not FMT.matches([1])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"a\.json: file not found"),
        (b"{not json", r"a\.json: not valid JSON"),
        (b"\x80\x04pickle", r"a\.json: not valid JSON"),
        (b"[1, 2]", r"a\.json: expected a JSON object, got list"),
        (b'{"format": "wsi-mamba/other", "format_version": 2}', r"a\.json: not a wsi-mamba/test manifest"),
        (b'{"format": "wsi-mamba/test", "format_version": 3}', r"a\.json: unsupported format_version 3"),
        (b'{"format": "wsi-mamba/test"}', r"a\.json: unsupported format_version None"),
    ],
)
def test_read_errors_are_one_line_and_name_the_file(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "a.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as caught:
        FMT.read(path)
    assert "\n" not in str(caught.value)


def test_read_json_object_of_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot be read"):
        read_json_object(tmp_path)


def test_strict_json(tmp_path: Path) -> None:
    for body in ({"x": float("nan")}, {"x": object()}):
        with pytest.raises(ValueError, match="not JSON-serialisable"):
            FMT.write(tmp_path / "a.json", body)
    assert not list(tmp_path.iterdir())


def test_write_pair_puts_the_config_back_when_the_tensors_cannot_land(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tensors, config = tmp_path / "m.bin", tmp_path / "m.json"
    FMT.write_pair(tensors, config, {"v": 1}, lambda tmp: tmp.write_bytes(b"first"))
    before = files(tmp_path)
    real = os.replace

    def replace(src, dst) -> None:
        if os.fspath(dst).endswith(".bin"):
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="No space"):
        FMT.write_pair(tensors, config, {"v": 2}, lambda tmp: tmp.write_bytes(b"second"))
    assert files(tmp_path) == before
    with pytest.raises(OSError, match="No space"):  # no previous pair: the new config does not stay alone
        FMT.write_pair(tmp_path / "n.bin", tmp_path / "n.json", {"v": 2}, lambda tmp: tmp.write_bytes(b"x"))
    assert files(tmp_path) == before
    monkeypatch.undo()
    with pytest.raises(FileNotFoundError, match="wrote nothing"):
        FMT.write_pair(tensors, config, {"v": 3}, lambda tmp: None)
    assert files(tmp_path) == before
    assert_clean(tmp_path)


# ---------------------------------------------------------------------------- each artefact, interrupted


def half_written_tensors(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make the safetensors writer write half a file and fail (as a crash or a full disk would); returns
    the paths it was given."""
    given: list[str] = []

    def save_file(state, filename, metadata=None) -> None:
        given.append(os.fspath(filename))
        Path(filename).write_bytes(b"\x00" * 64)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_module, "save_file", save_file)
    return given


def small_vssm(seed: int) -> VSSM:
    torch.manual_seed(seed)
    return VSSM(VMambaConfig(embed_dim=8, depths=(1, 1), num_classes=2))


def small_slide_model(seed: int) -> SlideMamba:
    torch.manual_seed(seed)
    return SlideMamba(SlideModelConfig(in_dim=8, dim=8, depth=1, d_state=2, attn_dim=4))


def test_checkpoint_save_interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_checkpoint(small_vssm(0), tmp_path / "enc", {"name": "first"})
    before = files(tmp_path)
    with monkeypatch.context() as patch:
        given = half_written_tensors(patch)
        with pytest.raises(OSError):
            save_checkpoint(small_vssm(1), path, {"name": "second"})
    assert given and all(TEMP_MARKER in name for name in given)
    assert files(tmp_path) == before
    assert_clean(tmp_path)
    load_checkpoint(path)


def test_slide_model_save_interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_slide_model(small_slide_model(0), tmp_path / "slide", {"epoch": 1})
    before = files(tmp_path)
    with monkeypatch.context() as patch:
        half_written_tensors(patch)
        with pytest.raises(OSError):
            save_slide_model(small_slide_model(1), path, {"epoch": 2})
    assert files(tmp_path) == before
    assert_clean(tmp_path)
    assert load_slide_model(path)[1] == {"epoch": 1}


def test_slide_model_files_are_byte_compatible(tmp_path: Path) -> None:
    """The v1 layout, plus the ``aggregator`` key (files without it load as ss2d)."""
    model = small_slide_model(0)
    path = save_slide_model(model, tmp_path / "slide", {"epoch": 1})
    expected = {
        "format": "wsi-mamba/slide-model",
        "format_version": 1,
        "aggregator": "ss2d",
        "config": model.config.to_dict(),
        "metadata": {"epoch": 1},
    }
    assert config_path(path).read_text() == json.dumps(expected, indent=2) + "\n"


def test_model_folder_save_interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = save_checkpoint(small_vssm(0), tmp_path / "enc", {"name": "enc", "tile_px": 64, "mpp": 1.0})
    encoder = load_encoder(source)
    out = save_bundle(tmp_path / "model", encoder, small_slide_model(0), {"name": "first"})
    before = files(out)
    with monkeypatch.context() as patch:
        half_written_tensors(patch)
        with pytest.raises(OSError):
            save_bundle(out, encoder, small_slide_model(1), {"name": "second"}, overwrite=True)
    assert files(out) == before
    assert_clean(tmp_path)
    assert load_bundle(out).name == "first"


def store_data(seed: int) -> SlideFeatures:
    rng = np.random.default_rng(seed)
    grid = np.array([[0, 0], [0, 1], [1, 1]], np.int32)
    return SlideFeatures(
        name="s",
        features=rng.normal(size=(3, 4)).astype(np.float32),
        coords=grid.astype(np.int64) * 64,
        grid=grid,
        colour=rng.normal(size=(3, 2)).astype(np.float32),
        tissue_mask=np.ones((2, 2), bool),
        attrs={"encoder": "enc", "encoder_hash": "h", "tile_px": 64, "mpp": 1.0, "grid_shape": [2, 2], "size0": 64},
    )


def test_feature_store_save_interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_store(store_path(tmp_path, "s"), store_data(0))
    before = files(tmp_path)

    def digest(array: np.ndarray) -> dict:  # the arrays are written, the attributes not yet
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(store_module, "_digest", digest)
        with pytest.raises(OSError):
            write_store(path, store_data(1))
    assert files(tmp_path) == before
    assert_clean(tmp_path)
    np.testing.assert_array_equal(read_store(path).colour, store_data(0).colour)


def test_feature_store_of_another_version_is_refused(tmp_path: Path) -> None:
    import zarr

    path = write_store(store_path(tmp_path, "s"), store_data(0))
    zarr.open_group(str(path), mode="r+").attrs["format_version"] = 99
    with pytest.raises(ValueError, match=r"s\.zarr: unsupported format_version 99"):
        read_store(path)
