"""Bad input raises ValueError naming the argument, its shape and what was expected."""

from __future__ import annotations

import pytest
import torch

from wsi_mamba_scan import interface, reference, selective_scan, selective_scan_ref


def good(batch=2, dim=8, length=10, dstate=4, groups=2) -> dict[str, torch.Tensor]:
    return {
        "u": torch.randn(batch, dim, length),
        "delta": torch.rand(batch, dim, length),
        "A": -torch.rand(dim, dstate),
        "B": torch.randn(batch, groups, dstate, length),
        "C": torch.randn(batch, groups, dstate, length),
    }


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"delta": torch.rand(2, 8, 11)}, r"delta has shape \(2, 8, 11\).*expected shape \(2, 8, 10\)"),
        ({"u": torch.randn(2, 8)}, r"u has shape \(2, 8\).*expected 3 dimensions"),
        ({"A": -torch.rand(7, 4)}, r"A has shape \(7, 4\).*expected \(dim, N\) with dim = 8"),
        ({"B": torch.randn(2, 2, 4, 9)}, r"B has shape \(2, 2, 4, 9\).*expected \(batch, N, L\) = \(2, 4, 10\)"),
        ({"C": torch.randn(2, 4, 10)}, r"C has shape \(2, 1, 4, 10\).*expected the shape of B \(2, 2, 4, 10\)"),
        ({"B": torch.randn(2, 3, 4, 10), "C": torch.randn(2, 3, 4, 10)}, r"B has shape \(2, 3, 4, 10\).*divides dim 8"),
        ({"D": torch.randn(9)}, r"D has shape \(9,\).*expected shape \(8,\)"),
        ({"z": torch.randn(2, 8, 9)}, r"z has shape \(2, 8, 9\)"),
        ({"delta_bias": torch.randn(8, 1)}, r"delta_bias has shape \(8, 1\)"),
        ({"u": torch.randint(0, 3, (2, 8, 10))}, r"u has shape \(2, 8, 10\) and dtype torch.int64.*floating"),
        ({"A": torch.ones(8, 4, dtype=torch.int32)}, r"A has shape \(8, 4\) and dtype torch.int32.*floating"),
        ({"B": torch.randn(2, 2, 4, 10, device="meta")}, r"B with shape \(2, 2, 4, 10\) is on meta, expected u's"),
    ],
)
@pytest.mark.parametrize("backend", ["auto", "reference", "cpu"])
def test_bad_arguments(change: dict[str, torch.Tensor], pattern: str, backend: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        selective_scan(**{**good(), **change}, backend=backend)


def test_triton_rejects_large_state() -> None:
    with pytest.raises(ValueError, match=r"A has shape \(8, 17\).*N <= 16 for the triton backend"):
        selective_scan(**good(dstate=17), backend="triton")


def test_cpu_takes_large_state() -> None:
    assert selective_scan(**good(dstate=17), backend="cpu").shape == (2, 8, 10)


def test_unknown_backend() -> None:
    with pytest.raises(ValueError, match="backend is 'cuda'"):
        selective_scan(**good(), backend="cuda")


@pytest.mark.parametrize("backend", ["auto", "reference", "cpu"])
def test_inputs_are_validated_once(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = interface.check_scan_args

    def counting(*args, **kwargs):
        calls.append(kwargs["backend"])
        return real(*args, **kwargs)

    for module in (interface, reference):
        monkeypatch.setattr(module, "check_scan_args", counting)
    selective_scan(**good(), backend=backend)
    assert calls == [backend]
    calls.clear()
    selective_scan_ref(**good())
    assert calls == ["reference"]
