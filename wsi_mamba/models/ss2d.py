"""SS2D, the 2-D selective-scan mixer of VMamba, forward type "v05_noz" (all released v2 models).

in_proj → depthwise 3×3 conv → SiLU → cross scan (4 routes) → one grouped selective scan →
cross merge (sum) → LayerNorm → out_proj. Parameter names and shapes are the official ones. For inference on
CPU (no gradient wanted, numba usable, backend "auto" or "numba") the cross scan, Δ's projection, the scan and
the cross merge run as one fused kernel (:mod:`wsi_mamba_scan.cross_scan`); otherwise as separate steps.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from wsi_mamba_scan import selective_scan
from wsi_mamba_scan.cpu_fused import mark_broken
from wsi_mamba_scan.cross_scan import (
    KernelUnavailable,
    cross_scan_supported,
    cross_selective_scan,
    is_channels_last,
    kernel_dtype,
)

from .layers import LayerNorm2d, Linear2d

K_ROUTES = 4


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) → (B, 4, C, H·W): row-major, column-major, and both reversed."""
    rows = x.flatten(2)
    cols = x.transpose(2, 3).flatten(2)
    xs = torch.stack([rows, cols], dim=1)
    return torch.cat([xs, xs.flip(-1)], dim=1)


def cross_merge(ys: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 4, C, H·W) → (B, C, H, W): undo each route of :func:`cross_scan` and sum the four."""
    batch, _, channels, length = ys.shape
    ys = ys[:, :2] + ys[:, 2:].flip(-1)
    rows = ys[:, 0]
    cols = ys[:, 1].reshape(batch, channels, width, height).transpose(2, 3).reshape(batch, channels, length)
    return (rows + cols).reshape(batch, channels, height, width)


def route(x: torch.Tensor, k: int) -> torch.Tensor:
    """Route ``k`` of :func:`cross_scan` alone: (B, C, H, W) → (B, C, H·W)."""
    seq = x.flatten(2) if k % 2 == 0 else x.transpose(2, 3).flatten(2)
    return seq.flip(-1) if k >= 2 else seq


def unroute(y: torch.Tensor, k: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`route`: (B, C, H·W) → (B, C, H, W)."""
    if k >= 2:
        y = y.flip(-1)
    if k % 2 == 0:
        return y.unflatten(2, (height, width))
    return y.unflatten(2, (width, height)).transpose(2, 3)


def dt_rank_for(dim: int, dt_rank: int | str = "auto") -> int:
    """``"auto"`` = ceil(dim / 16), computed from the block width (not d_inner), as the official code does."""
    return math.ceil(dim / 16) if dt_rank == "auto" else int(dt_rank)


class SS2D(nn.Module):
    """2-D selective scan over a channel-first map (B, C, H, W) → (B, C, H, W).

    ``d_inner = int(ssm_ratio * dim)``; ``scan_backend`` is passed to :func:`selective_scan`.
    """

    def __init__(
        self,
        dim: int,
        d_state: int = 1,
        ssm_ratio: float = 2.0,
        dt_rank: int | str = "auto",
        d_conv: int = 3,
        conv_bias: bool = False,
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        d_inner = int(ssm_ratio * dim)
        rank = dt_rank_for(dim, dt_rank)
        self.d_inner, self.d_state, self.dt_rank = d_inner, d_state, rank
        self.scan_backend = scan_backend
        # Own parameters first, in the official state-dict order.
        self.x_proj_weight = nn.Parameter(torch.empty(K_ROUTES, rank + 2 * d_state, d_inner))
        self.A_logs = nn.Parameter(torch.empty(K_ROUTES * d_inner, d_state))
        self.Ds = nn.Parameter(torch.empty(K_ROUTES * d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(K_ROUTES, d_inner, rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(K_ROUTES, d_inner))
        self.out_norm = LayerNorm2d(d_inner)
        self.in_proj = Linear2d(dim, d_inner, bias=False)
        self.act = nn.SiLU()
        self.conv2d = nn.Conv2d(
            d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner, bias=conv_bias
        )
        self.out_proj = Linear2d(d_inner, dim, bias=False)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(
        self, dt_min: float = 1e-3, dt_max: float = 0.1, dt_init_floor: float = 1e-4
    ) -> None:
        """Published "v0" init of the scan parameters (the model-level init leaves these alone). Skipped on the
        meta device (a model built to receive a checkpoint): the values would be discarded, and meta ``exp``
        and ``rand`` run through torch's Python reference kernels, which import ``torch._dynamo`` (~1 s)."""
        if self.x_proj_weight.is_meta:
            return
        bound = self.d_inner**-0.5
        self.x_proj_weight.uniform_(-bound, bound)
        self.dt_projs_weight.uniform_(-(self.dt_rank**-0.5), self.dt_rank**-0.5)
        dt = torch.exp(
            torch.rand(K_ROUTES, self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ).clamp(min=dt_init_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        n = torch.arange(1, self.d_state + 1, dtype=torch.float32)
        self.A_logs.copy_(torch.log(n).expand_as(self.A_logs))
        self.Ds.fill_(1.0)

    def project_routes(self, xs: torch.Tensor, start: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Input projections of route sequences ``xs`` (B, k, Di, L), routes ``start .. start + k - 1``:
        Δ before its bias (B, k, Di, L), B and C (B, k, N, L)."""
        stop = start + xs.shape[1]
        x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight[start:stop])
        dts, Bs, Cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight[start:stop])
        return dts, Bs, Cs

    def scan_inputs(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """Arguments of the one selective-scan call for the conv output ``h`` (B, Di, H, W)."""
        batch, d_inner, height, width = h.shape
        length = height * width
        xs = cross_scan(h)  # (B, 4, Di, L)
        dts, Bs, Cs = self.project_routes(xs)
        return {
            "u": xs.reshape(batch, K_ROUTES * d_inner, length),
            "delta": dts.reshape(batch, K_ROUTES * d_inner, length),
            "A": -torch.exp(self.A_logs.float()),
            "B": Bs.contiguous(),
            "C": Cs.contiguous(),
            "D": self.Ds.float(),
            "delta_bias": self.dt_projs_bias.reshape(-1).float(),
        }

    def _scan_tensors(self) -> tuple[torch.Tensor, ...]:
        return self.x_proj_weight, self.A_logs, self.Ds, self.dt_projs_weight, self.dt_projs_bias

    def fused_cross_scan_applies(self, h: torch.Tensor) -> bool:
        """True when :meth:`forward` runs the fused four-route kernel on ``h``: inference on CPU (no tensor
        wanting a gradient), numba usable, and a scan backend of "auto" or "numba"."""
        if self.scan_backend not in ("auto", "numba") or not cross_scan_supported(h):
            return False
        return not (torch.is_grad_enabled() and any(t.requires_grad for t in (h, *self._scan_tensors())))

    def cross_scan_fused(self, h: torch.Tensor) -> torch.Tensor:
        """The four routes' scan of the conv output ``h`` (B, Di, H, W), merged, by the fused kernel."""
        weight = self.x_proj_weight.to(h.dtype)
        if is_channels_last(h):  # the kernel reads NHWC in place: project without a copy of the map
            x_dbl = torch.einsum("bld,kcd->bkcl", h.permute(0, 2, 3, 1).flatten(1, 2), weight)
        else:
            x_dbl = torch.einsum("bdl,kcd->bkcl", h.flatten(2), weight)
        A = -torch.exp(self.A_logs.to(kernel_dtype(h.dtype)))  # float32 for a bf16 map (CPU autocast)
        return cross_selective_scan(h, x_dbl, self.dt_projs_weight, A, self.Ds, self.dt_projs_bias.reshape(-1))

    def cross_scan_unfused(self, h: torch.Tensor) -> torch.Tensor:
        """The same as :meth:`cross_scan_fused` in separate steps (any device, dtype and backend; autograd)."""
        batch, d_inner, height, width = h.shape
        ys = selective_scan(**self.scan_inputs(h), delta_softplus=True, backend=self.scan_backend)
        return cross_merge(ys.reshape(batch, K_ROUTES, d_inner, height * width), height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.conv2d(self.in_proj(x)))
        y = None
        if self.fused_cross_scan_applies(h):
            try:
                y = self.cross_scan_fused(h)
            except KernelUnavailable as error:
                if self.scan_backend != "auto":
                    raise
                mark_broken(error)
        if y is None:
            y = self.cross_scan_unfused(h)
        y = self.out_norm(y).to(x.dtype)
        return self.out_proj(y)
