"""int8 dynamic quantisation of the linear layers for CPU inference (:mod:`wsi_mamba.models.cpu_inference`): each
layer and a whole small VMamba against fp32 on fresh random inputs, the original model untouched, the encoder's
cached copy."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wsi_mamba.models import create_model
from wsi_mamba.models.cpu_inference import Int8Linear2d, int8_linear, quantize_linears
from wsi_mamba.models.encoder import load_encoder
from wsi_mamba.models.layers import Linear2d

# int8 weights and activations (per tensor, 8 bits): the error of one layer is a few 1e-3 of its output's range.
LAYER_TOLERANCE = 0.03  # max abs error / max |fp32 output|
MODEL_TOLERANCE = 0.03  # relative L2 error of a whole network's features (errors add up over the layers)


def relative_max(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("shape", [(1, 8, 1, 1), (2, 16, 5, 7), (3, 48, 12, 12)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_int8_linear2d_matches_the_fp32_layer(shape: tuple[int, ...], channels_last: bool) -> None:
    torch.manual_seed(sum(shape))
    layer = Linear2d(shape[1], 2 * shape[1] + 1, bias=True)
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        ref, out = layer(x), Int8Linear2d(layer)(x)
    assert out.shape == ref.shape
    assert out.is_contiguous(memory_format=torch.channels_last)  # what the next layer norm reads without a copy
    assert 0 < relative_max(out, ref) < LAYER_TOLERANCE  # quantised (not bit-equal), and not garbage


@pytest.mark.parametrize("bias", [False, True])
def test_int8_linear_matches_nn_linear(bias: bool) -> None:
    torch.manual_seed(1)
    layer = nn.Linear(24, 10, bias=bias)
    x = torch.randn(5, 3, 24)
    with torch.inference_mode():
        assert relative_max(int8_linear(layer)(x), layer(x)) < LAYER_TOLERANCE


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model.forward_head(model.forward_features(x), pre_logits=True)


@pytest.mark.parametrize(("batch", "side"), [(2, 32), (3, 64)])
def test_quantized_vmamba_features_close_to_fp32(batch: int, side: int) -> None:
    torch.manual_seed(side)
    model = create_model("vmamba_pico", num_classes=1).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    int8 = quantize_linears(model, skip=[model.classifier.head])
    x = torch.randn(batch, 3, side, side).contiguous(memory_format=torch.channels_last)
    ref, out = features(model, x), features(int8, x)
    relative = ((out - ref).norm() / ref.norm()).item()
    assert 0 < relative < MODEL_TOLERANCE
    kinds = {type(m) for m in int8.modules()}
    assert Linear2d not in kinds and Int8Linear2d in kinds
    assert type(int8.classifier.head) is nn.Linear  # skipped: stays fp32
    assert all(
        isinstance(m, Linear2d) for m in (model.layers[0].blocks[0].mlp.fc1, model.layers[0].blocks[0].op.in_proj)
    )
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the original is untouched


def test_quantize_only_named_layers() -> None:
    model = create_model("vmamba_pico", num_classes=1).eval()
    int8 = quantize_linears(model, names=("fc1", "fc2"))
    block = int8.layers[0].blocks[0]
    assert isinstance(block.mlp.fc1, Int8Linear2d) and isinstance(block.mlp.fc2, Int8Linear2d)
    assert type(block.op.in_proj) is Linear2d and type(block.op.out_proj) is Linear2d
    assert type(int8.classifier.head) is nn.Linear


def test_encoder_int8_model_is_made_once() -> None:
    encoder = load_encoder("vmamba_pico", seed=0)
    assert encoder.inference_model("fp32") is encoder.model
    int8 = encoder.inference_model("int8")
    assert int8 is encoder.inference_model("int8")
    block = int8.layers[0].blocks[0]
    assert isinstance(block.mlp.fc1, Int8Linear2d) and type(block.op.in_proj) is Linear2d
    assert type(int8.classifier.head) is nn.Linear
    assert type(encoder.model.layers[0].blocks[0].mlp.fc1) is Linear2d  # the encoder's own model untouched
    x = torch.randn(2, 3, 32, 32)
    ref, out = features(encoder.model, x), features(int8, x)
    assert 0 < ((out - ref).norm() / ref.norm()).item() < MODEL_TOLERANCE
    with pytest.raises(ValueError, match="inference precision must be fp32 or int8"):
        encoder.inference_model("int4")
