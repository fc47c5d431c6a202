"""SS2D's four-route scan fused into one CPU kernel, for inference (numba; no autograd).

The unfused SS2D builds the four route sequences of the map (row-major, column-major and both reversed) as one
(batch, 4·Di, L) copy, projects them to Δ, B and C route by route, scans, and flips and transposes the four
outputs back before summing them: several passes over 4·Di·L values besides the scan, and Δ (4·Di·L) written
and read again. Here the kernel reads the map in place (and one transposed copy for the column routes), walks
it forwards or backwards, computes Δ from its low-rank factor in registers, and adds each route's output into
a row-major and a column-major result, summed at the end. A channels-last map (the engine's tiles arrive NHWC) is
read in place by route position and the result written channels-last, by a kernel of its own: no transposed copy,
no zeroed outputs, no merge.

A bfloat16 or float16 map (CPU autocast) is scanned in float32, as the fused selective scan does: the map and
the projections are read once into float32 copies, the state and the sums stay float32, and the result is
returned in float32 for the caller's norm (no cast back and forth around the kernel).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .cpu_fused import CHUNK, KernelUnavailable, first_call_checked, fused_available, kernel_launch, plan_items

ROUTES = 4
FUSED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def cross_scan_supported(h: torch.Tensor) -> bool:
    """True when the fused kernel can take the map ``h``: a float CPU tensor (half types computed in float32),
    numba usable."""
    return h.device.type == "cpu" and h.dtype in FUSED_DTYPES and fused_available()


def kernel_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernel computes and returns in for a map of ``dtype``: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def is_channels_last(h: torch.Tensor) -> bool:
    """True when the map ``h`` (B, C, H, W) is stored channels-last (NHWC) and not also plainly contiguous."""
    return not h.is_contiguous() and h.is_contiguous(memory_format=torch.channels_last)


def cross_selective_scan(
    h: torch.Tensor,
    x_dbl: torch.Tensor,
    dt_weight: torch.Tensor,
    A: torch.Tensor,
    D: torch.Tensor,
    delta_bias: torch.Tensor,
) -> torch.Tensor:
    """Sum over the four routes of the selective scan of ``h`` (batch, Di, H, W), back in map order.

    ``x_dbl`` (batch, 4, R + 2N, H·W): per map position and route the low-rank Δ factor, B and C (map order);
    ``dt_weight`` (4, Di, R); ``A`` (4·Di, N); ``D``, ``delta_bias`` (4·Di,); Δ goes through softplus. Returns
    :func:`kernel_dtype` of ``h``'s dtype (float32 for a half-precision map). Raises
    :class:`~wsi_mamba_scan.cpu_fused.KernelUnavailable` when numba cannot run the kernel."""
    batch, heads, height, width = h.shape
    length = height * width
    dtype = kernel_dtype(h.dtype)
    rank = dt_weight.shape[-1]
    dstate = A.shape[-1]
    if x_dbl.shape != (batch, ROUTES, rank + 2 * dstate, length):
        raise ValueError(f"cross_selective_scan: x_dbl has shape {tuple(x_dbl.shape)}, expected "
                         f"{(batch, ROUTES, rank + 2 * dstate, length)}")

    def array(x: torch.Tensor):
        return x.detach().to(dtype).contiguous().numpy()

    if is_channels_last(h):
        return _cross_scan_nhwc(h, x_dbl, dt_weight, A, D, delta_bias, dtype, array)
    # one pass for the row-major map whatever h's dtype and layout (bf16 channels-last under CPU autocast)
    rows = h.detach().to(dtype, memory_format=torch.contiguous_format)
    map_rows = rows.reshape(batch, heads, length)
    map_cols = rows.transpose(2, 3).reshape(batch, heads, length)
    # routes 1 and 3 read their projections in column-major order, as they read the map
    x_dbl = x_dbl.detach().to(dtype, copy=True)
    x_dbl[:, 1::2] = x_dbl[:, 1::2].unflatten(-1, (height, width)).transpose(-1, -2).flatten(-2)
    y_rows = torch.zeros((batch, heads, length), dtype=dtype)
    y_cols = torch.zeros((batch, heads, length), dtype=dtype)
    with kernel_launch() as (kernels, threads):
        splits, workers = plan_items(heads, batch, threads)  # items: runs of lanes of one batch element
        first_call_checked(
            kernels.cross_scan_forward, "cross scan", dtype, array(map_rows), array(map_cols), array(x_dbl),
            array(dt_weight.reshape(ROUTES * heads, rank)), array(A), array(D), array(delta_bias), rank, CHUNK,
            splits, workers, y_rows.numpy(), y_cols.numpy(),
        )
    y = y_rows.view(batch, heads, height, width)
    return y.add_(y_cols.view(batch, heads, width, height).transpose(2, 3))


def _cross_scan_nhwc(
    h: torch.Tensor,
    x_dbl: torch.Tensor,
    dt_weight: torch.Tensor,
    A: torch.Tensor,
    D: torch.Tensor,
    delta_bias: torch.Tensor,
    dtype: torch.dtype,
    array: Callable[[torch.Tensor], np.ndarray],
) -> torch.Tensor:
    """:func:`cross_selective_scan` of a channels-last map: the kernel reads the NHWC memory in place and writes a
    channels-last result, which the norm after it reads without a copy."""
    batch, heads, height, width = h.shape
    length = height * width
    rank = dt_weight.shape[-1]
    x_map = h.detach().permute(0, 2, 3, 1).reshape(batch, length, heads)  # a view: no copy for float32
    y = torch.empty((batch, length, heads), dtype=dtype)
    with kernel_launch() as (kernels, threads):
        splits, workers = plan_items(heads, batch, threads)
        first_call_checked(
            kernels.cross_scan_forward_nhwc, "cross scan (channels-last)", dtype, array(x_map), array(x_dbl),
            array(dt_weight.reshape(ROUTES * heads, rank)), array(A), array(D), array(delta_bias), rank, height,
            width, CHUNK, splits, workers, y.numpy(),
        )
    return y.view(batch, height, width, heads).permute(0, 3, 1, 2)


__all__ = ["KernelUnavailable", "cross_scan_supported", "cross_selective_scan", "is_channels_last", "kernel_dtype"]
