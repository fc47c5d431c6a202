"""Argument checks and normalisation shared by every selective-scan backend."""

from __future__ import annotations

from dataclasses import dataclass

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
SCAN_BACKENDS = ("auto", "reference", "cpu", "numba", "triton")
TRITON_MAX_STATE = 16


@dataclass
class ScanArgs:
    """Validated inputs; ``B`` and ``C`` are always 4-D ``(batch, groups, N, L)``."""

    u: torch.Tensor
    delta: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    D: torch.Tensor | None
    z: torch.Tensor | None
    delta_bias: torch.Tensor | None

    @property
    def batch(self) -> int:
        return self.u.shape[0]

    @property
    def dim(self) -> int:
        return self.u.shape[1]

    @property
    def length(self) -> int:
        return self.u.shape[2]

    @property
    def dstate(self) -> int:
        return self.A.shape[1]

    @property
    def groups(self) -> int:
        return self.B.shape[1]


def _fail(name: str, tensor: torch.Tensor, expected: str) -> ValueError:
    return ValueError(
        f"selective_scan: {name} has shape {tuple(tensor.shape)} and dtype {tensor.dtype}, expected {expected}"
    )


def _check_float(name: str, tensor: torch.Tensor) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"selective_scan: {name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in FLOAT_DTYPES:
        raise _fail(name, tensor, "a floating dtype (float16, bfloat16, float32 or float64)")


def _check_shape(name: str, tensor: torch.Tensor, shape: tuple[int, ...], expected: str) -> None:
    _check_float(name, tensor)
    if tuple(tensor.shape) != shape:
        raise _fail(name, tensor, f"shape {shape} {expected}".rstrip())


def _as_grouped(name: str, tensor: torch.Tensor, batch: int, dim: int, dstate: int, length: int) -> torch.Tensor:
    _check_float(name, tensor)
    expected = f"(batch, N, L) = {(batch, dstate, length)} or (batch, G, N, L) with dim {dim} divisible by G"
    if tensor.dim() == 3:
        tensor = tensor.unsqueeze(1)
    if tensor.dim() != 4:
        raise _fail(name, tensor, expected)
    b, groups, n, length_ = tensor.shape
    if (b, n, length_) != (batch, dstate, length) or groups < 1:
        raise _fail(name, tensor, expected)
    if dim % groups != 0:
        raise _fail(name, tensor, f"a group count G that divides dim {dim} (G = {groups} does not)")
    return tensor


def check_scan_args(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    backend: str = "auto",
) -> ScanArgs:
    """Validate shapes, dtypes, devices and backend; raise ``ValueError`` naming the bad argument."""
    if backend not in SCAN_BACKENDS:
        raise ValueError(f"selective_scan: backend is {backend!r}, expected one of {', '.join(SCAN_BACKENDS)}")
    _check_float("u", u)
    if u.dim() != 3:
        raise _fail("u", u, "3 dimensions (batch, dim, L)")
    batch, dim, length = u.shape
    if length < 1 or dim < 1 or batch < 1:
        raise _fail("u", u, "batch, dim and L of at least 1")
    _check_shape("delta", delta, tuple(u.shape), "(batch, dim, L), the shape of u")
    _check_float("A", A)
    if A.dim() != 2 or A.shape[0] != dim or A.shape[1] < 1:
        raise _fail("A", A, f"(dim, N) with dim = {dim}")
    dstate = A.shape[1]
    B = _as_grouped("B", B, batch, dim, dstate, length)
    C = _as_grouped("C", C, batch, dim, dstate, length)
    if C.shape != B.shape:
        raise _fail("C", C, f"the shape of B {tuple(B.shape)}")
    if D is not None:
        _check_shape("D", D, (dim,), "(dim,)")
    if delta_bias is not None:
        _check_shape("delta_bias", delta_bias, (dim,), "(dim,)")
    if z is not None:
        _check_shape("z", z, tuple(u.shape), "(batch, dim, L), the shape of u")
    named = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias}
    for name, tensor in named.items():
        if tensor is not None and tensor.device != u.device:
            raise ValueError(
                f"selective_scan: {name} with shape {tuple(tensor.shape)} is on {tensor.device}, "
                f"expected u's device {u.device}"
            )
    if backend == "numba" and u.device.type != "cpu":
        raise ValueError(f"selective_scan: u is on {u.device}, expected CPU tensors for the numba backend")
    if backend == "triton" and dstate > TRITON_MAX_STATE:
        raise _fail("A", A, f"(dim, N) with N <= {TRITON_MAX_STATE} for the triton backend")
    return ScanArgs(u, delta, A, B, C, D, z, delta_bias)


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 when any input is float64, float32 otherwise: the state is never kept in 16 bits."""
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def expand_groups(x: torch.Tensor, dim: int) -> torch.Tensor:
    """(batch, G, N, L) -> (batch, dim, N, L): channel d reads group d // (dim // G)."""
    return x.repeat_interleave(dim // x.shape[1], dim=1)
