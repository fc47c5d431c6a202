"""The fused four-route SS2D kernel (inference on CPU) against the per-route float64 reference, and its dispatch."""

from __future__ import annotations

import pytest
import torch
from test_vmamba_ss2d import slow_ss2d

import wsi_mamba_scan.cpu_fused as fused
from wsi_mamba.models import SS2D
from wsi_mamba_scan.cross_scan import KernelUnavailable, cross_selective_scan, is_channels_last

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
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_fused_ss2d_matches_per_route_reference(shape: tuple, dtype: torch.dtype, layout: torch.memory_format) -> None:
    """Both kernels: the row-major one, and the channels-last one that reads and writes NHWC in place."""
    batch, dim, d_state, ratio, height, width = shape
    op = make_op(dim, d_state, ratio, dtype, seed=sum(shape))
    x = torch.randn(batch, dim, height, width, dtype=dtype).contiguous(memory_format=layout)
    with torch.no_grad():
        h = op.act(op.conv2d(op.in_proj(x)))
        assert op.fused_cross_scan_applies(h)
        assert is_channels_last(h) == (layout == torch.channels_last)
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
        op.scan_backend = "auto"
        assert op.fused_cross_scan_applies(h.detach().bfloat16())  # half maps: scanned in float32
    monkeypatch.setattr(SS2D, "cross_scan_fused", lambda *_: pytest.fail("fused path taken with autograd"))
    y = op(x)
    y.sum().backward()
    torch.testing.assert_close(y.detach(), fused_y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES[:3])
@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_half_map_scanned_in_float32(shape: tuple, half: torch.dtype) -> None:
    """A bf16/fp16 map (either layout) gives the float64 scan of its rounded values to float32 accuracy, in float32."""
    batch, dim, d_state, ratio, height, width = shape
    op = make_op(dim, d_state, ratio, torch.float64, seed=sum(shape))
    h64 = torch.randn(batch, op.d_inner, height, width, dtype=torch.float64)
    h = h64.to(half).contiguous(memory_format=torch.channels_last)
    x_dbl = torch.einsum("bdl,kcd->bkcl", h64.flatten(2), op.x_proj_weight.detach())
    A = -torch.exp(op.A_logs.detach())
    rest = (op.dt_projs_weight.detach(), A, op.Ds.detach(), op.dt_projs_bias.detach().reshape(-1))
    y = cross_selective_scan(h, x_dbl.to(half), *rest)
    assert y.dtype == torch.float32
    expected = cross_selective_scan(h.double().contiguous(), x_dbl.to(half).double(), *rest)  # the other kernel
    torch.testing.assert_close(y.double(), expected, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("shape", SHAPES[:2])
def test_fused_ss2d_under_cpu_bf16_autocast(shape: tuple) -> None:
    """SS2D under CPU bf16 autocast takes the fused kernel and stays within bf16 error of the float64 reference,
    with a channels-last input as with a contiguous one."""
    batch, dim, d_state, ratio, height, width = shape
    op = make_op(dim, d_state, ratio, torch.float32, seed=sum(shape))
    x = torch.randn(batch, dim, height, width)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        h = op.act(op.conv2d(op.in_proj(x)))
        assert h.dtype == torch.bfloat16 and op.fused_cross_scan_applies(h)
        y = op(x)
        y_last = op(x.contiguous(memory_format=torch.channels_last))
    expected = slow_ss2d(op, x)
    scale = expected.abs().max().item()
    torch.testing.assert_close(y.double(), expected, atol=0.03 * scale, rtol=0.03)
    torch.testing.assert_close(y_last, y, atol=1e-2 * scale, rtol=1e-2)


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
                results.append(op(x.contiguous(memory_format=torch.channels_last)))
    finally:
        torch.set_num_threads(threads)
    for result in results[1:]:
        torch.testing.assert_close(result, results[0], atol=1e-12, rtol=1e-12)


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
