"""Inputs and error measures shared by the selective-scan tests."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wsi_mamba_scan import selective_scan_ref

OPTIONS = ("D", "z", "delta_bias", "delta_softplus", "return_last_state")
# Option patterns rotated over the shape grid: all on, all off, and each one off in turn.
OPTION_PATTERNS: tuple[frozenset[str], ...] = (
    frozenset(OPTIONS),
    frozenset(),
    *(frozenset(OPTIONS) - {name} for name in OPTIONS),
)
# Norm-wise relative error bounds from the issue: fp32 forward / gradients, 16-bit both.
TOLERANCE = {
    torch.float64: (1e-10, 1e-9),
    torch.float32: (1e-5, 1e-4),
    torch.bfloat16: (1e-2, 1e-2),
    torch.float16: (1e-2, 1e-2),
}
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


@dataclass
class ScanCase:
    """One set of random inputs; ``tensors()`` gives fresh leaf copies for one backend."""

    inputs: dict[str, torch.Tensor | None]
    delta_softplus: bool
    return_last_state: bool

    def tensors(self, dtype: torch.dtype, device: str | torch.device = "cpu") -> dict[str, torch.Tensor | None]:
        """Leaf tensors in ``dtype`` (A stays float32 unless float64), requiring grad."""
        out = {}
        for name, value in self.inputs.items():
            if value is None:
                out[name] = None
                continue
            target = dtype if name != "A" or dtype == torch.float64 else torch.float32
            out[name] = value.detach().to(device=device, dtype=target).clone().requires_grad_(True)
        return out

    def kwargs(self) -> dict[str, bool]:
        return {"delta_softplus": self.delta_softplus, "return_last_state": self.return_last_state}


def make_case(
    batch: int, dim: int, length: int, dstate: int, groups: int, options: frozenset[str], seed: int
) -> ScanCase:
    """Random inputs in the ranges Mamba/VMamba use: A < 0, delta > 0 (or raw when softplus is on)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    softplus = "delta_softplus" in options
    delta = randn(batch, dim, length) * 0.5 - 1.0 if softplus else torch.rand(
        batch, dim, length, generator=gen, dtype=torch.float64) * 0.2 + 0.01
    inputs: dict[str, torch.Tensor | None] = {
        "u": randn(batch, dim, length),
        "delta": delta,
        "A": -(torch.rand(dim, dstate, generator=gen, dtype=torch.float64) * 2.0 + 0.1),
        "B": randn(batch, groups, dstate, length) if groups > 1 else randn(batch, dstate, length),
        "C": randn(batch, groups, dstate, length) if groups > 1 else randn(batch, dstate, length),
        "D": randn(dim) if "D" in options else None,
        "z": randn(batch, dim, length) if "z" in options else None,
        "delta_bias": randn(dim) * 0.1 if "delta_bias" in options else None,
    }
    return ScanCase(inputs, softplus, "return_last_state" in options)


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|, computed in float64."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = expected.abs().max().item()
    return (actual - expected).abs().max().item() / max(scale, 1e-30)


def run_with_grads(fn, tensors: dict[str, torch.Tensor | None], case: ScanCase, grad_out: torch.Tensor):
    """Run ``fn`` (a selective_scan-like callable), backprop ``grad_out``; return outputs and grads."""
    result = fn(**tensors, **case.kwargs())
    y, last = (result if case.return_last_state else (result, None))
    y.backward(grad_out.to(y.dtype))
    grads = {name: t.grad for name, t in tensors.items() if t is not None}
    return y, last, grads


def reference_float64(case: ScanCase, dtype: torch.dtype, grad_out: torch.Tensor):
    """The float64 reference on the inputs rounded to ``dtype`` first, so only the backend's error shows."""
    rounded = {
        name: None if v is None else v.to(dtype if name != "A" or dtype == torch.float64 else torch.float32)
        for name, v in case.inputs.items()
    }
    tensors = {
        name: None if v is None else v.detach().double().clone().requires_grad_(True) for name, v in rounded.items()
    }
    return run_with_grads(selective_scan_ref, tensors, case, grad_out.double())


def assert_matches_reference(fn, case: ScanCase, dtype: torch.dtype, device: str | torch.device = "cpu"):
    """Compare ``fn`` in ``dtype`` with the float64 reference: output, last state and every gradient."""
    u = case.inputs["u"]
    grad_out = torch.randn(u.shape, generator=torch.Generator().manual_seed(1234), dtype=torch.float64)
    y_ref, last_ref, grads_ref = reference_float64(case, dtype, grad_out)
    tensors = case.tensors(dtype, device)
    y, last, grads = run_with_grads(fn, tensors, case, grad_out.to(device))
    fwd_tol, grad_tol = TOLERANCE[dtype]
    assert y.dtype == dtype and y.shape == u.shape
    assert torch.isfinite(y).all()
    errors = {"y": rel_err(y, y_ref)}
    if case.return_last_state:
        assert last.shape == (u.shape[0], u.shape[1], case.inputs["A"].shape[1])
        errors["last_state"] = rel_err(last, last_ref)
    for name, grad in grads_ref.items():
        assert grads[name] is not None, f"no gradient for {name}"
        assert grads[name].dtype == tensors[name].dtype and grads[name].shape == tensors[name].shape
        errors[f"d{name}"] = rel_err(grads[name], grad)
    bad = {k: v for k, v in errors.items() if v > (fwd_tol if k in ("y", "last_state") else grad_tol)}
    assert not bad, f"errors above tolerance ({fwd_tol:g} fwd / {grad_tol:g} grad): {bad}; all: {errors}"
    return errors
