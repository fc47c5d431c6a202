"""The fused four-route SS2D kernel (inference on CPU) against the per-route float64 reference, and its dispatch."""

from __future__ import annotations

import pytest
import torch
from test_vmamba_ss2d import slow_ss2d

import wsi_mamba_scan.cpu_fused as fused
from wsi_mamba.models import SS2D
from wsi_mamba_scan.cross_scan import KernelUnavailable

# (batch, dim, d_state, ssm_ratio, height, width): lanes of 16 channels part-filled, chunks of 256 steps crossed
SHAPES = [(2, 16, 2, 1.5, 5, 7), (1, 24, 4, 1.0, 17, 19), (3, 8, 1, 2.0, 1, 9), (1, 40, 16, 1.0, 6, 1)]


def make_op(dim: int, d_state: int, ratio: float, dtype: torch.dtype, backend: str = "auto", seed: int = 0) -> SS2D:
    torch.manual_seed(seed)
    op = SS2D(dim=dim, d_state=d_state, ssm_ratio=ratio, scan_backend=backend).to(dtype)
    with torch.no_grad():  # non-trivial values everywhere
        op.A_logs.normal_(0, 0.5)
        op.Ds.normal_()
        op.dt_projs_bias.normal_(-2, 1)
        op.out_norm.weight.normal_()
        op.out_norm.bias.normal_()
    return op


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_ss2d_matches_per_route_reference(shape: tuple, dtype: torch.dtype) -> None:
    batch, dim, d_state, ratio, height, width = shape
    op = make_op(dim, d_state, ratio, dtype, seed=sum(shape))
    x = torch.randn(batch, dim, height, width, dtype=dtype)
    with torch.no_grad():
        h = op.act(op.conv2d(op.in_proj(x)))
        assert op.fused_cross_scan_applies(h)
        y = op(x)
    tolerance = 1e-9 if dtype == torch.float64 else 2e-4
    torch.testing.assert_close(y.double(), slow_ss2d(op, x), atol=tolerance, rtol=tolerance)


def test_fused_path_only_for_inference_with_a_numba_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    op = make_op(16, 2, 1.0, torch.float32)
    x = torch.randn(1, 16, 6, 5)
    h = op.act(op.conv2d(op.in_proj(x)))
    assert not op.fused_cross_scan_applies(h)  # parameters want gradients
    with torch.no_grad():
        fused_y = op(x)
        assert op.fused_cross_scan_applies(h.detach())
        for backend, applies in (("numba", True), ("cpu", False), ("reference", False)):
            op.scan_backend = backend
            assert op.fused_cross_scan_applies(h.detach()) == applies
        assert not op.fused_cross_scan_applies(h.detach().bfloat16())
    op.scan_backend = "auto"
    monkeypatch.setattr(SS2D, "cross_scan_fused", lambda *_: pytest.fail("fused path taken with autograd"))
    y = op(x)
    y.sum().backward()
    torch.testing.assert_close(y.detach(), fused_y, atol=1e-5, rtol=1e-5)


def test_fused_work_split_over_threads_gives_the_same_result() -> None:
    op = make_op(48, 2, 1.0, torch.float64)
    x = torch.randn(1, 48, 9, 11, dtype=torch.float64)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            with torch.no_grad():
                results.append(op(x))
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(results[0], results[1], atol=1e-12, rtol=1e-12)


class _BrokenCrossScan:
    @staticmethod
    def cross_scan_forward(*args):
        raise RuntimeError("no LLVM today")


@pytest.fixture
def fresh_status(monkeypatch: pytest.MonkeyPatch) -> dict:
    status = {"broken": None, "warned": False, "compiled": set()}
    monkeypatch.setattr(fused, "_status", status)
    return status


def test_auto_falls_back_to_separate_steps_when_the_kernel_fails(
    monkeypatch: pytest.MonkeyPatch, fresh_status: dict
) -> None:
    op = make_op(16, 2, 1.0, torch.float32, backend="cpu")
    x = torch.randn(1, 16, 4, 5)
    with torch.no_grad():
        expected = op(x)
        monkeypatch.setattr(fused, "load_kernels", lambda: _BrokenCrossScan)
        op.scan_backend = "numba"
        with pytest.raises(KernelUnavailable, match="cross scan kernel failed on its first call"):
            op(x)
        assert fresh_status["broken"] is None
        op.scan_backend = "auto"
        with pytest.warns(RuntimeWarning, match="numba backend failed"):
            y = op(x)
        assert fresh_status["broken"] is not None
        assert not op.fused_cross_scan_applies(op.act(op.conv2d(op.in_proj(x))))
    torch.testing.assert_close(y, expected)
