"""The plain recurrence, step by step: the ground truth every fast path is tested against.

Memory is O(batch * dim * L * N) and time is a Python loop over L: use it for tests and tiny inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .validation import ScanArgs, check_scan_args, compute_dtype, expand_groups


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan by the definition (mamba_ssm's ``selective_scan_ref`` semantics).

    Computes in float64 when any input is float64, else float32; returns ``y`` in ``u``'s dtype and,
    when asked, the last state ``(batch, dim, N)`` in the compute dtype. Differentiable by autograd.
    """
    args = check_scan_args(u, delta, A, B, C, D, z, delta_bias, backend="reference")
    y, state = scan_reference(args, delta_softplus)
    return (y, state) if return_last_state else y


def scan_reference(args: ScanArgs, delta_softplus: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The recurrence on validated ``args`` (no checks of its own): ``(y in u.dtype, last state)``."""
    dtype = compute_dtype(args.u, args.delta, args.A, args.B, args.C, args.D, args.z, args.delta_bias)
    dim = args.dim
    u_c, dt = args.u.to(dtype), args.delta.to(dtype)
    if args.delta_bias is not None:
        dt = dt + args.delta_bias.to(dtype)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    A_c = args.A.to(dtype)
    B_full = expand_groups(args.B.to(dtype), dim)  # (b, d, N, L)
    C_full = expand_groups(args.C.to(dtype), dim)
    decay = torch.exp(torch.einsum("bdl,dn->bdln", dt, A_c))
    drive = torch.einsum("bdl,bdnl,bdl->bdln", dt, B_full, u_c)
    state = u_c.new_zeros(args.batch, dim, args.dstate)
    ys = []
    # unbind, not indexing: indexing's backward writes a full-size gradient per step (O(L^2) time)
    for decay_t, drive_t, C_t in zip(decay.unbind(2), drive.unbind(2), C_full.unbind(3), strict=True):
        state = decay_t * state + drive_t
        ys.append((state * C_t).sum(-1))
    y = torch.stack(ys, dim=2)
    if args.D is not None:
        y = y + u_c * args.D.to(dtype)[:, None]
    if args.z is not None:
        y = y * F.silu(args.z.to(dtype))
    return y.to(args.u.dtype), state
