"""SS2D: cross scan/merge, and the module against a slow per-route implementation on the reference scan."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wsi_mamba.models import SS2D, cross_merge, cross_scan
from wsi_mamba_scan import selective_scan_ref


def test_cross_scan_routes() -> None:
    x = torch.arange(6.0).reshape(1, 1, 2, 3)  # [[0, 1, 2], [3, 4, 5]]
    xs = cross_scan(x)[0, :, 0]
    assert xs.tolist() == [[0, 1, 2, 3, 4, 5], [0, 3, 1, 4, 2, 5], [5, 4, 3, 2, 1, 0], [5, 2, 4, 1, 3, 0]]


def test_cross_merge_of_cross_scan_is_four_times_input() -> None:
    x = torch.randn(2, 5, 7, 3)
    ys = cross_scan(x)
    assert ys.shape == (2, 4, 5, 21)
    torch.testing.assert_close(cross_merge(ys, 7, 3), 4 * x)


def route_index(height: int, width: int, k: int) -> torch.Tensor:
    """Pixel (row-major) index visited at each step of route k, built directly from the definition."""
    rows = [h * width + w for h in range(height) for w in range(width)]
    cols = [h * width + w for w in range(width) for h in range(height)]
    order = [rows, cols, rows[::-1], cols[::-1]][k]
    return torch.tensor(order)


def slow_ss2d(op: SS2D, x: torch.Tensor) -> torch.Tensor:
    """The v05_noz math written out per route in float64, each route scanned on its own."""
    p = {name: t.detach().double() for name, t in op.named_parameters()}
    x = x.double()
    batch, _, height, width = x.shape
    h = torch.einsum("bchw,dc->bdhw", x, p["in_proj.weight"])
    h = F.silu(F.conv2d(h, p["conv2d.weight"], padding=1, groups=op.d_inner))
    flat = h.flatten(2)
    merged = torch.zeros_like(flat)
    R, N, Di = op.dt_rank, op.d_state, op.d_inner
    for k in range(4):
        idx = route_index(height, width, k)
        u = flat[:, :, idx]
        dbl = torch.einsum("cd,bdl->bcl", p["x_proj_weight"][k], u)
        dt, Bk, Ck = dbl[:, :R], dbl[:, R : R + N], dbl[:, R + N :]
        delta = torch.einsum("dr,brl->bdl", p["dt_projs_weight"][k], dt)
        rows = slice(k * Di, (k + 1) * Di)
        y = selective_scan_ref(
            u, delta, -torch.exp(p["A_logs"][rows]), Bk, Ck, p["Ds"][rows],
            delta_bias=p["dt_projs_bias"][k], delta_softplus=True,
        )
        merged[:, :, idx] += y
    y = merged.reshape(batch, Di, height, width).permute(0, 2, 3, 1)
    y = F.layer_norm(y, (Di,), p["out_norm.weight"], p["out_norm.bias"]).permute(0, 3, 1, 2)
    return torch.einsum("bdhw,cd->bchw", y, p["out_proj.weight"])


def test_ss2d_matches_slow_per_route_implementation() -> None:
    torch.manual_seed(0)
    op = SS2D(dim=16, d_state=2, ssm_ratio=1.5, scan_backend="cpu")
    with torch.no_grad():  # non-trivial values everywhere
        op.A_logs.normal_(0, 0.5)
        op.Ds.normal_()
        op.out_norm.weight.normal_()
        op.out_norm.bias.normal_()
    x = torch.randn(2, 16, 5, 7)
    expected = slow_ss2d(op, x)
    for backend in ("cpu", "reference"):
        op.scan_backend = backend
        torch.testing.assert_close(op(x).double(), expected, atol=1e-4, rtol=1e-4)


def test_ss2d_backward_runs() -> None:
    op = SS2D(dim=8, d_state=1, ssm_ratio=1.0, scan_backend="cpu")
    x = torch.randn(1, 8, 3, 4, requires_grad=True)
    op(x).square().sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in op.parameters())
