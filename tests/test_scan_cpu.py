"""The chunked CPU path and the reference against the float64 reference, forward and backward."""

from __future__ import annotations

import itertools

import pytest
import torch
from scan_cases import OPTION_PATTERNS, OPTIONS, assert_matches_reference, make_case

import wsi_mamba_scan.cpu as cpu
from wsi_mamba_scan import resolve_backend, selective_scan, selective_scan_ref

LENGTHS = (1, 7, 64, 1000, 4099)
STATES = (1, 4, 16)
GROUPS = (1, 4)
GRID = list(itertools.product(LENGTHS, STATES, GROUPS))


def cpu_scan(**kwargs):
    return selective_scan(**kwargs, backend="cpu")


@pytest.mark.parametrize(("length", "dstate", "groups"), GRID)
def test_cpu_matches_reference_fp32(length: int, dstate: int, groups: int) -> None:
    index = GRID.index((length, dstate, groups))
    options = OPTION_PATTERNS[index % len(OPTION_PATTERNS)]
    case = make_case(2, 8, length, dstate, groups, options, seed=1000 + index)
    assert_matches_reference(cpu_scan, case, torch.float32)


@pytest.mark.parametrize("options", [frozenset(c) for n in range(6) for c in itertools.combinations(OPTIONS, n)])
def test_cpu_every_option_combination(options: frozenset[str]) -> None:
    case = make_case(2, 8, 33, 4, 4, options, seed=len(options) * 97 + sum(map(len, options)))
    assert_matches_reference(cpu_scan, case, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("length", "dstate", "groups"), [(64, 1, 4), (1000, 16, 1), (300, 4, 4)])
def test_cpu_dtypes(dtype: torch.dtype, length: int, dstate: int, groups: int) -> None:
    case = make_case(2, 8, length, dstate, groups, OPTION_PATTERNS[0], seed=length + dstate)
    assert_matches_reference(cpu_scan, case, dtype)


@pytest.mark.parametrize(("length", "dstate", "groups"), [(65, 1, 1), (1000, 4, 4), (4099, 1, 4), (333, 16, 1)])
def test_cpu_many_blocks(monkeypatch: pytest.MonkeyPatch, length: int, dstate: int, groups: int) -> None:
    """A tiny element budget forces blocks of MIN_BLOCK steps: the state must carry across them."""
    monkeypatch.setattr(cpu, "MAX_BLOCK_ELEMENTS", 1)
    assert cpu.block_length(2, 8, dstate, length) == min(length, cpu.MIN_BLOCK) or length < cpu.MIN_BLOCK
    case = make_case(2, 8, length, dstate, groups, OPTION_PATTERNS[length % len(OPTION_PATTERNS)], seed=length)
    assert_matches_reference(cpu_scan, case, torch.float32)
    assert_matches_reference(cpu_scan, case, torch.float64)


def test_cpu_gradcheck_float64() -> None:
    """Backward against finite differences, independently of the reference's autograd."""
    case = make_case(1, 4, 9, 2, 2, OPTION_PATTERNS[0], seed=5)
    names = [name for name, value in case.inputs.items() if value is not None]
    tensors = case.tensors(torch.float64)

    def fn(*values):
        y, _ = selective_scan(**dict(zip(names, values, strict=True)), delta_softplus=True,
                              return_last_state=True, backend="cpu")
        return y

    assert torch.autograd.gradcheck(fn, tuple(tensors[n] for n in names), eps=1e-6, atol=1e-7, rtol=1e-6)


def test_cpu_non_contiguous_inputs() -> None:
    case = make_case(2, 8, 50, 4, 4, OPTION_PATTERNS[0], seed=11)
    base = {k: v for k, v in case.tensors(torch.float32).items()}
    # same values, transposed storage
    strided = {k: None if v is None else v.detach().mT.contiguous().mT.requires_grad_(True) if v.dim() >= 2
               else v.detach().clone().requires_grad_(True) for k, v in base.items()}
    assert not strided["u"].is_contiguous()
    y_base = selective_scan(**base, delta_softplus=True, backend="cpu")
    y_strided = selective_scan(**strided, delta_softplus=True, backend="cpu")
    torch.testing.assert_close(y_strided, y_base, rtol=0, atol=0)
    y_base.sum().backward()
    y_strided.sum().backward()
    for name, value in base.items():
        if value is not None:
            torch.testing.assert_close(strided[name].grad, value.grad, rtol=1e-6, atol=1e-7)


def test_shared_B_equals_one_group() -> None:
    case = make_case(2, 6, 40, 3, 1, frozenset(), seed=3)
    ins = {k: v for k, v in case.inputs.items() if v is not None}
    y3 = selective_scan(**ins, backend="cpu")
    y4 = selective_scan(**{**ins, "B": ins["B"][:, None], "C": ins["C"][:, None]}, backend="cpu")
    torch.testing.assert_close(y3, y4, rtol=0, atol=0)


def test_reference_by_hand() -> None:
    """Two steps, one channel, one state: the recurrence written out."""
    u = torch.tensor([[[1.0, 2.0]]], dtype=torch.float64)
    dt = torch.tensor([[[0.5, 0.25]]], dtype=torch.float64)
    A = torch.tensor([[-2.0]], dtype=torch.float64)
    B = torch.tensor([[[3.0, -1.0]]], dtype=torch.float64)
    C = torch.tensor([[[0.5, 2.0]]], dtype=torch.float64)
    D = torch.tensor([0.1], dtype=torch.float64)
    h1 = 0.5 * 3.0 * 1.0
    h2 = torch.exp(torch.tensor(-0.5)).item() * h1 + 0.25 * -1.0 * 2.0
    expected = torch.tensor([[[0.5 * h1 + 0.1, 2.0 * h2 + 0.2]]], dtype=torch.float64)
    y, last = selective_scan_ref(u, dt, A, B, C, D, return_last_state=True)
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(last, torch.tensor([[[h2]]], dtype=torch.float64))


def test_last_state_matches_reference_and_has_no_grad() -> None:
    case = make_case(1, 4, 100, 4, 2, frozenset({"return_last_state"}), seed=8)
    ins = case.tensors(torch.float32)
    _, last = selective_scan(**ins, return_last_state=True, backend="cpu")
    _, last_ref = selective_scan_ref(**case.tensors(torch.float64), return_last_state=True)
    assert last.dtype == torch.float32 and not last.requires_grad
    torch.testing.assert_close(last.double(), last_ref.detach(), rtol=1e-5, atol=1e-6)


def test_auto_backend_on_cpu_without_numba_is_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import wsi_mamba_scan.cpu_fused as fused

    monkeypatch.setattr(fused, "numba_importable", lambda: False)
    assert resolve_backend("auto", torch.device("cpu")) == "cpu"
    assert resolve_backend("reference", torch.device("cpu")) == "reference"
