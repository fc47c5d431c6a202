"""Analytic cost of a VMamba configuration: parameters, FLOPs (SPEC's fvcore rule) and activation memory.

FLOP rule (matches the official numbers): a multiply-add counts 1; convolutions and linears count
out_elements × in_channels/groups × kernel_area (no bias); LayerNorm 5 per element; global average pool
1 per input element; one selective scan over all four routes 9·L·Dch·N + L·Dch (Dch = 4·d_inner);
activations, element-wise ops and the cross scan/merge are free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .ss2d import K_ROUTES, dt_rank_for
from .vmamba import VMambaConfig


@dataclass(frozen=True)
class StageCost:
    """Per-stage totals for one image."""

    dim: int
    height: int
    width: int
    flops: int
    activation_elements: int


def _half(n: int) -> int:
    return math.ceil(n / 2)


def stage_sizes(height: int, width: int, stages: int) -> list[tuple[int, int]]:
    """Feature-map size of every stage: stem ceil(ceil(H/2)/2), then ceil(/2) per downsample."""
    h, w = _half(_half(height)), _half(_half(width))
    sizes = []
    for _ in range(stages):
        sizes.append((h, w))
        h, w = _half(h), _half(w)
    return sizes


def _block_costs(cfg: VMambaConfig, dim: int, length: int) -> tuple[int, int]:
    """(FLOPs, activation elements kept for backward) of one VSS block on ``length`` tokens."""
    d_inner, n = int(cfg.ssm_ratio * dim), cfg.d_state
    rank, hidden = dt_rank_for(dim, cfg.dt_rank), int(dim * cfg.mlp_ratio)
    channels = K_ROUTES * d_inner
    flops = length * (
        5 * dim  # norm
        + dim * d_inner  # in_proj
        + d_inner * cfg.d_conv**2  # depthwise conv
        + K_ROUTES * (rank + 2 * n) * d_inner  # x_proj
        + channels * rank  # dt_proj
        + 9 * channels * n + channels  # selective scan
        + 5 * d_inner  # out_norm
        + d_inner * dim  # out_proj
        + 5 * dim  # norm2
        + 2 * dim * hidden  # fc1, fc2
    )
    # Inputs autograd keeps: norm, in_proj, conv, SiLU (C, C, Di, Di); scan u, delta, B/C, output
    # (3·Dch + 2·K·N); x_proj input (Dch); merge, out_norm, out_proj (3·Di); norm2, fc1 (2C); GELU, fc2 (2·hidden).
    kept = length * (4 * dim + 4 * d_inner + 4 * channels + 2 * K_ROUTES * n + 2 * hidden)
    return flops, kept


def analyze(cfg: VMambaConfig, height: int = 224, width: int | None = None) -> list[StageCost]:
    """Per-stage FLOPs and activation elements for a (height × width) image, batch 1.

    The stem is booked to stage 0, each downsample to the stage it ends, the classifier to the last stage.
    """
    width = height if width is None else width
    dims = cfg.dims
    sizes = stage_sizes(height, width, len(dims))
    h1, w1 = _half(height), _half(width)
    half = dims[0] // 2
    stem_flops = h1 * w1 * half * (cfg.in_chans * 9 + 5) + sizes[0][0] * sizes[0][1] * dims[0] * (half * 9 + 5)
    stem_kept = cfg.in_chans * height * width + h1 * w1 * half * 3 + sizes[0][0] * sizes[0][1] * dims[0] * 2
    out = []
    for i, (dim, (h, w)) in enumerate(zip(dims, sizes, strict=True)):
        length = h * w
        block_flops, block_kept = _block_costs(cfg, dim, length)
        flops, kept = cfg.depths[i] * block_flops, cfg.depths[i] * block_kept
        if i == 0:
            flops, kept = flops + stem_flops, kept + stem_kept
        if i + 1 < len(dims):
            nh, nw = sizes[i + 1]
            flops += nh * nw * dims[i + 1] * (dim * 9 + 5)
            kept += length * dim + nh * nw * dims[i + 1] * 2
        else:
            flops += length * dim * 6 + dim * cfg.num_classes  # norm, avgpool, head
            kept += length * dim * 2
        out.append(StageCost(dim, h, w, flops, kept))
    return out


def count_params(cfg: VMambaConfig) -> int:
    """Number of parameters, built on the meta device (no memory)."""
    import torch

    from .vmamba import VSSM

    with torch.device("meta"):
        model = VSSM(cfg)
    return sum(p.numel() for p in model.parameters())
