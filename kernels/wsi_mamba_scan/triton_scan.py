"""Triton forward and backward kernels of the selective scan, their launchers and the autograd wrapper.

Layout of the work. A program owns ``BLOCK_D`` channels of one group of one batch element (so ``B_t``/``C_t``
are one ``(BLOCK_L,)`` load per state, shared by all its channels) and one *segment* of the sequence: the
grid is ``(batch * G, cdiv(H, BLOCK_D), n_segs)`` with ``H = dim // G`` and segments of ``seg_tiles``
tiles of ``BLOCK_L`` steps. A program walks its segment tile by tile; inside a tile each state ``n`` (a
runtime loop over ``N``) is a ``(BLOCK_D, BLOCK_L)`` tile scanned with ``tl.associative_scan`` over the
pairs (decay, drive) = (exp(dt*A), dt*B*u), and the fp32 state is carried between tiles as a
``(BLOCK_D, N_PAD)`` register tile.

Splitting L (``n_segs > 1``). Forward: (1) ``_fwd_local_kernel`` scans segments 0..n_segs-2 from a zero
state and stores each one's final state and decay product (the product of exp(dt*A) over the segment);
(2) ``_carry_kernel`` combines them sequentially over segments, per (b, d, n): h_in[s+1] = P[s] h_in[s] +
local[s]; (3) ``_scan_fwd_kernel`` re-runs every segment from its h_in, writing y (in its own dtype, once),
the tile-start states for the backward and the last state. Adding C_t . (decay prefix_t * h_in) to a local y
instead would cost the same second exp per (t, n) (the decay prefix) plus an fp32 (batch, dim, L) buffer for
that local y, written and read back.
Backward, the mirror image: ``_bwd_local_kernel`` runs the adjoint g_t = exp(dt_{t+1} A) g_{t+1} + C_t dy_t
over segments 1..n_segs-1 from g = 0 past their end and stores g at their first step and their decay product;
``_carry_kernel`` in reverse gives the g entering each segment from the right; ``_scan_bwd_kernel``
recomputes h from the saved tile-start states and g from that carry, and forms every gradient.

Grid arithmetic (H100/H200: 132 SMs; ``plan``): at batch 1, dim 384, G 4 (H 96, BLOCK_D 8: 12 channel
blocks) one segment is 48 programs, 0.36 per SM, which is all the old kernels launched at any L. ``plan``
asks for 4 programs per SM: n_segs = ceil(4 * 132 / 48) = 11, so 528 programs (480 in the local passes); at
L 65,536 (512 tiles of 128) a segment is 47 tiles (6,016 steps), at L 2^20 (8,192 tiles) 745 tiles (95,360
steps). Segments keep at least ``GPU_MIN_SEG_TILES`` tiles, and when batch * G * channel blocks alone reach
4 programs per SM, n_segs = 1 and steps (1) and (2) are skipped.

The backward's exp: one exp(dt*A) per (t, n) in ``_scan_bwd_kernel``, shared by the h recomputation and the
adjoint: the adjoint needs exp(dt_{t+1} A) in time-reversed order, which is the forward tile gathered with
``tl.gather`` (reversed and shifted by one step); the decay at the next tile's first step is folded into the
carried adjoint (q = exp(dt A) g at the first step of the next tile). The adjoint runs as a *forward* scan over
time-reversed loads (no ``reverse=True``, see triton #4362), realigned with ``tl.gather``. With
``n_segs > 1`` the local passes add one exp per (t, n) each way.

Reductions: grouped dB and dC, summed over the channels of a group, are accumulated with ``tl.atomic_add``
into fp32 ``(batch, G, N, L)`` buffers (the size of the gradient itself; mamba_ssm's CUDA backward does the
same); per-program partial sums over all channel blocks (``(batch, G, cdiv(H, BLOCK_D), N, L)``) would be
12x that at dim 384, G 4 (48x at G 1), and reducing within a program that covers all of a group's channels
would divide the grid by the channel blocks. Atomics make dB and dC's last bits depend on the order in which
programs add (at most cdiv(H, BLOCK_D) terms per element). The per-channel dA, dD and d(delta_bias) are small
per-segment partial sums ``(batch, dim, n_segs, ...)`` reduced with ``torch.sum`` (deterministic).
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

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
# Segments (L split across programs): tiles per segment, None for ``plan``'s choice; tests set small values.
SEG_TILES: int | None = None
PROGRAMS_PER_SM = 4
GPU_MIN_SEG_TILES, INTERPRET_MIN_SEG_TILES = 4, 1
INTERPRET_SMS = 4  # a notional SM count under the interpreter, so that the tests' small grids split L too
CARRY_BLOCK, CARRY_NUM_WARPS = 128, 4


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
def _lane(tile, at):
    """One lane of a (BLOCK_D, BLOCK_L) tile, selected by the boolean (1, BLOCK_L) mask ``at``, as (BLOCK_D, 1)."""
    return tl.sum(tl.where(at, tile, 0.0), axis=1)[:, None]


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
    """dt = softplus(delta + bias) as fp32 (0 where masked, so the decay there is 1); also delta + bias.

    ``offs`` and ``mask`` are (BLOCK_D, k) tiles; ``bias`` is (BLOCK_D,).
    """
    x = tl.load(delta_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        x = x + bias[:, None]
    dt = x
    if SOFTPLUS:
        dt = _softplus(x)
    return tl.where(mask, dt, 0.0), x


@triton.jit
def _gated_dout(dout_ptr, z_ptr, offs, mask, HAS_Z: tl.constexpr):
    """The gradient reaching the scan's output at ``offs`` (float32): dout, times z·sigmoid(z) when gated."""
    dy = tl.load(dout_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dy = dy * z * tl.sigmoid(z)
    return dy


@triton.jit
def _program_setup(
    A_ptr, D_ptr, bias_ptr, dim, L, G, H, n_tiles, seg_tiles, n_segs, SEG_OFFSET: tl.constexpr,
    N: tl.constexpr, N_PAD: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    """What every scan kernel derives from the program id: its (batch, group, channels, segment), masks, A,
    D, bias and offsets.

    Every offset is int64 (``zero`` and ``L64`` carry the type): ``row`` is the offset of (b, d, 0) in u,
    delta, z, y and their gradients; ``bc_base`` the offset of (b, g, 0, 0) in B and C; ``seg_off`` that of
    (b, d, s, 0) in the (batch, dim, n_segs, N) segment buffers. The program's segment s is
    ``program_id(2) + SEG_OFFSET``: ``tile0`` its first tile, ``count`` its tiles, ``seg_t0`` its first step.
    """
    pid_bg = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1).to(tl.int64)
    pid_s = tl.program_id(2).to(tl.int64) + SEG_OFFSET
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
    pd = b * dim + d
    row = pd * L64
    bc_base = (b * G + g) * N * L64
    seg_off = ((pd * n_segs + pid_s) * N)[:, None] + cols[None, :]
    tile0 = pid_s * seg_tiles
    count = tl.minimum(zero + seg_tiles, n_tiles - tile0)
    seg_t0 = tile0 * BLOCK_L
    return (pid_s, zero, L64, b, g, pd, d_mask, cols, state_mask, A_tile, Dv, bias, row, bc_base, seg_off,
            tile0, count, seg_t0)


@triton.jit
def _fwd_local_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, bias_ptr, local_ptr, prod_ptr,
    dim, L, G, H, n_tiles, seg_tiles, n_segs,
    N: tl.constexpr, N_PAD: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    """Segments 0..n_segs-2 from a zero state: final state and product of exp(dt*A) over the segment."""
    (_pid_s, _zero, L64, _b, _g, _pd, d_mask, cols, state_mask, A_tile, _Dv, bias, row, bc_base, seg_off,
     _tile0, count, t0) = _program_setup(
        A_ptr, A_ptr, bias_ptr, dim, L, G, H, n_tiles, seg_tiles, n_segs, 0, N, N_PAD, BLOCK_D, BLOCK_L,
        False, HAS_BIAS,
    )
    lanes = tl.arange(0, BLOCK_L)
    is_last = (lanes == BLOCK_L - 1)[None, :]
    state = tl.zeros((BLOCK_D, N_PAD), tl.float32)
    prod = tl.full((BLOCK_D, N_PAD), 1.0, tl.float32)
    for _c in range(count):
        t = t0 + lanes
        t_mask = t < L64
        mask = d_mask[:, None] & t_mask[None, :]
        offs = row[:, None] + t[None, :]
        u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dt, _x = _load_dt(delta_ptr, offs, mask, bias, HAS_BIAS, SOFTPLUS)
        dtu = dt * u
        for n in range(N):
            sel = (cols == n)[None, :]
            A_n = _column(A_tile, sel)
            B_n = tl.load(B_ptr + bc_base + n * L64 + t, mask=t_mask, other=0.0).to(tl.float32)
            a_s, b_s = tl.associative_scan((tl.exp(dt * A_n[:, None]), dtu * B_n[None, :]), 1, _combine)
            h = b_s + a_s * _column(state, sel)[:, None]
            state = tl.where(sel, _lane(h, is_last), state)
            prod = tl.where(sel, prod * _lane(a_s, is_last), prod)
        t0 += BLOCK_L
    tl.store(local_ptr + seg_off, state, mask=state_mask)
    tl.store(prod_ptr + seg_off, prod, mask=state_mask)


@triton.jit
def _carry_kernel(local_ptr, prod_ptr, init_ptr, total, n_segs,
                  N: tl.constexpr, BLOCK: tl.constexpr, REVERSE: tl.constexpr):
    """The state entering each segment, per (b, d, n): x = P[s] x + local[s] walked over the segments.

    Forward: init[0] = 0, init[s + 1] = P[s] init[s] + local[s]. REVERSE (the adjoint, entering from the
    right): init[n_segs - 1] = 0, init[s - 1] = P[s] init[s] + local[s]. Buffers are (batch, dim, n_segs, N).
    """
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < total
    base = (i // N) * n_segs * N + i % N
    x = tl.zeros((BLOCK,), tl.float32)
    first = n_segs - 1 if REVERSE else 0
    tl.store(init_ptr + base + first * N, x, mask=mask)
    for k in range(n_segs - 1):
        s = n_segs - 1 - k if REVERSE else k
        nxt = s - 1 if REVERSE else s + 1
        x = tl.load(prod_ptr + base + s * N, mask=mask, other=0.0) * x + tl.load(
            local_ptr + base + s * N, mask=mask, other=0.0)
        tl.store(init_ptr + base + nxt * N, x, mask=mask)


@triton.jit
def _scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, init_ptr,
    y_ptr, last_ptr, states_ptr,
    dim, L, G, H, n_tiles, seg_tiles, n_segs,
    N: tl.constexpr, N_PAD: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    SAVE_STATES: tl.constexpr, HAS_INIT: tl.constexpr,
):
    """y of BLOCK_D channels of one (batch, group) over one segment, from the state entering it (HAS_INIT)
    or zero; tile-start states (batch, dim, n_tiles, N) when asked; the last state from the last segment."""
    (pid_s, _zero, L64, _b, _g, pd, d_mask, cols, state_mask, A_tile, Dv, bias, row, bc_base, seg_off,
     tile0, count, t0) = _program_setup(
        A_ptr, D_ptr, bias_ptr, dim, L, G, H, n_tiles, seg_tiles, n_segs, 0, N, N_PAD, BLOCK_D, BLOCK_L,
        HAS_D, HAS_BIAS,
    )
    st_row = pd * n_tiles * N  # offset of (b, d, 0, 0) in the tile-start states
    lanes = tl.arange(0, BLOCK_L)
    is_last = (lanes == BLOCK_L - 1)[None, :]
    state = tl.zeros((BLOCK_D, N_PAD), tl.float32)
    if HAS_INIT:
        state = tl.load(init_ptr + seg_off, mask=state_mask, other=0.0)
    for c in range(count):
        if SAVE_STATES:
            tl.store(states_ptr + st_row[:, None] + (tile0 + c) * N + cols[None, :], state, mask=state_mask)
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
            # past L the decay is 1 and the drive 0, so the last lane holds h at min(end of tile, L - 1)
            state = tl.where(sel, _lane(h, is_last), state)
        if HAS_D:
            y += Dv[:, None] * u
        if HAS_Z:
            zz = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            y = y * zz * tl.sigmoid(zz)
        _store(y_ptr + offs, y, mask)
        t0 += BLOCK_L
    if pid_s == n_segs - 1:
        tl.store(last_ptr + pd[:, None] * N + cols[None, :], state, mask=state_mask)


@triton.jit
def _bwd_local_kernel(
    delta_ptr, A_ptr, C_ptr, z_ptr, bias_ptr, dout_ptr, local_ptr, prod_ptr,
    dim, L, G, H, n_tiles, seg_tiles, n_segs,
    N: tl.constexpr, N_PAD: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    """Segments 1..n_segs-1, adjoint from g = 0 past the segment's end: g at its first step, and the product
    of the adjoint's decays exp(dt_{t+1} A) over its steps t (so from its second step to the next one's first).

    Time-reversed tiles (lane j holds step t0 + BLOCK_L - 1 - j) with dt loaded one step later: no gather.
    """
    (_pid_s, _zero, L64, _b, _g, _pd, d_mask, cols, state_mask, A_tile, _Dv, bias, row, bc_base, seg_off,
     _tile0, count, seg_t0) = _program_setup(
        A_ptr, A_ptr, bias_ptr, dim, L, G, H, n_tiles, seg_tiles, n_segs, 1, N, N_PAD, BLOCK_D, BLOCK_L,
        False, HAS_BIAS,
    )
    rlanes = BLOCK_L - 1 - tl.arange(0, BLOCK_L)
    is_last = (rlanes == 0)[None, :]  # the reversed tile's last lane: the tile's first step
    carry = tl.zeros((BLOCK_D, N_PAD), tl.float32)  # g at the first step of the next tile
    prod = tl.full((BLOCK_D, N_PAD), 1.0, tl.float32)
    t0 = seg_t0 + (count - 1) * BLOCK_L
    for _i in range(count):
        tr = t0 + rlanes
        tr_mask = tr < L64
        mask_r = d_mask[:, None] & tr_mask[None, :]
        offs_r = row[:, None] + tr[None, :]
        dy_r = _gated_dout(dout_ptr, z_ptr, offs_r, mask_r, HAS_Z)
        mask_n = d_mask[:, None] & (tr + 1 < L64)[None, :]
        dt_n, _xn = _load_dt(delta_ptr, offs_r + 1, mask_n, bias, HAS_BIAS, SOFTPLUS)
        for n in range(N):
            sel = (cols == n)[None, :]
            A_n = _column(A_tile, sel)[:, None]
            C_r = tl.load(C_ptr + bc_base + n * L64 + tr, mask=tr_mask, other=0.0).to(tl.float32)[None, :]
            a_s, b_s = tl.associative_scan((tl.exp(dt_n * A_n), C_r * dy_r), 1, _combine)
            g_r = b_s + a_s * _column(carry, sel)[:, None]
            carry = tl.where(sel, _lane(g_r, is_last), carry)
            prod = tl.where(sel, prod * _lane(a_s, is_last), prod)
        t0 -= BLOCK_L
    tl.store(local_ptr + seg_off, carry, mask=state_mask)
    tl.store(prod_ptr + seg_off, prod, mask=state_mask)


@triton.jit
def _scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, states_ptr, init_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dD_ptr, dbias_ptr, dB_ptr, dC_ptr,
    dim, L, G, H, n_tiles, seg_tiles, n_segs,
    N: tl.constexpr, N_PAD: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_INIT: tl.constexpr,
):
    """Gradients of BLOCK_D channels of one (batch, group) over one segment, tiles walked from the last.

    The adjoint enters the segment from the right as init (g at the next segment's first step, HAS_INIT) or
    zero. du, ddelta, dz are written in the inputs' dtypes; dA (b, d, n_segs, N), dD and d(delta_bias)
    (b, d, n_segs) are fp32 partial sums reduced by the launcher; dB, dC (b, G, N, L) fp32 are added to
    atomically (they must start at zero).
    """
    (pid_s, _zero, L64, _b, _g, pd, d_mask, cols, state_mask, A_tile, Dv, bias, row, bc_base, seg_off,
     tile0, count, seg_t0) = _program_setup(
        A_ptr, D_ptr, bias_ptr, dim, L, G, H, n_tiles, seg_tiles, n_segs, 0, N, N_PAD, BLOCK_D, BLOCK_L,
        HAS_D, HAS_BIAS,
    )
    st_row = pd * n_tiles * N
    lanes = tl.arange(0, BLOCK_L)
    rlanes = BLOCK_L - 1 - lanes
    is_first = (lanes == 0)[None, :]
    zeros_i = tl.zeros((BLOCK_D, BLOCK_L), tl.int32)
    rev_idx = rlanes[None, :] + zeros_i  # gathering with these reverses a (BLOCK_D, BLOCK_L) tile along time
    # ... and with these gives, at reversed lane j >= 1, the decay of the step after that lane's step
    next_idx = ((BLOCK_L - lanes) % BLOCK_L)[None, :] + zeros_i
    # q = exp(dt A) g at the first step of the next tile: the adjoint carried in, already decayed
    qcarry = tl.zeros((BLOCK_D, N_PAD), tl.float32)
    if HAS_INIT:
        t_next = seg_t0 + count * BLOCK_L + tl.zeros((BLOCK_D, 1), tl.int64)  # the next segment's first step
        mask_next = d_mask[:, None] & (t_next < L64)
        dt_next, _x_next = _load_dt(delta_ptr, row[:, None] + t_next, mask_next, bias, HAS_BIAS, SOFTPLUS)
        qcarry = tl.exp(dt_next * A_tile) * tl.load(init_ptr + seg_off, mask=state_mask, other=0.0)
    dA_acc = tl.zeros((BLOCK_D, N_PAD), tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), tl.float32)
    dbias_acc = tl.zeros((BLOCK_D,), tl.float32)
    t0 = seg_t0 + (count - 1) * BLOCK_L
    for i in range(count):
        c = tile0 + count - 1 - i
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
        # time-reversed dy (lane j holds step t0 + BLOCK_L - 1 - j) for the adjoint scan
        tr = t0 + rlanes
        tr_mask = tr < L64
        mask_r = d_mask[:, None] & tr_mask[None, :]
        offs_r = row[:, None] + tr[None, :]
        dy_r = _gated_dout(dout_ptr, z_ptr, offs_r, mask_r, HAS_Z)

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
            decay = tl.exp(dt * A_n)  # the only exp per (t, n): 1 past L
            # recompute h of the tile from its start state
            dbu = dtu * B_n
            a_s, b_s = tl.associative_scan((decay, dbu), 1, _combine)
            h = b_s + a_s * _column(h0, sel)[:, None]
            y += h * C_n
            # adjoint g_t = exp(dt_{t+1} A) g_{t+1} + C_t dy_t as a forward scan in reversed time; lane 0's
            # decay (the next tile's first step) is already in qcarry
            a_r = tl.where(is_first, 1.0, tl.gather(decay, next_idx, 1))
            a_s, b_s = tl.associative_scan((a_r, C_r * dy_r), 1, _combine)
            g_r = b_s + a_s * _column(qcarry, sel)[:, None]
            gg = tl.gather(g_r, rev_idx, 1)  # back to forward time
            qcarry = tl.where(sel, _lane(decay * gg, is_first), qcarry)
            acc_gB += gg * B_n
            gh = gg * (h - dbu)  # g_t * exp(dt_t A) h_{t-1}
            acc_gAh += A_n * gh
            dA_acc = tl.where(sel, dA_acc + tl.sum(dt * gh, axis=1)[:, None], dA_acc)
            tl.atomic_add(dB_ptr + bc_base + n * L64 + t, tl.sum(gg * dtu, axis=0), mask=t_mask, sem="relaxed")
            tl.atomic_add(dC_ptr + bc_base + n * L64 + t, tl.sum(dy * h, axis=0), mask=t_mask, sem="relaxed")
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
    tl.store(dA_ptr + seg_off, dA_acc, mask=state_mask)
    seg_row = pd * n_segs + pid_s
    if HAS_D:
        tl.store(dD_ptr + seg_row, dD_acc, mask=d_mask)
    if HAS_BIAS:
        tl.store(dbias_ptr + seg_row, dbias_acc, mask=d_mask)


# --------------------------------------------------------------------------------------------- launchers


class Plan(NamedTuple):
    """How a call is cut up: channel blocks of ``block_d``, tiles of ``block_l`` steps, segments of
    ``seg_tiles`` tiles; the main kernels' grid is ``(batch * groups, n_dblocks, n_segs)``."""

    block_d: int
    block_l: int
    n_dblocks: int
    n_tiles: int
    seg_tiles: int
    n_segs: int


def plan(batch: int, dim: int, groups: int, length: int, sms: int, interpreted: bool | None = None) -> Plan:
    """Block sizes and segments for a call on a device with ``sms`` multiprocessors.

    Segments are as many as needed for ``PROGRAMS_PER_SM`` programs per SM, but keep at least the run mode's
    minimum of tiles each (``SEG_TILES`` overrides the choice).
    """
    interp = _interpreted() if interpreted is None else interpreted
    heads = dim // groups
    block_l = BLOCK_L or (INTERPRET_BLOCK_L if interp else GPU_BLOCK_L)
    max_d = MAX_BLOCK_D or (INTERPRET_MAX_BLOCK_D if interp else GPU_MAX_BLOCK_D)
    block_d = min(triton.next_power_of_2(heads), max_d)
    n_dblocks = triton.cdiv(heads, block_d)
    n_tiles = triton.cdiv(length, block_l)
    if SEG_TILES:
        seg_tiles = SEG_TILES
    else:
        wanted = triton.cdiv(PROGRAMS_PER_SM * sms, batch * groups * n_dblocks)
        min_tiles = INTERPRET_MIN_SEG_TILES if interp else GPU_MIN_SEG_TILES
        seg_tiles = triton.cdiv(n_tiles, max(1, min(wanted, n_tiles // min_tiles)))
    return Plan(block_d, block_l, n_dblocks, n_tiles, seg_tiles, triton.cdiv(n_tiles, seg_tiles))


@functools.cache
def _cuda_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return _cuda_sms(device.index if device.index is not None else torch.cuda.current_device())
    return INTERPRET_SMS


def _optional(t: torch.Tensor | None, fallback: torch.Tensor) -> torch.Tensor:
    return fallback if t is None else t


def _segment_buffers(batch: int, dim: int, p: Plan, dstate: int, device: torch.device) -> list[torch.Tensor]:
    """local, prod, init: (batch, dim, n_segs, N) fp32 each."""
    return [torch.empty(batch, dim, p.n_segs, dstate, device=device, dtype=torch.float32) for _ in range(3)]


def _carry(local: torch.Tensor, prod: torch.Tensor, init: torch.Tensor, reverse: bool) -> None:
    batch, dim, n_segs, dstate = local.shape
    total = batch * dim * dstate
    _carry_kernel[(triton.cdiv(total, CARRY_BLOCK),)](
        local, prod, init, total, n_segs, N=dstate, BLOCK=CARRY_BLOCK, REVERSE=reverse, num_warps=CARRY_NUM_WARPS,
    )


def _forward(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
    delta_softplus: bool, save_states: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, Plan]:
    """Launch the forward kernels on contiguous inputs: y, last_state, tile-start states (or None), the plan."""
    batch, dim, length = u.shape
    groups, dstate = B.shape[1], A.shape[1]
    heads = dim // groups
    p = plan(batch, dim, groups, length, _sm_count(u.device))
    y = torch.empty_like(u)
    last = torch.empty(batch, dim, dstate, device=u.device, dtype=torch.float32)
    states = (torch.empty(batch, dim, p.n_tiles, dstate, device=u.device, dtype=torch.float32)
              if save_states else last)
    sizes = (dim, length, groups, heads, p.n_tiles, p.seg_tiles, p.n_segs)
    consts = dict(N=dstate, N_PAD=triton.next_power_of_2(dstate), BLOCK_D=p.block_d, BLOCK_L=p.block_l,
                  HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus)
    bias = _optional(delta_bias, u)
    init = last  # unused unless n_segs > 1
    if p.n_segs > 1:
        local, prod, init = _segment_buffers(batch, dim, p, dstate, u.device)
        _fwd_local_kernel[(batch * groups, p.n_dblocks, p.n_segs - 1)](
            u, delta, A, B, bias, local, prod, *sizes, **consts, num_warps=FWD_NUM_WARPS,
        )
        _carry(local, prod, init, reverse=False)
    _scan_fwd_kernel[(batch * groups, p.n_dblocks, p.n_segs)](
        u, delta, A, B, C, _optional(D, u), _optional(z, u), bias, init,
        y, last, states, *sizes, **consts,
        HAS_D=D is not None, HAS_Z=z is not None, SAVE_STATES=save_states, HAS_INIT=p.n_segs > 1,
        num_warps=FWD_NUM_WARPS,
    )
    return y, last, (states if save_states else None), p


def _backward(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
    delta_softplus: bool, states: torch.Tensor, p: Plan, dout: torch.Tensor,
) -> tuple[torch.Tensor | None, ...]:
    """Launch the backward kernels; gradients of (u, delta, A, B, C, D, z, delta_bias) in their dtypes."""
    batch, dim, length = u.shape
    groups, dstate = B.shape[1], A.shape[1]
    heads = dim // groups
    f32 = {"device": u.device, "dtype": torch.float32}
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else None
    dA = torch.empty(batch, dim, p.n_segs, dstate, **f32)
    dD = torch.empty(batch, dim, p.n_segs, **f32) if D is not None else None
    dbias = torch.empty(batch, dim, p.n_segs, **f32) if delta_bias is not None else None
    dB = torch.zeros(batch, groups, dstate, length, **f32)  # atomic sums over the channels of a group
    dC = torch.zeros_like(dB)
    sizes = (dim, length, groups, heads, p.n_tiles, p.seg_tiles, p.n_segs)
    consts = dict(N=dstate, N_PAD=triton.next_power_of_2(dstate), BLOCK_D=p.block_d, BLOCK_L=p.block_l,
                  HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus)
    z_, bias = _optional(z, u), _optional(delta_bias, u)
    init = dA  # unused unless n_segs > 1
    if p.n_segs > 1:
        local, prod, init = _segment_buffers(batch, dim, p, dstate, u.device)
        _bwd_local_kernel[(batch * groups, p.n_dblocks, p.n_segs - 1)](
            delta, A, C, z_, bias, dout, local, prod, *sizes, **consts, num_warps=FWD_NUM_WARPS,
        )
        _carry(local, prod, init, reverse=True)
    _scan_bwd_kernel[(batch * groups, p.n_dblocks, p.n_segs)](
        u, delta, A, B, C, _optional(D, u), z_, bias, dout, states, init,
        du, ddelta, _optional(dz, du), dA, _optional(dD, dA), _optional(dbias, dA), dB, dC,
        *sizes, **consts, HAS_D=D is not None, HAS_INIT=p.n_segs > 1, num_warps=BWD_NUM_WARPS,
    )
    return (
        du, ddelta, dA.sum((0, 2)).to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
        None if D is None else dD.sum((0, 2)).to(D.dtype), dz,
        None if delta_bias is None else dbias.sum((0, 2)).to(delta_bias.dtype),
    )


def _contig(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous()


class SelectiveScanTriton(torch.autograd.Function):
    """Autograd wrapper: forward saves the tile-start states, backward recomputes inside each tile."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool):
        tensors = [_contig(t) for t in (u, delta, A, B, C, D, z, delta_bias)]
        save = any(ctx.needs_input_grad[:8])
        y, last, states, p = _forward(*tensors, delta_softplus, save)
        ctx.mark_non_differentiable(last)
        if save:
            ctx.save_for_backward(*tensors, states)
            ctx.delta_softplus, ctx.plan = delta_softplus, p
        return y, last

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, _dlast):
        *tensors, states = ctx.saved_tensors
        grads = _backward(*tensors, ctx.delta_softplus, states, ctx.plan, dy.contiguous())
        needed = ctx.needs_input_grad[:8]
        return (*(gr if need else None for gr, need in zip(grads, needed, strict=True)), None)


def scan_triton(args: ScanArgs, delta_softplus: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Selective scan of validated ``args`` with the Triton kernels: ``(y in u.dtype, last_state fp32)``.

    Differentiable (once) in u, delta, A, B, C, D, z and delta_bias; the last state carries no gradient.
    """
    return SelectiveScanTriton.apply(
        args.u, args.delta, args.A, args.B, args.C, args.D, args.z, args.delta_bias, delta_softplus
    )
