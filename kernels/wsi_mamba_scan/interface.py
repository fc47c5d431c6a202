"""The public ``selective_scan``: validation, backend dispatch and autograd."""

from __future__ import annotations

import torch

from .validation import check_scan_args


def triton_available() -> bool:
    """True when Triton imports (Linux wheels only)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map ``"auto"`` to a concrete backend: triton on CUDA tensors when Triton imports; on CPU tensors numba
    when it can be found (and has not failed in this process), the chunked cpu path otherwise."""
    if backend != "auto":
        return backend
    if device.type == "cuda" and triton_available():
        return "triton"
    if device.type == "cpu":
        from .cpu_fused import fused_available

        if fused_available():
            return "numba"
    return "cpu"


def selective_scan(
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
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan with mamba_ssm's semantics.

    ``u, delta, z``: (batch, dim, L); ``A``: (dim, N); ``B, C``: (batch, N, L) or (batch, G, N, L);
    ``D, delta_bias``: (dim,). Returns ``y`` (batch, dim, L) in ``u``'s dtype and, with
    ``return_last_state``, the final state (batch, dim, N) in float32 (float64 for float64 inputs);
    the last state carries no gradient. ``backend``: ``"auto"`` (triton on CUDA; numba on CPU when it
    imports, falling back to cpu with a warning if it fails; cpu otherwise), ``"reference"``, ``"cpu"``,
    ``"numba"`` or ``"triton"``.
    """
    args = check_scan_args(u, delta, A, B, C, D, z, delta_bias, backend=backend)
    chosen = resolve_backend(backend, u.device)
    if chosen == "reference":
        from .reference import scan_reference as run
    elif chosen == "cpu":
        from .cpu import scan_chunked as run
    elif chosen == "numba":
        from .cpu_fused import scan_fused

        def run(args, softplus):
            return scan_fused(args, softplus, fallback=backend == "auto")
    else:
        from .triton_scan import check_triton_device
        from .triton_scan import scan_triton as run

        check_triton_device(args.u)
    y, last_state = run(args, delta_softplus)
    return (y, last_state) if return_last_state else y
