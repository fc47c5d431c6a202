"""Triton forward and backward kernels of the selective scan, their launchers and the autograd wrapper.

Layout of the work (both kernels): grid ``(batch * G, cdiv(H, BLOCK_D))`` with ``H = dim // G``; a program
owns ``BLOCK_D`` channels of one group of one batch element, so ``B_t``/``C_t`` of a chunk are one
``(BLOCK_L,)`` load per state shared by all its channels. The sequence is walked in chunks of ``BLOCK_L``
steps; within a chunk, each state ``n`` (a runtime loop over ``N``) is a ``(BLOCK_D, BLOCK_L)`` tile scanned
with ``tl.associative_scan`` over the pairs (decay, drive) = (exp(dt*A), dt*B*u), and the fp32 state is
carried between chunks as a ``(BLOCK_D, N_PAD)`` register tile.

The forward saves only the chunk-start states ``(batch, dim, n_chunks, N)`` in fp32. The backward walks the
chunks in reverse, recomputes the chunk's states from its saved start state, and runs the adjoint
recurrence g_t = exp(dt_{t+1} A) g_{t+1} + C_t dy_t as a *forward* scan over time-reversed loads (no
``reverse=True``, see triton #4362), realigning g with ``tl.gather``. Grouped dB/dC and the per-channel
dA/dD/d(delta_bias) are per-program partial sums reduced afterwards with ``torch.sum`` (no atomics).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from .validation import ScanArgs

# Block sizes; None picks the default for the run mode (interpreted on CPU or compiled for CUDA).
# Tests may override them (``BLOCK_L`` must be a power of two, ``MAX_BLOCK_D`` too).
BLOCK_L: int | None = None
MAX_BLOCK_D: int | None = None
GPU_BLOCK_L, GPU_MAX_BLOCK_D = 128, 8
INTERPRET_BLOCK_L, INTERPRET_MAX_BLOCK_D = 16, 32
FWD_NUM_WARPS, BWD_NUM_WARPS = 4, 8


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def check_triton_device(u: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``u`` suits the triton backend: CUDA, or CPU under the interpreter."""
    what = f"u has shape {tuple(u.shape)}, dtype {u.dtype} and device {u.device}"
    if u.dtype == torch.float64:
        raise ValueError(f"selective_scan: the triton backend takes float32, bfloat16 or float16; {what}")
    if u.device.type == "cuda":
        return
    if u.device.type == "cpu" and _interpreted():
        return
    raise ValueError(
        f"selective_scan: the triton backend needs CUDA tensors (CPU ones with TRITON_INTERPRET=1); {what}"
    )


# ----------------------------------------------------------------------------------------------- kernels


@triton.jit
def _combine(a1, b1, a2, b2):
    """Compose x -> a1 x + b1 then x -> a2 x + b2."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _softplus(x):
    """softplus with mamba_ssm's threshold: x above 20 passes through.

    log1p is missing from the interpreter, so log(1 + e) is corrected by e / ((1 + e) - 1) (Goldberg's
    trick), which keeps full relative precision for small e = exp(x) where a plain log(1 + e) loses it.
    """
    e = tl.exp(tl.minimum(x, 20.0))
    w = 1.0 + e
    small = w == 1.0
    log1p_e = tl.where(small, e, tl.log(w) * (e / tl.where(small, 1.0, w - 1.0)))
    return tl.where(x > 20.0, x, log1p_e)


@triton.jit
def _column(tile, sel):
    """Column ``n`` of a (BLOCK_D, N_PAD) tile, selected by the boolean (1, N_PAD) mask ``sel``."""
    return tl.sum(tl.where(sel, tile, 0.0), axis=1)


@triton.jit
def _store(ptr, x, mask):
    """Store fp32 ``x`` in the pointer's dtype, rounding to nearest even.

    fp32 -> bf16 is rounded here by integer arithmetic (exact afterwards under any cast): compiled Triton
    rounds to nearest even anyway, but the CPU interpreter truncates, which would double its error.
    """
    out_ty = ptr.dtype.element_ty
    if out_ty == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        x = tl.where(x == x, bits.to(tl.float32, bitcast=True), x)  # NaN stays NaN
    tl.store(ptr, x.to(out_ty), mask=mask)


@triton.jit
def _load_dt(delta_ptr, offs, mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """dt = softplus(delta + bias) as fp32 (0 where masked, so the decay there is 1); also delta + bias."""
    x = tl.load(delta_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        x = x + bias[:, None]
    dt = x
    if SOFTPLUS:
        dt = _softplus(x)
    return tl.where(mask, dt, 0.0), x


@triton.jit
def _program_setup(
    A_ptr, D_ptr, bias_ptr, dim, L, G, H,
    N: tl.constexpr, N_PAD: tl.constexpr, BLOCK_D: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    """What both kernels derive from the program id: its (batch, group, channels), masks, A, D, bias, offsets.

    Every offset is int64 (``zero`` and ``L64`` carry the type): ``row`` is the offset of (b, d, 0) in u,
    delta, z, y and their gradients; ``bc_base`` the offset of (b, g, 0, 0) in B and C.
    """
    pid_bg = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1).to(tl.int64)
    zero = pid_bg * 0
    L64 = zero + L
    b = pid_bg // G
    g = pid_bg % G
    dl = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = dl < H
    d = g * H + dl
    cols = tl.arange(0, N_PAD)
    state_mask = d_mask[:, None] & (cols < N)[None, :]
    A_tile = tl.load(A_ptr + d[:, None] * N + cols[None, :], mask=state_mask, other=0.0).to(tl.float32)
    Dv = tl.zeros((BLOCK_D,), tl.float32)
    bias = tl.zeros((BLOCK_D,), tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
    row = (b * dim + d) * L64
    bc_base = (b * G + g) * N * L64
    return pid_d, zero, L64, b, g, d, d_mask, cols, state_mask, A_tile, Dv, bias, row, bc_base


@triton.jit
def _scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
    y_ptr, last_ptr, states_ptr,
    dim, L, G, H, n_chunks,
    N: tl.constexpr, N_PAD: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    SAVE_STATES: tl.constexpr,
):
    """y and the last state of BLOCK_D channels of one (batch, group); chunk-start states when asked."""
    _pid_d, zero, L64, b, _g, d, d_mask, cols, state_mask, A_tile, Dv, bias, row, bc_base = _program_setup(
        A_ptr, D_ptr, bias_ptr, dim, L, G, H, N, N_PAD, BLOCK_D, HAS_D, HAS_BIAS
    )
    st_row = (b * dim + d) * n_chunks * N  # offset of (b, d, 0, 0) in the chunk states
    lanes = tl.arange(0, BLOCK_L)
    is_last = (lanes == BLOCK_L - 1)[None, :]
    state = tl.zeros((BLOCK_D, N_PAD), tl.float32)
    t0 = zero
    for c in range(n_chunks):
        if SAVE_STATES:
            tl.store(states_ptr + st_row[:, None] + c * N + cols[None, :], state, mask=state_mask)
        t = t0 + lanes
        t_mask = t < L64
        mask = d_mask[:, None] & t_mask[None, :]
        offs = row[:, None] + t[None, :]
        u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dt, _x = _load_dt(delta_ptr, offs, mask, bias, HAS_BIAS, SOFTPLUS)
        dtu = dt * u
        y = tl.zeros((BLOCK_D, BLOCK_L), tl.float32)
        # A runtime loop, not tl.static_range: unrolling 16 states made ptxas spill (3.7 KB of stack in
        # the backward for sm_90) and took ~2 min to compile; the loop compiles in seconds without spills.
        for n in range(N):
            sel = (cols == n)[None, :]
            A_n = _column(A_tile, sel)
            B_n = tl.load(B_ptr + bc_base + n * L64 + t, mask=t_mask, other=0.0).to(tl.float32)
            C_n = tl.load(C_ptr + bc_base + n * L64 + t, mask=t_mask, other=0.0).to(tl.float32)
            decay = tl.exp(dt * A_n[:, None])
            drive = dtu * B_n[None, :]
            a_s, b_s = tl.associative_scan((decay, drive), 1, _combine)
            h = b_s + a_s * _column(state, sel)[:, None]
            y += h * C_n[None, :]
            # past L the decay is 1 and the drive 0, so the last lane holds h at min(end of chunk, L - 1)
            h_last = tl.sum(tl.where(is_last, h, 0.0), axis=1)
            state = tl.where(sel, h_last[:, None], state)
        if HAS_D:
            y += Dv[:, None] * u
        if HAS_Z:
            zz = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            y = y * zz * tl.sigmoid(zz)
        _store(y_ptr + offs, y, mask)
        t0 += BLOCK_L
    tl.store(last_ptr + (b * dim + d)[:, None] * N + cols[None, :], state, mask=state_mask)


@triton.jit
def _scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, states_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dD_ptr, dbias_ptr, dB_ptr, dC_ptr,
    dim, L, G, H, n_chunks, n_dblocks,
    N: tl.constexpr, N_PAD: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    """Gradients of BLOCK_D channels of one (batch, group), chunks walked from the last to the first.

    du, ddelta, dz are written in the inputs' dtypes; dA (b, d, N), dD and d(delta_bias) (b, d), and
    dB, dC (b, G, n_dblocks, N, L) are fp32 partial sums reduced by the launcher.
    """
    pid_d, zero, L64, b, g, d, d_mask, cols, state_mask, A_tile, Dv, bias, row, bc_base = _program_setup(
        A_ptr, D_ptr, bias_ptr, dim, L, G, H, N, N_PAD, BLOCK_D, HAS_D, HAS_BIAS
    )
    part_base = ((b * G + g) * n_dblocks + pid_d) * N * L64  # offset of (b, g, pid_d, 0, 0) in dB/dC
    st_row = (b * dim + d) * n_chunks * N
    lanes = tl.arange(0, BLOCK_L)
    rlanes = BLOCK_L - 1 - lanes
    is_first = (lanes == 0)[None, :]
    # gathering with these indices reverses a (BLOCK_D, BLOCK_L) tile along time
    rev_idx = rlanes[None, :] + tl.zeros((BLOCK_D, BLOCK_L), tl.int32)
    carry = tl.zeros((BLOCK_D, N_PAD), tl.float32)  # g at the first step of the next chunk
    dA_acc = tl.zeros((BLOCK_D, N_PAD), tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), tl.float32)
    dbias_acc = tl.zeros((BLOCK_D,), tl.float32)
    t0 = (zero + n_chunks - 1) * BLOCK_L
    for i in range(n_chunks):
        c = n_chunks - 1 - i
        # forward-time tiles
        t = t0 + lanes
        t_mask = t < L64
        mask = d_mask[:, None] & t_mask[None, :]
        offs = row[:, None] + t[None, :]
        u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dt, x = _load_dt(delta_ptr, offs, mask, bias, HAS_BIAS, SOFTPLUS)
        dtu = dt * u
        dout = tl.load(dout_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dy = dout
        if HAS_Z:
            zz = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            sig_z = tl.sigmoid(zz)
            dy = dout * zz * sig_z
        # time-reversed tiles (lane j holds step t0 + BLOCK_L - 1 - j) for the adjoint scan:
        # dy at that step and dt at the step after it (0 past L, so its decay is 1)
        tr = t0 + rlanes
        tr_mask = tr < L64
        mask_r = d_mask[:, None] & tr_mask[None, :]
        offs_r = row[:, None] + tr[None, :]
        dy_r = tl.load(dout_ptr + offs_r, mask=mask_r, other=0.0).to(tl.float32)
        if HAS_Z:
            zr = tl.load(z_ptr + offs_r, mask=mask_r, other=0.0).to(tl.float32)
            dy_r = dy_r * zr * tl.sigmoid(zr)
        mask_n = d_mask[:, None] & (tr + 1 < L64)[None, :]
        dt_n, _xn = _load_dt(delta_ptr, offs_r + 1, mask_n, bias, HAS_BIAS, SOFTPLUS)

        h0 = tl.load(states_ptr + st_row[:, None] + c * N + cols[None, :], mask=state_mask, other=0.0)
        acc_gB = tl.zeros((BLOCK_D, BLOCK_L), tl.float32)  # sum_n g B
        acc_gAh = tl.zeros((BLOCK_D, BLOCK_L), tl.float32)  # sum_n A g (h - dt B u)
        y = tl.zeros((BLOCK_D, BLOCK_L), tl.float32)  # y before D u and the gate
        for n in range(N):  # a runtime loop, as in the forward
            sel = (cols == n)[None, :]
            A_n = _column(A_tile, sel)[:, None]
            B_n = tl.load(B_ptr + bc_base + n * L64 + t, mask=t_mask, other=0.0).to(tl.float32)[None, :]
            C_n = tl.load(C_ptr + bc_base + n * L64 + t, mask=t_mask, other=0.0).to(tl.float32)[None, :]
            C_r = tl.load(C_ptr + bc_base + n * L64 + tr, mask=tr_mask, other=0.0).to(tl.float32)[None, :]
            # recompute h of the chunk from its start state
            dbu = dtu * B_n
            a_s, b_s = tl.associative_scan((tl.exp(dt * A_n), dbu), 1, _combine)
            h = b_s + a_s * _column(h0, sel)[:, None]
            y += h * C_n
            # adjoint, as a forward scan in reversed time, then realigned with forward time
            a_s, b_s = tl.associative_scan((tl.exp(dt_n * A_n), C_r * dy_r), 1, _combine)
            g_r = b_s + a_s * _column(carry, sel)[:, None]
            gg = tl.gather(g_r, rev_idx, 1)
            carry = tl.where(sel, tl.sum(tl.where(is_first, gg, 0.0), axis=1)[:, None], carry)
            acc_gB += gg * B_n
            gh = gg * (h - dbu)  # g_t * exp(dt_t A) h_{t-1}
            acc_gAh += A_n * gh
            dA_acc = tl.where(sel, dA_acc + tl.sum(dt * gh, axis=1)[:, None], dA_acc)
            tl.store(dB_ptr + part_base + n * L64 + t, tl.sum(gg * dtu, axis=0), mask=t_mask)
            tl.store(dC_ptr + part_base + n * L64 + t, tl.sum(dy * h, axis=0), mask=t_mask)
        du = dt * acc_gB
        ddt = u * acc_gB + acc_gAh
        if HAS_D:
            du += Dv[:, None] * dy
            y += Dv[:, None] * u
            dD_acc += tl.sum(dy * u, axis=1)
        if SOFTPLUS:
            ddt = tl.where(x > 20.0, ddt, ddt * tl.sigmoid(x))
        ddt = tl.where(mask, ddt, 0.0)
        dbias_acc += tl.sum(ddt, axis=1)
        _store(du_ptr + offs, du, mask)
        _store(ddelta_ptr + offs, ddt, mask)
        if HAS_Z:
            dz = dout * y * sig_z * (1.0 + zz * (1.0 - sig_z))
            _store(dz_ptr + offs, dz, mask)
        t0 -= BLOCK_L
    pd = b * dim + d
    tl.store(dA_ptr + pd[:, None] * N + cols[None, :], dA_acc, mask=state_mask)
    if HAS_D:
        tl.store(dD_ptr + pd, dD_acc, mask=d_mask)
    if HAS_BIAS:
        tl.store(dbias_ptr + pd, dbias_acc, mask=d_mask)


# --------------------------------------------------------------------------------------------- launchers


def _block_sizes(heads: int) -> tuple[int, int]:
    """(BLOCK_D, BLOCK_L) for ``heads`` channels per group."""
    interp = _interpreted()
    block_l = BLOCK_L or (INTERPRET_BLOCK_L if interp else GPU_BLOCK_L)
    max_d = MAX_BLOCK_D or (INTERPRET_MAX_BLOCK_D if interp else GPU_MAX_BLOCK_D)
    return min(triton.next_power_of_2(heads), max_d), block_l


def _optional(t: torch.Tensor | None, fallback: torch.Tensor) -> torch.Tensor:
    return fallback if t is None else t


def _forward(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
    delta_softplus: bool, save_states: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int]:
    """Launch the forward kernel on contiguous inputs: y, last_state, chunk states (or None), BLOCK_L."""
    batch, dim, length = u.shape
    groups, dstate = B.shape[1], A.shape[1]
    heads = dim // groups
    block_d, block_l = _block_sizes(heads)
    n_chunks = triton.cdiv(length, block_l)
    y = torch.empty_like(u)
    last = torch.empty(batch, dim, dstate, device=u.device, dtype=torch.float32)
    states = (torch.empty(batch, dim, n_chunks, dstate, device=u.device, dtype=torch.float32)
              if save_states else last)
    grid = (batch * groups, triton.cdiv(heads, block_d))
    _scan_fwd_kernel[grid](
        u, delta, A, B, C, _optional(D, u), _optional(z, u), _optional(delta_bias, u),
        y, last, states,
        dim, length, groups, heads, n_chunks,
        N=dstate, N_PAD=triton.next_power_of_2(dstate), BLOCK_D=block_d, BLOCK_L=block_l,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=delta_softplus, SAVE_STATES=save_states, num_warps=FWD_NUM_WARPS,
    )
    return y, last, (states if save_states else None), block_l


def _backward(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
    delta_softplus: bool, states: torch.Tensor, block_l: int, dout: torch.Tensor,
) -> tuple[torch.Tensor | None, ...]:
    """Launch the backward kernel; gradients of (u, delta, A, B, C, D, z, delta_bias) in their dtypes."""
    batch, dim, length = u.shape
    groups, dstate = B.shape[1], A.shape[1]
    heads = dim // groups
    block_d, _ = _block_sizes(heads)
    n_chunks = states.shape[2]
    n_dblocks = triton.cdiv(heads, block_d)
    f32 = {"device": u.device, "dtype": torch.float32}
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else None
    dA = torch.empty(batch, dim, dstate, **f32)
    dD = torch.empty(batch, dim, **f32) if D is not None else None
    dbias = torch.empty(batch, dim, **f32) if delta_bias is not None else None
    dB = torch.empty(batch, groups, n_dblocks, dstate, length, **f32)
    dC = torch.empty_like(dB)
    grid = (batch * groups, n_dblocks)
    _scan_bwd_kernel[grid](
        u, delta, A, B, C, _optional(D, u), _optional(z, u), _optional(delta_bias, u), dout, states,
        du, ddelta, _optional(dz, du), dA, _optional(dD, dA), _optional(dbias, dA), dB, dC,
        dim, length, groups, heads, n_chunks, n_dblocks,
        N=dstate, N_PAD=triton.next_power_of_2(dstate), BLOCK_D=block_d, BLOCK_L=block_l,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=delta_softplus, num_warps=BWD_NUM_WARPS,
    )
    return (
        du, ddelta, dA.sum(0).to(A.dtype), dB.sum(2).to(B.dtype), dC.sum(2).to(C.dtype),
        None if D is None else dD.sum(0).to(D.dtype), dz,
        None if delta_bias is None else dbias.sum(0).to(delta_bias.dtype),
    )


def _contig(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous()


class SelectiveScanTriton(torch.autograd.Function):
    """Autograd wrapper: forward saves the chunk-start states, backward recomputes inside each chunk."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool):
        tensors = [_contig(t) for t in (u, delta, A, B, C, D, z, delta_bias)]
        save = any(ctx.needs_input_grad[:8])
        y, last, states, block_l = _forward(*tensors, delta_softplus, save)
        ctx.mark_non_differentiable(last)
        if save:
            ctx.save_for_backward(*tensors, states)
            ctx.delta_softplus, ctx.block_l = delta_softplus, block_l
        return y, last

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, _dlast):
        *tensors, states = ctx.saved_tensors
        grads = _backward(*tensors, ctx.delta_softplus, states, ctx.block_l, dy.contiguous())
        needed = ctx.needs_input_grad[:8]
        return (*(gr if need else None for gr, need in zip(grads, needed, strict=True)), None)


def scan_triton(args: ScanArgs, delta_softplus: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Selective scan of validated ``args`` with the Triton kernels: ``(y in u.dtype, last_state fp32)``.

    Differentiable (once) in u, delta, A, B, C, D, z and delta_bias; the last state carries no gradient.
    """
    return SelectiveScanTriton.apply(
        args.u, args.delta, args.A, args.B, args.C, args.D, args.z, args.delta_bias, delta_softplus
    )
