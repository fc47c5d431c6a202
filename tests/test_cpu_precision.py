"""CPU precision of model calls: bf16 autocast on the CPU only when asked, through ``devices.autocast`` and the
encoding engine's ``DeviceRunner`` (channels-last input), and its features close to fp32."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch
from slide_fixtures import synthetic_slide

from wsi_mamba import devices
from wsi_mamba.devices import CPU_PRECISIONS, autocast, cpu_bf16_native, resolve_cpu_precision
from wsi_mamba.features.encode import encode_slide
from wsi_mamba.features.options import ReadOptions
from wsi_mamba.features.runner import DeviceRunner
from wsi_mamba.features.store import check_attrs
from wsi_mamba.models import create_model
from wsi_mamba.models.encoder import load_encoder
from wsi_mamba.slide import open_slide
from wsi_mamba.workflows.extract import to_store_data


def test_cpu_autocast_only_when_bf16_is_asked() -> None:
    assert isinstance(autocast("cpu"), contextlib.nullcontext)
    assert isinstance(autocast("cpu", "fp32"), contextlib.nullcontext)
    with autocast("cpu", "bf16"):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")
    assert CPU_PRECISIONS == ("fp32", "bf16")
    assert isinstance(cpu_bf16_native(), bool)


@pytest.mark.parametrize("bad", ["fp16", "BF16", "", "int8"])
def test_unknown_cpu_precision_is_one_clear_error(bad: str) -> None:
    with pytest.raises(ValueError, match="CPU precision must be fp32 or bf16"):
        autocast("cpu", bad)
    with pytest.raises(ValueError, match="CPU precision must be fp32 or bf16"):
        DeviceRunner("cpu", bad)


def test_runner_runs_bf16_calls_on_a_channels_last_input() -> None:
    seen = {}

    def call(x: torch.Tensor) -> torch.Tensor:
        seen["autocast"] = torch.is_autocast_enabled("cpu")
        seen["channels_last"] = x.is_contiguous(memory_format=torch.channels_last)
        seen["inference"] = torch.is_inference_mode_enabled()
        return x.sum((2, 3))

    x = torch.randn(2, 3, 8, 8)
    for precision, expected in (("fp32", False), ("bf16", True)):
        out = DeviceRunner("cpu", precision).compute(call, x)
        assert seen == {"autocast": expected, "channels_last": expected, "inference": True}
        torch.testing.assert_close(out, x.sum((2, 3)))
    DeviceRunner("cpu", "bf16").compute(lambda t: t, torch.randn(3, 4))  # no layout change for non-images


def test_bf16_features_close_to_fp32() -> None:
    """A small VMamba's features under the bf16 runner: bf16 error (a few per cent), not garbage, and finite."""
    torch.manual_seed(0)
    model = create_model("vmamba_pico", num_classes=1).eval()
    x = torch.randn(4, 3, 64, 64)

    def features(t: torch.Tensor) -> torch.Tensor:
        return model.forward_head(model.forward_features(t), pre_logits=True)

    fp32 = DeviceRunner("cpu").compute(features, x)
    bf16 = DeviceRunner("cpu", "bf16").compute(features, x).float()
    assert torch.isfinite(bf16).all()
    relative = ((bf16 - fp32).norm() / fp32.norm()).item()
    assert 0 < relative < 0.05  # bf16 did run (not bit-identical), within its error


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_precision_is_bf16_only_where_the_cpu_computes_it(
    monkeypatch: pytest.MonkeyPatch, native: bool, expected: str
) -> None:
    monkeypatch.setattr(devices, "cpu_bf16_native", lambda: native)
    assert resolve_cpu_precision("auto") == expected
    assert resolve_cpu_precision("fp32") == "fp32" and resolve_cpu_precision("bf16") == "bf16"
    with pytest.raises(ValueError, match="CPU precision must be auto, fp32 or bf16"):
        resolve_cpu_precision("fp16")


def test_read_options_refuse_an_unknown_precision() -> None:
    with pytest.raises(ValueError, match=r"ReadOptions\.precision must be one of auto, fp32, bf16"):
        ReadOptions(precision="fp16")


def test_a_slide_encoded_in_bf16_records_it_with_features_close_to_fp32(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    encoder = load_encoder("vmamba_pico", seed=1, tile_px=64, mpp=1.0)
    with open_slide(synthetic_slide(tmp_path_factory, "tiff")) as slide:
        fp32, bf16 = (encode_slide(slide, encoder, read=ReadOptions(precision=p)) for p in ("fp32", "bf16"))
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    relative = np.linalg.norm(bf16.features - fp32.features) / np.linalg.norm(fp32.features)
    assert 0 < relative < 0.05
    attrs = to_store_data("s", Path("s.tif"), bf16, encoder).attrs
    assert attrs["encoder_precision"] == "bf16"
    check_attrs(attrs, "s.zarr")  # a valid store attribute
    with pytest.raises(ValueError, match="encoder_precision must be one of fp32, bf16"):
        check_attrs({**attrs, "encoder_precision": "fp16"}, "s.zarr")
