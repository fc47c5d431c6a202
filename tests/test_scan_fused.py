"""The fused numba backend against the float64 reference, forward and backward, and its dispatch and fallback.

The kernels compile on first use (about 25 s for float32 and 20 s for float64 on 2 cores) and are cached on
disk (numba ``cache=True``), so later runs start in well under a second.
"""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
from scan_cases import OPTION_PATTERNS, OPTIONS, assert_matches_reference, make_case

import wsi_mamba_scan.cpu_fused as fused
from wsi_mamba_scan import resolve_backend, selective_scan

pytest.importorskip("numba")

# (batch, dim, L, N, G): L 1, odd, across chunks (256 steps) and not a multiple of the 16-step tiles;
# dim / G below 16 (padded lanes), a multiple of 16 (full lanes) and 40 (two full lanes and a padded one).
SHAPES = [
    (2, 8, 1, 1, 1),
    (1, 40, 7, 16, 1),
    (2, 64, 300, 4, 4),
    (1, 32, 1000, 1, 1),
    (2, 48, 513, 16, 4),
    (1, 16, 4099, 4, 4),
]


def numba_scan(**kwargs):
    return selective_scan(**kwargs, backend="numba")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("index", range(len(SHAPES)))
def test_numba_matches_reference(index: int, dtype: torch.dtype) -> None:
    batch, dim, length, dstate, groups = SHAPES[index]
    options = OPTION_PATTERNS[0] if length > 1000 else OPTION_PATTERNS[(index + 2 * (dtype == torch.float64)) % 7]
    case = make_case(batch, dim, length, dstate, groups, options, seed=2000 + index)
    assert_matches_reference(numba_scan, case, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("length", "dstate", "groups"), [(64, 1, 4), (300, 16, 1)])
def test_numba_16_bit_inputs(dtype: torch.dtype, length: int, dstate: int, groups: int) -> None:
    case = make_case(2, 8, length, dstate, groups, OPTION_PATTERNS[0], seed=length + dstate)
    assert_matches_reference(numba_scan, case, dtype)


@pytest.mark.parametrize("options", [frozenset(c) for n in range(6) for c in itertools.combinations(OPTIONS, n)])
def test_numba_every_option_combination(options: frozenset[str]) -> None:
    case = make_case(2, 20, 33, 4, 4, options, seed=len(options) * 31 + sum(map(len, options)))
    assert_matches_reference(numba_scan, case, torch.float32)


def test_numba_gradcheck_float64() -> None:
    """Backward against finite differences, independently of the reference's autograd."""
    case = make_case(1, 4, 9, 2, 2, OPTION_PATTERNS[0], seed=5)
    names = [name for name, value in case.inputs.items() if value is not None]
    tensors = case.tensors(torch.float64)

    def fn(*values):
        return numba_scan(**dict(zip(names, values, strict=True)), delta_softplus=True)

    assert torch.autograd.gradcheck(fn, tuple(tensors[n] for n in names), eps=1e-6, atol=1e-7, rtol=1e-6)


def test_numba_work_split(monkeypatch: pytest.MonkeyPatch) -> None:
    """Several items per (batch, group) on fewer workers (round robin, partial dB/dC sums) give the same result."""
    case = make_case(2, 80, 300, 4, 2, OPTION_PATTERNS[0], seed=17)
    single = assert_matches_reference(numba_scan, case, torch.float32)
    monkeypatch.setattr(fused, "plan_work", lambda args, threads: (3, 2))
    split = assert_matches_reference(numba_scan, case, torch.float32)
    assert split["y"] == pytest.approx(single["y"], abs=1e-7)


def test_numba_thread_count_follows_torch() -> None:
    import numba

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        case = make_case(1, 16, 20, 2, 1, frozenset(), seed=3)
        numba_scan(**case.tensors(torch.float32))
        assert numba.get_num_threads() == 1
        assert torch.get_num_threads() == 1  # numba's thread pool left torch's alone
    finally:
        torch.set_num_threads(before)


def test_numba_non_contiguous_inputs() -> None:
    case = make_case(2, 16, 50, 4, 4, OPTION_PATTERNS[0], seed=11)
    base = case.tensors(torch.float32)
    strided = {k: None if v is None else v.detach().mT.contiguous().mT.requires_grad_(True) if v.dim() >= 2
               else v.detach().clone().requires_grad_(True) for k, v in base.items()}
    assert not strided["u"].is_contiguous()
    y_base = numba_scan(**base, delta_softplus=True)
    y_strided = numba_scan(**strided, delta_softplus=True)
    torch.testing.assert_close(y_strided, y_base, rtol=0, atol=0)
    y_base.sum().backward()
    y_strided.sum().backward()
    for name, value in base.items():
        if value is not None:
            torch.testing.assert_close(strided[name].grad, value.grad, rtol=0, atol=0)


def test_numba_matches_cpu_backend_closely() -> None:
    case = make_case(2, 32, 700, 16, 4, OPTION_PATTERNS[0], seed=23)
    y_cpu, last_cpu = selective_scan(**case.tensors(torch.float32), **case.kwargs(), backend="cpu")
    y, last = numba_scan(**case.tensors(torch.float32), **case.kwargs())
    torch.testing.assert_close(y, y_cpu, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last, last_cpu, rtol=1e-5, atol=1e-5)


def test_numba_last_state_has_no_grad_and_no_checkpoints_without_grad() -> None:
    case = make_case(1, 16, 100, 4, 2, frozenset(), seed=8)
    ins = {k: None if v is None else v.detach() for k, v in case.tensors(torch.float32).items()}
    y, last = numba_scan(**ins, return_last_state=True)
    assert last.dtype == torch.float32 and not last.requires_grad and not y.requires_grad
    _, last_ref = selective_scan(**ins, return_last_state=True, backend="reference")
    torch.testing.assert_close(last, last_ref, rtol=1e-5, atol=1e-6)


def test_numba_checkpoints_only_when_a_backward_can_follow(monkeypatch: pytest.MonkeyPatch) -> None:
    saves = []
    real = fused.fused_forward
    monkeypatch.setattr(fused, "fused_forward", lambda args, sp, save: saves.append(save) or real(args, sp, save))
    case = make_case(1, 16, 30, 2, 1, frozenset(), seed=12)
    ins = case.tensors(torch.float32)  # leaves requiring grad
    with torch.no_grad():
        numba_scan(**ins)
    numba_scan(**{k: None if v is None else v.detach() for k, v in ins.items()})
    numba_scan(**ins).sum().backward()
    assert saves == [False, False, True] and ins["u"].grad is not None


def test_numba_propagates_nan() -> None:
    case = make_case(1, 16, 40, 4, 1, frozenset(), seed=9)
    ins = case.tensors(torch.float32)
    A = ins["A"].detach().clone()
    A[3, 1] = float("nan")
    y = numba_scan(**{**ins, "A": A})
    y_cpu = selective_scan(**{**ins, "A": A}, backend="cpu")
    assert torch.equal(torch.isnan(y), torch.isnan(y_cpu)) and torch.isnan(y[:, 3, 1:]).all()


def test_numba_refuses_other_devices() -> None:
    u = torch.randn(1, 4, 5, device="meta")
    with pytest.raises(ValueError, match="CPU tensors for the numba backend"):
        selective_scan(u, u, torch.randn(4, 2, device="meta"), torch.randn(1, 2, 5, device="meta"),
                       torch.randn(1, 2, 5, device="meta"), backend="numba")


def test_auto_picks_numba_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_backend("auto", torch.device("cpu")) == "numba"
    assert resolve_backend("cpu", torch.device("cpu")) == "cpu"
    calls = []
    real = fused.scan_fused
    monkeypatch.setattr(fused, "scan_fused", lambda *a, **k: calls.append(k) or real(*a, **k))
    case = make_case(1, 8, 10, 2, 1, frozenset(), seed=1)
    selective_scan(**case.tensors(torch.float32))
    assert calls == [{"fallback": True}]


def test_auto_without_numba_is_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fused, "numba_importable", lambda: False)
    assert resolve_backend("auto", torch.device("cpu")) == "cpu"


class _Broken:
    """Stands for a kernel module whose kernels fail on their first call (a JIT failure)."""

    @staticmethod
    def scan_forward(*args):
        raise RuntimeError("no LLVM today")

    scan_backward = scan_forward


@pytest.fixture
def fresh_status(monkeypatch: pytest.MonkeyPatch) -> dict:
    status = {"broken": None, "warned": False, "compiled": set()}
    monkeypatch.setattr(fused, "_status", status)
    return status


@pytest.mark.parametrize("failure", ["import", "jit"])
def test_auto_falls_back_to_cpu_once(monkeypatch: pytest.MonkeyPatch, fresh_status: dict, failure: str) -> None:
    def load():
        if failure == "import":
            raise ImportError("No module named 'numba'")
        return _Broken

    monkeypatch.setattr(fused, "load_kernels", load)
    case = make_case(2, 8, 70, 4, 4, OPTION_PATTERNS[0], seed=4)
    with pytest.warns(RuntimeWarning, match="numba backend failed.*chunked cpu backend"):
        errors = assert_matches_reference(selective_scan, case, torch.float32)
    assert max(errors.values()) < 1e-4
    assert fresh_status["broken"] is not None
    assert resolve_backend("auto", torch.device("cpu")) == "cpu"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once: not again
        assert_matches_reference(selective_scan, case, torch.float32)


def test_backward_falls_back_when_its_kernel_fails(monkeypatch: pytest.MonkeyPatch, fresh_status: dict) -> None:
    real = fused.load_kernels()

    class BackwardBroken:
        scan_forward = real.scan_forward
        scan_backward = _Broken.scan_backward

    monkeypatch.setattr(fused, "load_kernels", lambda: BackwardBroken)
    case = make_case(1, 8, 30, 2, 1, OPTION_PATTERNS[0], seed=6)
    with pytest.warns(RuntimeWarning, match="numba backend failed"):
        assert_matches_reference(selective_scan, case, torch.float32)


def test_explicit_numba_raises_when_unavailable(monkeypatch: pytest.MonkeyPatch, fresh_status: dict) -> None:
    monkeypatch.setattr(fused, "load_kernels", lambda: _Broken)
    case = make_case(1, 8, 10, 2, 1, frozenset(), seed=2)
    with pytest.raises(fused.KernelUnavailable, match="forward kernel failed on its first call"):
        numba_scan(**case.tensors(torch.float32))
    assert fresh_status["broken"] is None
