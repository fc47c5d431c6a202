"""Fused CPU selective scan: numba kernels, one pass over L per channel, no (dim, N, L) temporaries.

The kernels (``numba_kernels.py``) carry each channel's N-vector state through the sequence in small
cache-resident buffers, 16 channels per SIMD lane; the forward keeps the state entering every chunk of
``CHUNK`` steps only when a backward will follow (batch·dim·N·L / 256 elements), and the backward recomputes
one chunk at a time from it. Every option of ``selective_scan`` is fused (D, z, delta_bias, delta_softplus,
the last state); float16 and bfloat16 inputs are computed in float32 and cast back, float64 in float64.
Parallel over (batch, group, runs of channels) with ``torch.get_num_threads()`` numba threads.

numba is imported on the first call, not with this module. With ``backend="auto"`` a missing numba or a
failure to compile on the first call warns once and falls back to the chunked ``cpu`` path for the rest of
the process; an explicit ``backend="numba"`` raises instead.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

import torch

from .cpu import ChunkedScan, chunked_backward, chunked_forward
from .validation import ScanArgs, compute_dtype

ORDER = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
LANES = 16  # numba_kernels.LANES, repeated here so that planning does not import numba

CHUNK = 256  # steps per chunk: the checkpoint spacing, and the length of the kernels' scratch tiles

_LOCK = threading.Lock()  # numba's workqueue threading layer refuses concurrent parallel calls
_status: dict[str, object] = {"broken": None, "warned": False, "compiled": set()}


@functools.lru_cache(maxsize=1)
def numba_importable() -> bool:
    """True when the numba package can be found (it is not imported here)."""
    return importlib.util.find_spec("numba") is not None


def fused_available() -> bool:
    """True unless numba is missing or an earlier call found the kernels broken in this process."""
    return _status["broken"] is None and numba_importable()


def load_kernels():
    """The numba kernel module (imports numba; compiles nothing until a kernel's first call).

    Unless ``NUMBA_THREADING_LAYER`` says otherwise, numba's own ``workqueue`` thread pool is chosen before the
    first parallel launch: the OpenMP layer shares torch's OpenMP runtime and reset torch's thread count
    (``torch.set_num_threads(1)`` read 2 after one call) and cost 1-9 ms per call, against ~0.1 ms (measured).
    workqueue refuses concurrent calls from several Python threads: ``_LOCK`` serialises ours.
    """
    import numba

    if "NUMBA_THREADING_LAYER" not in os.environ and numba.config.THREADING_LAYER == "default":
        numba.config.THREADING_LAYER = "workqueue"
    from . import numba_kernels

    return numba_kernels


def plan_items(channels: int, units: int, threads: int) -> tuple[int, int]:
    """(items per unit, parallel workers) for ``units`` independent runs of ``channels`` channels each. Items:
    about two per thread, at most one per 16-channel lane group; each worker takes every ``workers``-th item and
    owns one set of scratch buffers."""
    lanes = -(-channels // LANES)
    splits = max(1, min(lanes, -(-2 * threads // units)))
    return splits, max(1, min(threads, units * splits))


def plan_work(args: ScanArgs, threads: int) -> tuple[int, int]:
    """(items per (batch, group), parallel workers) of the scan: :func:`plan_items` over batch · groups."""
    return plan_items(args.dim // args.groups, args.batch * args.groups, threads)


def mark_broken(error: BaseException) -> None:
    """Remember that the numba kernels failed (``backend="auto"`` uses the chunked path from now on); warn once."""
    _status["broken"] = error
    if not _status["warned"]:
        _status["warned"] = True
        warnings.warn(
            f"selective_scan: the numba backend failed ({type(error).__name__}: {error}); "
            "using the chunked cpu backend instead",
            RuntimeWarning,
            stacklevel=4,
        )


def _threads() -> int:
    import numba

    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(threads)
    return threads


class Prepared:
    """Inputs in the compute dtype as contiguous arrays, B and C time-major, absent options as zeros."""

    def __init__(self, args: ScanArgs, dtype: torch.dtype):
        def cast(x: torch.Tensor) -> torch.Tensor:
            return x.detach().to(dtype).contiguous()

        self.dtype = dtype
        self.u, self.delta, self.A = cast(args.u), cast(args.delta), cast(args.A)
        self.Bt = args.B.detach().to(dtype).transpose(-1, -2).contiguous()  # (batch, G, L, N)
        self.Ct = args.C.detach().to(dtype).transpose(-1, -2).contiguous()
        zeros = torch.zeros(args.dim, dtype=dtype)
        self.D = zeros if args.D is None else cast(args.D)
        self.bias = zeros if args.delta_bias is None else cast(args.delta_bias)
        self.gated = args.z is not None
        self.z = cast(args.z) if self.gated else torch.zeros((1, 1, 1), dtype=dtype)

    def inputs(self) -> tuple:
        return tuple(t.numpy() for t in (self.u, self.delta, self.A, self.Bt, self.Ct, self.D, self.bias, self.z))


class KernelUnavailable(RuntimeError):
    """numba does not import, or a kernel failed on its first call for a dtype (its compilation)."""


def _kernels():
    try:
        return load_kernels()
    except Exception as error:  # ImportError, or whatever a broken numba install raises on import
        raise KernelUnavailable(f"numba does not import: {error}") from error


@contextmanager
def kernel_launch() -> Iterator[tuple[ModuleType, int]]:
    """(the kernel module, the numba thread count to plan for), held under the lock that serialises launches.
    Raises ``KernelUnavailable`` when numba does not import."""
    kernels = _kernels()
    with _LOCK:
        yield kernels, _threads()


def first_call_checked(kernel, name: str, dtype: torch.dtype, *arguments) -> None:
    """Run ``kernel``; a failure on its first call per dtype (the compilation) raises ``KernelUnavailable``."""
    key = (name, dtype)
    if key in _status["compiled"]:
        kernel(*arguments)
        return
    try:
        kernel(*arguments)
    except Exception as error:
        raise KernelUnavailable(f"the {name} kernel failed on its first call for {dtype}: {error}") from error
    _status["compiled"].add(key)


def fused_forward(args: ScanArgs, softplus: bool, save: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y in u's dtype, last state, chunk checkpoints (batch, dim, chunks, N) or an empty tensor)."""
    dtype = compute_dtype(args.u, args.delta, args.A, args.B, args.C, args.D, args.z, args.delta_bias)
    prepared = Prepared(args, dtype)
    chunk = CHUNK
    chunks = -(-args.length // chunk)
    y = torch.empty((args.batch, args.dim, args.length), dtype=dtype)
    last = torch.empty((args.batch, args.dim, args.dstate), dtype=dtype)
    ckpt = torch.empty((args.batch, args.dim, chunks, args.dstate) if save else (1, 1, 1, 1), dtype=dtype)
    with kernel_launch() as (kernels, threads):
        splits, workers = plan_work(args, threads)
        first_call_checked(
            kernels.scan_forward, "forward", dtype, *prepared.inputs(), softplus, prepared.gated, chunk, splits,
            workers, y.numpy(), last.numpy(), ckpt.numpy(), save,
        )
    return y.to(args.u.dtype), last, ckpt


def fused_backward(args: ScanArgs, softplus: bool, ckpt: torch.Tensor, grad_y: torch.Tensor) -> dict:
    """Gradients of every input, each in its input's dtype."""
    dtype = ckpt.dtype
    prepared = Prepared(args, dtype)
    chunk = CHUNK
    dy = grad_y.detach().to(dtype).contiguous()
    seq = (args.batch, args.dim, args.length)
    du, ddelta = torch.empty(seq, dtype=dtype), torch.empty(seq, dtype=dtype)
    dz = torch.empty(seq if prepared.gated else (1, 1, 1), dtype=dtype)
    dA = torch.empty((args.batch, args.dim, args.dstate), dtype=torch.float64)
    dD = torch.empty((args.batch, args.dim), dtype=torch.float64)
    dbias = torch.empty((args.batch, args.dim), dtype=torch.float64)
    with kernel_launch() as (kernels, threads):
        splits, workers = plan_work(args, threads)
        grouped = (splits, args.batch, args.groups, args.length, args.dstate)
        dBt, dCt = torch.empty(grouped, dtype=dtype), torch.empty(grouped, dtype=dtype)
        first_call_checked(
            kernels.scan_backward, "backward", dtype, *prepared.inputs(), softplus, prepared.gated, chunk, splits,
            workers, ckpt.numpy(), dy.numpy(), du.numpy(), ddelta.numpy(), dz.numpy(), dA.numpy(), dD.numpy(),
            dbias.numpy(), dBt.numpy(), dCt.numpy(),
        )
    return {
        "u": du.to(args.u.dtype),
        "delta": ddelta.to(args.delta.dtype),
        "A": dA.sum(0).to(args.A.dtype),
        "B": dBt.sum(0).transpose(-1, -2).to(args.B.dtype),
        "C": dCt.sum(0).transpose(-1, -2).to(args.C.dtype),
        "D": None if args.D is None else dD.sum(0).to(args.D.dtype),
        "z": dz.to(args.z.dtype) if prepared.gated else None,
        "delta_bias": None if args.delta_bias is None else dbias.sum(0).to(args.delta_bias.dtype),
    }


class FusedScan(torch.autograd.Function):
    """Autograd wrapper: saves the inputs and the chunk checkpoints; the backward recomputes the rest."""

    @staticmethod
    def forward(ctx, softplus: bool, fallback: bool, save: bool, *tensors: torch.Tensor | None):
        args = ScanArgs(*tensors)
        try:
            y, last_state, ckpt = fused_forward(args, softplus, save)
        except KernelUnavailable as error:
            if not fallback:
                raise
            mark_broken(error)
            y, last_state, ckpt = chunked_forward(args, softplus)
            ckpt = ckpt[:0]  # empty: the backward recomputes the chunked path's block starts
        if not save:
            ckpt = ckpt[:0]
        ctx.softplus, ctx.fallback = softplus, fallback
        ctx.save_for_backward(ckpt, *tensors)
        ctx.mark_non_differentiable(last_state)
        return y, last_state

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor, _grad_last: torch.Tensor | None):
        ckpt, *tensors = ctx.saved_tensors
        args = ScanArgs(*tensors)
        grads = None
        if ckpt.numel() and _status["broken"] is None:
            try:
                grads = fused_backward(args, ctx.softplus, ckpt, grad_y)
            except KernelUnavailable as error:
                if not ctx.fallback:
                    raise
                mark_broken(error)
        if grads is None:
            _, _, block_starts = chunked_forward(args, ctx.softplus)
            grads = chunked_backward(args, ctx.softplus, block_starts, grad_y)
        needed = zip(ORDER, ctx.needs_input_grad[3:], strict=True)
        return (None, None, None, *(grads[name] if wanted else None for name, wanted in needed))


def scan_fused(args: ScanArgs, softplus: bool, fallback: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused scan with autograd: (y, last_state). ``fallback``: use the chunked path if numba fails."""
    tensors = (args.u, args.delta, args.A, args.B, args.C, args.D, args.z, args.delta_bias)
    if fallback and _status["broken"] is not None:
        return ChunkedScan.apply(softplus, *tensors)
    # checkpoints only when a backward can follow (ctx.needs_input_grad is set under no_grad too)
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    return FusedScan.apply(softplus, fallback, save, *tensors)
