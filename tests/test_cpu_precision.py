"""CPU precision of model calls: bf16 autocast on the CPU only when asked, through ``devices.autocast`` and the
encoding engine's ``DeviceRunner`` (channels-last input), and its features close to fp32."""

from __future__ import annotations

import contextlib

import pytest
import torch

from wsi_mamba.devices import CPU_PRECISIONS, autocast, cpu_bf16_native
from wsi_mamba.features.runner import DeviceRunner
from wsi_mamba.models import create_model


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
