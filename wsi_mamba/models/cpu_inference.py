"""Inference-only copies of a backbone for the CPU: int8 dynamic quantisation of its linear layers.

Weights become int8 (per tensor, symmetric), activations are quantised per call from their own range and the
products accumulate in int32 (``torch.ao.nn.quantized.dynamic.Linear``; fbgemm/oneDNN with AVX-512-VNNI on x86).
VMamba's :class:`~.layers.Linear2d` (a 1×1 convolution over NCHW) runs as a linear layer over the channels-last
view of its input, so a channels-last map (the encoding engine's) is read without a copy. Features differ from
fp32 by about 1-2 % of their largest value; the shipped encoder's carved AUC is unchanged within 0.002
(``benchmarks/bench_encoder_precision.py``, BENCHMARKS.md). Not differentiable: inference only.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable

import torch
from torch import nn
from torch.ao.nn.quantized import dynamic as qdynamic

from .layers import Linear2d

__all__ = ["Int8Linear2d", "int8_linear", "quantize_linears"]


def int8_linear(layer: nn.Linear) -> qdynamic.Linear:
    """A dynamically quantised (int8 weights, int8 activations per call) copy of ``layer`` (plain linear math)."""
    plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    plain.load_state_dict({k: v.detach().float().cpu() for k, v in layer.state_dict().items()})
    plain.qconfig = torch.ao.quantization.default_dynamic_qconfig
    with warnings.catch_warnings():  # torch >= 2.10 flags quantized tensor creation as deprecated
        warnings.simplefilter("ignore", UserWarning)
        return qdynamic.Linear.from_float(plain)


class Int8Linear2d(nn.Module):
    """:class:`~.layers.Linear2d` with int8 dynamic quantisation: (B, C, H, W) → (B, out, H, W), the result
    channels-last in memory."""

    def __init__(self, layer: Linear2d) -> None:
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.linear = int8_linear(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.float().permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def quantize_linears(model: nn.Module, names: Iterable[str] | None = None, skip: Iterable[nn.Module] = ()) -> nn.Module:
    """A copy of ``model`` (on the CPU, eval mode) whose ``nn.Linear`` and ``Linear2d`` layers are int8
    (:func:`int8_linear`, :class:`Int8Linear2d`); ``names``: only layers whose attribute name is one of these
    (``("fc1", "fc2")``: VMamba's MLPs); ``skip``: layers of ``model`` left in fp32 (a classifier head)."""
    wanted = None if names is None else set(names)
    skipped = {id(module) for module in skip}
    out = copy.deepcopy(model).cpu().eval()
    originals = dict(model.named_modules())
    for parent_name, parent in list(out.named_modules()):
        for name, child in list(parent.named_children()):
            path = f"{parent_name}.{name}" if parent_name else name
            if (wanted is not None and name not in wanted) or id(originals.get(path)) in skipped:
                continue
            if isinstance(child, Linear2d):
                setattr(parent, name, Int8Linear2d(child))
            elif type(child) is nn.Linear:
                setattr(parent, name, int8_linear(child))
    return out
