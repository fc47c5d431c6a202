"""Checkpoint I/O: our safetensors + JSON format, and the official .pth converter."""

from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch
from vmamba_keys import official_keys

from wsi_mamba.models import config_from_official, create_model, load_checkpoint, load_official, save_checkpoint

TINY_YAML = """\
MODEL:
  TYPE: vssm
  NAME: vssm1_tiny_0230s
  DROP_PATH_RATE: 0.2
  VSSM:
    EMBED_DIM: 96
    DEPTHS: [ 2, 2, 8, 2 ]
    SSM_D_STATE: 1
    SSM_DT_RANK: "auto"
    SSM_RATIO: 1.0
    SSM_CONV: 3
    SSM_CONV_BIAS: false
    SSM_FORWARDTYPE: "v05_noz" # v3_noz
    MLP_RATIO: 4.0
    DOWNSAMPLE: "v3"
    PATCHEMBED: "v2"
    NORM_LAYER: "ln2d"
"""
NANO_KWARGS = {
    "dims": 32, "depths": [1, 1, 2, 1], "ssm_d_state": 1, "ssm_ratio": 1.0, "ssm_conv_bias": False,
    "forward_type": "v05_noz", "downsample_version": "v3", "patchembed_version": "v2", "num_classes": 7,
}


@pytest.fixture(scope="module")
def nano() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("vmamba_nano", num_classes=7, scan_backend="cpu").eval()


def test_save_load_roundtrip(nano, tmp_path) -> None:
    path = save_checkpoint(nano, tmp_path / "nano")
    assert path.name == "nano.safetensors" and (tmp_path / "nano.json").exists()
    loaded = load_checkpoint(path, scan_backend="cpu").eval()
    assert loaded.config == nano.config
    x = torch.randn(1, 3, 32, 48)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), nano.state_dict().values(), strict=True))
    with torch.no_grad():  # equal weights; float sums may differ in the last bit (tensor alignment)
        torch.testing.assert_close(loaded(x), nano(x), atol=1e-6, rtol=1e-6)


def test_load_checkpoint_of_other_config_names_keys(nano, tmp_path) -> None:
    path = save_checkpoint(nano, tmp_path / "nano.safetensors")
    meta = json.loads((tmp_path / "nano.json").read_text())
    meta["config"]["depths"] = [1, 1, 3, 1]
    (tmp_path / "nano.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"missing keys \(18\): layers\.2\.blocks\.2\.norm\.weight"):
        load_checkpoint(path)


def test_official_tiny_from_key_list_loads_strict(tmp_path) -> None:
    torch.manual_seed(0)
    state = OrderedDict((k, torch.randn(shape)) for k, shape in official_keys("tiny"))
    torch.save({"model": state, "model_ema": state, "epoch": 264}, tmp_path / "tiny.pth")
    (tmp_path / "tiny.yaml").write_text(TINY_YAML)
    model = load_official(tmp_path / "tiny.pth", tmp_path / "tiny.yaml")
    assert model.config == create_model("vmamba_tiny").config
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_official_checkpoint_of_other_config_names_keys(tmp_path) -> None:
    state = {k: torch.zeros(shape) for k, shape in official_keys("tiny")}
    torch.save({"model": state}, tmp_path / "tiny.pth")
    small = {**NANO_KWARGS, "dims": 96, "depths": [2, 2, 15, 2], "ssm_ratio": 2.0, "num_classes": 1000}
    with pytest.raises(ValueError, match=r"missing keys \(\d+\): layers\.2\.blocks\.8\..*shape mismatches"):
        load_official(tmp_path / "tiny.pth", small)


def test_official_one_file_layout_and_dict_config(nano) -> None:
    state = dict(nano.state_dict())
    for key in [k for k in state if k.endswith("op.x_proj_weight") or k.endswith("op.dt_projs_weight")]:
        value = state.pop(key)
        new = key.replace("x_proj_weight", "x_proj.weight").replace("dt_projs_weight", "dt_projs.weight")
        state[new] = value.reshape(-1, value.shape[-1])
    model = load_official({"model": state}, NANO_KWARGS, scan_backend="cpu").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), nano(x), atol=1e-6, rtol=1e-6)


class NotWeights:
    pass


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([1, 2, 3], "not a state dict: expected"),
        ({"model": {"a.weight": 1}}, "entry 'a.weight' is a int"),
        ({}, r"got dict \(empty\)"),
        (NotWeights(), "not a weights-only checkpoint.*NotWeights"),
        ({"model": {}, "config": NotWeights()}, "not a weights-only checkpoint"),
    ],
    ids=["list", "ints", "empty", "object", "extra-object"],
)
def test_non_state_dict_pickles_raise(tmp_path, payload, message) -> None:
    torch.save(payload, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=message):
        load_official(tmp_path / "bad.pth", NANO_KWARGS)


def test_unsupported_official_settings_raise() -> None:
    with pytest.raises(ValueError, match="forward_type='v2'"):
        config_from_official({**NANO_KWARGS, "forward_type": "v2"})
    with pytest.raises(ValueError, match="unknown official VSSM arguments"):
        config_from_official({**NANO_KWARGS, "foo": 1})
    assert config_from_official({**NANO_KWARGS, "dims": [32, 64, 128, 256]}).embed_dim == 32
