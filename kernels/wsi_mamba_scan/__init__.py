"""Selective scan (Mamba's S6 recurrence) for long sequences: reference, chunked CPU and Triton backends.

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
    y_t = C_t . h_t + D * u_t,   y <- y * silu(z)

``from wsi_mamba_scan import selective_scan`` gives the dispatching, differentiable operator.
"""

from .interface import resolve_backend, selective_scan, triton_available
from .reference import selective_scan_ref
from .validation import SCAN_BACKENDS

__all__ = ["SCAN_BACKENDS", "resolve_backend", "selective_scan", "selective_scan_ref", "triton_available"]
