"""The numba kernels of the fused CPU scan (imported lazily by ``cpu_fused``: importing this imports numba).

Work item = (batch b, group g, a run of lanes of that group), a lane being ``LANES`` = 16 channels side by
side: the innermost loop of every hot loop runs over the 16 channels of a lane (a fixed trip count, which
LLVM turns into SIMD whatever N is). An item walks the sequence in chunks of ``chunk`` steps; per chunk and
lane, ``u``, ``delta`` (and ``z``, ``dy``) are transposed in 16 x 16 tiles into (chunk, LANES) buffers that
stay in cache, and the results are transposed back. The N-vector state of every channel is kept for the
whole sequence and copied into an (N, LANES) work array while its lane is scanned.

``B``, ``C`` arrive time-major, (batch, G, L, N), so one chunk of them is one contiguous block shared by
all the lanes of the group. Items are dealt round robin to ``workers`` parallel workers; every buffer a hot
loop touches is allocated before the parallel loop, one slice per worker, and indexed directly. (Buffers
allocated inside the parallel loop, or per-lane views of one array, left LLVM unable to tell them apart:
those loops stayed scalar, 2-4x slower, measured.)

The forward stores the state entering every chunk (``ckpt``, (batch, dim, chunks, N)) only when a backward
will follow. The backward walks the chunks in reverse: recomputes the chunk from its checkpoint into
(chunk, N, LANES) buffers (``exp(dt_t A)`` and ``exp(dt_t A) h_{t-1}``), then runs the adjoint
``g_t = C_t dout_t + exp(dt_{t+1} A) g_{t+1}`` back through the chunk, carrying ``exp(dt A) g`` into the
previous chunk. ``exp(dt A)`` is computed once per (t, n) in the forward and once in the backward's recompute.

float32 uses ``exp32`` and ``softplus32`` below (< 3e-7 relative error), written in plain arithmetic so that
they vectorise (libm's expf / log1pf calls do not); float64 uses ``math.exp`` and ``math.log1p``.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

LANES = 16  # channels per SIMD lane group: the innermost loop's fixed trip count
# Not 'fast': NaN and inf keep their meaning (no nnan / ninf); reassociation lets the lane sums vectorise.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
SOFTPLUS_THRESHOLD = 20.0
# error_model "numpy": a float division by zero gives inf / NaN instead of a Python exception, whose check
# (a branch per division) kept the loops around it from vectorising.
JIT = {"cache": True, "fastmath": FASTMATH, "error_model": "numpy"}
OPTIONS = {**JIT, "nogil": True}
# Only the explicit prange loops run in parallel: no automatic conversion of array expressions (fewer
# compiler passes, and the allocations inside an item stay plain allocations).
PARALLEL = {"prange": True, "comprehension": False, "reduction": False, "setitem": False, "numpy": False,
            "stencil": False, "fusion": False, "inplace_binop": False}

LOG2E = np.float32(1.4426950408889634)
LN2_HI = np.float32(0.693359375)
LN2_LO = np.float32(-2.12194440e-4)


@intrinsic
def _pow2_float32(typingctx, k):
    """2.0 ** k as a float32 for an integer k in [-126, 127]: the exponent bits (k + 127) << 23 (vectorises)."""
    if not isinstance(k, types.Integer):
        return None
    signature = types.float32(k)

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        value = args[0]
        if value.type.width > 32:
            value = builder.trunc(value, i32)
        elif value.type.width < 32:
            value = builder.sext(value, i32)
        bits = builder.shl(builder.add(value, ir.Constant(i32, 127)), ir.Constant(i32, 23))
        return builder.bitcast(bits, ir.FloatType())

    return signature, codegen


@intrinsic
def _select(typingctx, condition, if_true, if_false):
    """``if_true if condition else if_false`` as an LLVM select: no branch, so loops over it vectorise
    (numba lowers ``max``, conditional expressions and bool-to-float casts with branches)."""
    if not isinstance(condition, types.Boolean) or if_true != if_false:
        return None
    signature = if_true(condition, if_true, if_false)

    def codegen(context, builder, sig, args):
        return builder.select(args[0], args[1], args[2])

    return signature, codegen


@intrinsic
def _nan_or(typingctx, x, value):
    """``x`` where it is NaN, else ``value`` (an LLVM select: no branch, so no phi in numba's IR)."""
    if x != value or not isinstance(x, types.Float):
        return None
    signature = x(x, value)

    def codegen(context, builder, sig, args):
        is_nan = builder.fcmp_unordered("uno", args[0], args[0])
        return builder.select(is_nan, args[0], args[1])

    return signature, codegen


@njit(inline="always", **JIT)
def exp32(x):
    """exp for float32: clamp to [-87.3, 88.3], x = k ln2 + r, |r| <= ln2 / 2, exp(r) by a minimax polynomial.

    Below -87.3 it returns 0 (flushed: no subnormal result, whose arithmetic is 10-100x slower), above
    88.3 about 2e38 (not inf); NaN stays NaN.
    """
    low, high = np.float32(-87.3), np.float32(88.3)
    clamped = _select(x > high, high, _select(x < low, low, x))
    # floor(x log2 e + 1/2), as the truncation of a positive number
    k_int = np.int32(clamped * LOG2E + np.float32(128.5)) - np.int32(128)
    k = np.float32(k_int)
    r = clamped - k * LN2_HI - k * LN2_LO
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    return _nan_or(x, _select(x < low, np.float32(0.0), p * _pow2_float32(k_int)))


def fexp(x):
    """exp in x's own precision: ``exp32`` for float32, ``math.exp`` for float64 (numba only)."""
    raise NotImplementedError("numba-only")


@overload(fexp, inline="always", jit_options={"fastmath": FASTMATH, "error_model": "numpy"})
def _fexp(x):
    if x == types.float32:
        return lambda x: exp32(x)
    return lambda x: math.exp(x)


@njit(inline="always", **JIT)
def softplus32(x):
    """(softplus(x), sigmoid(x)) for float32, branch-free so that it vectorises.

    softplus = max(x, 0) + log1p(e) with e = exp(-|x|) in (0, 1], and log1p(e) = 2 atanh(s) with
    s = e / (2 + e) <= 1/3: 2 s (1 + s^2/3 + s^4/5 + ...), eight terms (< 1e-8 relative), exact for tiny e.
    torch's threshold (x > 20 passes through, slope 1) holds by itself in float32: there log1p(e) < 3e-9 is
    below half an ulp of x, and 1 / (1 + e) rounds to 1.
    """
    one = np.float32(1.0)
    e = exp32(-abs(x))
    s = e / (np.float32(2.0) + e)
    q = _select(s > np.float32(1e-10), s * s, np.float32(0.0))  # no subnormal squares
    p = np.float32(1.0 / 15.0)
    p = p * q + np.float32(1.0 / 13.0)
    p = p * q + np.float32(1.0 / 11.0)
    p = p * q + np.float32(1.0 / 9.0)
    p = p * q + np.float32(1.0 / 7.0)
    p = p * q + np.float32(1.0 / 5.0)
    p = p * q + np.float32(1.0 / 3.0)
    p = p * q + one
    inverse = one / (one + e)  # sigmoid(|x|)
    positive = x > np.float32(0.0)
    return _select(positive, x, np.float32(0.0)) + np.float32(2.0) * s * p, _select(positive, inverse, one - inverse)


@njit(inline="always", cache=True, error_model="numpy")
def softplus64(x):
    """(softplus(x), d softplus / dx) for float64 with torch's threshold: x > 20 passes through, slope 1."""
    above = np.float64(x > SOFTPLUS_THRESHOLD)
    e = math.exp(min(x, SOFTPLUS_THRESHOLD))
    return above * x + (1.0 - above) * math.log1p(e), above + (1.0 - above) * e / (1.0 + e)


def softplus_slope(x):
    """(softplus(x), d softplus / dx) in x's own precision (numba only)."""
    raise NotImplementedError("numba-only")


@overload(softplus_slope, inline="always", jit_options={"fastmath": FASTMATH, "error_model": "numpy"})
def _softplus_slope(x):
    if x == types.float32:
        return lambda x: softplus32(x)
    return lambda x: softplus64(x)


@njit(**JIT)
def _gather(src, b, c0, width, t0, steps, tiles, w):
    """tiles[w, t, c] = src[b, c0 + c, t0 + t] for t < steps, c < width; 0 in lanes c >= width."""
    if width == LANES:
        full = steps - steps % 16
        for tb in range(0, full, 16):  # 16 x 16 tiles
            for t in range(16):
                for c in range(LANES):
                    tiles[w, tb + t, c] = src[b, c0 + c, t0 + tb + t]
        for t in range(full, steps):
            for c in range(LANES):
                tiles[w, t, c] = src[b, c0 + c, t0 + t]
    else:
        for t in range(steps):
            for c in range(LANES):
                tiles[w, t, c] = 0
        for c in range(width):
            for t in range(steps):
                tiles[w, t, c] = src[b, c0 + c, t0 + t]


@njit(**JIT)
def _scatter(tiles, w, dst, b, c0, width, t0, steps):
    """dst[b, c0 + c, t0 + t] = tiles[w, t, c] for t < steps, c < width."""
    for c in range(width):
        for t in range(steps):
            dst[b, c0 + c, t0 + t] = tiles[w, t, c]


@njit(**JIT)
def _lane_values(vector, c0, width, lanes, w):
    """lanes[w, c] = vector[c0 + c] for c < width, 0 beyond."""
    for c in range(LANES):
        lanes[w, c] = 0
    for c in range(width):
        lanes[w, c] = vector[c0 + c]


@njit(**JIT)
def _copy_lane(saved, j, work, w, into_work):
    """work[w] = saved[j] (``into_work``) or saved[j] = work[w]: (N, LANES) each."""
    for n in range(work.shape[1]):
        for c in range(LANES):
            if into_work:
                work[w, n, c] = saved[j, n, c]
            else:
                saved[j, n, c] = work[w, n, c]


@njit(**JIT)
def _zero(tiles, w, steps):
    """tiles[w, :steps] = 0 for (workers, chunk, LANES) or (workers, chunk, N, LANES) buffers."""
    flat = tiles[w].reshape(tiles.shape[1], -1)
    for t in range(steps):
        for i in range(flat.shape[1]):
            flat[t, i] = 0


@njit(**JIT)
def _time_steps(dtt, slope, w, bias_lanes, softplus, steps, want_slope):
    """In place on dtt[w]: raw delta -> dt = raw + bias, through softplus (threshold 20) when asked;
    slope[w] gets d dt / d raw when ``want_slope``."""
    one = np.ones(1, dtt.dtype)[0]
    if not softplus:
        for t in range(steps):
            for c in range(LANES):
                dtt[w, t, c] += bias_lanes[w, c]
        if want_slope:
            for t in range(steps):
                for c in range(LANES):
                    slope[w, t, c] = one
        return
    if not want_slope:
        for t in range(steps):
            for c in range(LANES):
                dtt[w, t, c] = softplus_slope(dtt[w, t, c] + bias_lanes[w, c])[0]
        return
    for t in range(steps):
        for c in range(LANES):
            value, derivative = softplus_slope(dtt[w, t, c] + bias_lanes[w, c])
            dtt[w, t, c] = value
            slope[w, t, c] = derivative


@njit(**JIT)
def _lane_A(A, g, heads, lane0, count, dstate, dtype):
    """A of the item's lanes as (count, N, LANES), 0 in lanes past the group's channels."""
    a_lanes = np.zeros((count, dstate, LANES), dtype)
    for j in range(count):
        c0 = g * heads + (lane0 + j) * LANES
        for c in range(min(LANES, (g + 1) * heads - c0)):
            for n in range(dstate):
                a_lanes[j, n, c] = A[c0 + c, n]
    return a_lanes


@njit(**JIT)
def _scan_chunk(ut, dtt, out, h, a, d_lanes, b_rows, c_rows, t0, steps, w):
    """The forward recurrence over one chunk of one lane: h[w] (N, LANES) carried in place, out[w, t] = C_t . h_t
    + D u_t. ``b_rows``, ``c_rows``: (L, N) time-major rows of B and C, read from row ``t0``."""
    dstate = h.shape[1]
    for t in range(steps):
        b_tn = b_rows[t0 + t, 0]
        c_tn = c_rows[t0 + t, 0]
        for c in range(LANES):  # n = 0 peeled: it initialises out with D u
            dt = dtt[w, t, c]
            uv = ut[w, t, c]
            hv = fexp(dt * a[w, 0, c]) * h[w, 0, c] + dt * uv * b_tn
            h[w, 0, c] = hv
            out[w, t, c] = c_tn * hv + d_lanes[w, c] * uv
        for n in range(1, dstate):
            b_tn = b_rows[t0 + t, n]
            c_tn = c_rows[t0 + t, n]
            for c in range(LANES):
                dt = dtt[w, t, c]
                hv = fexp(dt * a[w, n, c]) * h[w, n, c] + dt * ut[w, t, c] * b_tn
                h[w, n, c] = hv
                out[w, t, c] += c_tn * hv


@njit(parallel=PARALLEL, **OPTIONS)
def scan_forward(u, delta, A, Bt, Ct, D, bias, z, softplus, gated, chunk, splits, workers, y, last, ckpt, save):
    """y (batch, dim, L) and the last state (batch, dim, N); ``ckpt`` (batch, dim, chunks, N) when ``save``.

    u, delta, z, y: (batch, dim, L); A: (dim, N); Bt, Ct: (batch, G, L, N); D, bias: (dim,) (zeros when
    absent); ``z`` is read only when ``gated``. ``splits`` items per (batch, group), dealt round robin to
    ``workers`` parallel workers.
    """
    batch, dim, length = u.shape
    groups, dstate = Bt.shape[1], A.shape[1]
    heads = dim // groups
    lanes_per_group = (heads + LANES - 1) // LANES
    per_item = (lanes_per_group + splits - 1) // splits
    chunks = (length + chunk - 1) // chunk
    dtype = u.dtype
    ut = np.empty((workers, chunk, LANES), dtype)
    dtt = np.empty((workers, chunk, LANES), dtype)
    zt = np.empty((workers, chunk, LANES), dtype)
    out = np.empty((workers, chunk, LANES), dtype)
    h = np.empty((workers, dstate, LANES), dtype)  # one lane's state and A while it is scanned
    a = np.empty((workers, dstate, LANES), dtype)
    d_lanes = np.empty((workers, LANES), dtype)
    bias_lanes = np.empty((workers, LANES), dtype)
    for w in prange(workers):
        for item in range(w, batch * groups * splits, workers):
            b = item // (groups * splits)
            g = (item // splits) % groups
            lane0 = (item % splits) * per_item
            count = min(lanes_per_group, lane0 + per_item) - lane0
            if count <= 0:
                continue
            one = np.ones(1, dtype)[0]
            state = np.zeros((count, dstate, LANES), dtype)
            a_lanes = _lane_A(A, g, heads, lane0, count, dstate, dtype)
            for k in range(chunks):
                t0 = k * chunk
                steps = min(chunk, length - t0)
                for j in range(count):
                    c0 = g * heads + (lane0 + j) * LANES
                    width = min(LANES, (g + 1) * heads - c0)
                    _gather(u, b, c0, width, t0, steps, ut, w)
                    _gather(delta, b, c0, width, t0, steps, dtt, w)
                    _lane_values(bias, c0, width, bias_lanes, w)
                    _lane_values(D, c0, width, d_lanes, w)
                    _time_steps(dtt, dtt, w, bias_lanes, softplus, steps, False)
                    _copy_lane(state, j, h, w, True)
                    _copy_lane(a_lanes, j, a, w, True)
                    if save:
                        for c in range(width):
                            for n in range(dstate):
                                ckpt[b, c0 + c, k, n] = h[w, n, c]
                    _scan_chunk(ut, dtt, out, h, a, d_lanes, Bt[b, g], Ct[b, g], t0, steps, w)
                    if gated:
                        _gather(z, b, c0, width, t0, steps, zt, w)
                        for t in range(steps):
                            for c in range(LANES):
                                zv = zt[w, t, c]
                                out[w, t, c] *= zv / (one + fexp(-zv))
                    _scatter(out, w, y, b, c0, width, t0, steps)
                    _copy_lane(state, j, h, w, False)
            for j in range(count):
                c0 = g * heads + (lane0 + j) * LANES
                for c in range(min(LANES, (g + 1) * heads - c0)):
                    for n in range(dstate):
                        last[b, c0 + c, n] = state[j, n, c]


@njit(parallel=PARALLEL, **OPTIONS)
def scan_backward(u, delta, A, Bt, Ct, D, bias, z, softplus, gated, chunk, splits, workers, ckpt, dy,
                  du, ddelta, dz, dA_part, dD_part, dbias_part, dBt_part, dCt_part):
    """Gradients by a reverse walk over the chunks, recomputing each from its checkpoint.

    Writes du, ddelta, dz (batch, dim, L); per-batch partial sums dA_part (batch, dim, N) and dD_part,
    dbias_part (batch, dim) (float64); per-item partial sums dBt_part, dCt_part (splits, batch, G, L, N).
    d delta is with respect to the raw delta (the bias and softplus chained in).
    """
    batch, dim, length = u.shape
    groups, dstate = Bt.shape[1], A.shape[1]
    heads = dim // groups
    lanes_per_group = (heads + LANES - 1) // LANES
    per_item = (lanes_per_group + splits - 1) // splits
    chunks = (length + chunk - 1) // chunk
    dtype = u.dtype
    decays = np.empty((workers, chunk, dstate, LANES), dtype)  # exp(dt_t A)
    decayed = np.empty((workers, chunk, dstate, LANES), dtype)  # exp(dt_t A) h_{t-1}
    lane_grad_b = np.empty((workers, chunk, dstate, LANES), dtype)  # dB, dC before the sum over channels
    lane_grad_c = np.empty((workers, chunk, dstate, LANES), dtype)
    ut = np.empty((workers, chunk, LANES), dtype)
    dtt = np.empty((workers, chunk, LANES), dtype)
    slope = np.empty((workers, chunk, LANES), dtype)
    zt = np.empty((workers, chunk, LANES), dtype)
    out = np.empty((workers, chunk, LANES), dtype)  # C . h, then the gradient of the pre-gate output
    sum_gb = np.empty((workers, chunk, LANES), dtype)  # dy, then sum_n g B, then du
    sum_gha = np.empty((workers, chunk, LANES), dtype)  # sum_n g A exp(dt A) h_{t-1}, then d raw delta
    h = np.empty((workers, dstate, LANES), dtype)  # one lane's state, A, carry and dA while it is scanned
    a = np.empty((workers, dstate, LANES), dtype)
    cj = np.empty((workers, dstate, LANES), dtype)
    grad_a_chunk = np.empty((workers, dstate, LANES), dtype)
    d_lanes = np.empty((workers, LANES), dtype)
    bias_lanes = np.empty((workers, LANES), dtype)
    bias_sums = np.empty((workers, LANES), dtype)
    d_sums = np.empty((workers, LANES), dtype)
    for w in prange(workers):
        for item in range(w, batch * groups * splits, workers):
            b = item // (groups * splits)
            g = (item // splits) % groups
            part = item % splits
            lane0 = part * per_item
            count = min(lanes_per_group, lane0 + per_item) - lane0
            if count <= 0:
                continue
            one = np.ones(1, dtype)[0]
            zero = np.zeros(1, dtype)[0]
            a_lanes = _lane_A(A, g, heads, lane0, count, dstate, dtype)
            carry = np.zeros((count, dstate, LANES), dtype)  # exp(dt_{t+1} A) g_{t+1} entering a chunk from the right
            grad_a = np.zeros((count, dstate, LANES), np.float64)
            grad_d = np.zeros((count, LANES), np.float64)
            grad_bias = np.zeros((count, LANES), np.float64)
            for k in range(chunks - 1, -1, -1):
                t0 = k * chunk
                steps = min(chunk, length - t0)
                _zero(lane_grad_b, w, steps)
                _zero(lane_grad_c, w, steps)
                for j in range(count):
                    c0 = g * heads + (lane0 + j) * LANES
                    width = min(LANES, (g + 1) * heads - c0)
                    _copy_lane(a_lanes, j, a, w, True)
                    _copy_lane(carry, j, cj, w, True)
                    _gather(u, b, c0, width, t0, steps, ut, w)
                    _gather(delta, b, c0, width, t0, steps, dtt, w)
                    _lane_values(bias, c0, width, bias_lanes, w)
                    _lane_values(D, c0, width, d_lanes, w)
                    _time_steps(dtt, slope, w, bias_lanes, softplus, steps, True)
                    for n in range(dstate):
                        for c in range(LANES):
                            h[w, n, c] = 0
                    for c in range(width):
                        for n in range(dstate):
                            h[w, n, c] = ckpt[b, c0 + c, k, n]
                    for t in range(steps):  # recompute the chunk: decays, decayed states, C . h
                        for c in range(LANES):
                            out[w, t, c] = 0
                        for n in range(dstate):
                            b_tn = Bt[b, g, t0 + t, n]
                            c_tn = Ct[b, g, t0 + t, n]
                            for c in range(LANES):
                                dt = dtt[w, t, c]
                                decay = fexp(dt * a[w, n, c])
                                kept = decay * h[w, n, c]
                                hv = kept + dt * ut[w, t, c] * b_tn
                                h[w, n, c] = hv
                                decays[w, t, n, c] = decay
                                decayed[w, t, n, c] = kept
                                out[w, t, c] += c_tn * hv
                    _gather(dy, b, c0, width, t0, steps, sum_gb, w)
                    if gated:
                        _gather(z, b, c0, width, t0, steps, zt, w)
                        for t in range(steps):
                            for c in range(LANES):
                                zv = zt[w, t, c]
                                sig = one / (one + fexp(-zv))
                                grad_y = sum_gb[w, t, c]
                                pre = out[w, t, c] + d_lanes[w, c] * ut[w, t, c]
                                zt[w, t, c] = grad_y * pre * sig * (one + zv * (one - sig))  # dz
                                out[w, t, c] = grad_y * zv * sig
                                sum_gb[w, t, c] = 0
                                sum_gha[w, t, c] = 0
                        _scatter(zt, w, dz, b, c0, width, t0, steps)
                    else:
                        for t in range(steps):
                            for c in range(LANES):
                                out[w, t, c] = sum_gb[w, t, c]
                                sum_gb[w, t, c] = 0
                                sum_gha[w, t, c] = 0
                    for n in range(dstate):
                        for c in range(LANES):
                            grad_a_chunk[w, n, c] = 0
                    for t in range(steps - 1, -1, -1):  # the adjoint, back through the chunk
                        for n in range(dstate):
                            b_tn = Bt[b, g, t0 + t, n]
                            c_tn = Ct[b, g, t0 + t, n]
                            for c in range(LANES):
                                dt = dtt[w, t, c]
                                dtu = dt * ut[w, t, c]
                                gv = cj[w, n, c] + c_tn * out[w, t, c]
                                kept = decayed[w, t, n, c]
                                lane_grad_c[w, t, n, c] += out[w, t, c] * (kept + dtu * b_tn)
                                lane_grad_b[w, t, n, c] += gv * dtu
                                gh = gv * kept  # g_t exp(dt_t A) h_{t-1}
                                sum_gb[w, t, c] += gv * b_tn
                                sum_gha[w, t, c] += gh * a[w, n, c]
                                grad_a_chunk[w, n, c] += gh * dt
                                cj[w, n, c] = decays[w, t, n, c] * gv
                    _copy_lane(carry, j, cj, w, False)
                    for n in range(dstate):
                        for c in range(LANES):
                            grad_a[j, n, c] += grad_a_chunk[w, n, c]
                    for c in range(LANES):
                        bias_sums[w, c] = 0
                        d_sums[w, c] = 0
                    for t in range(steps):  # du, d raw delta, and the chunk's sums for dD, d delta_bias
                        for c in range(LANES):
                            uv = ut[w, t, c]
                            grad_out = out[w, t, c]
                            grad_raw = (uv * sum_gb[w, t, c] + sum_gha[w, t, c]) * slope[w, t, c]
                            sum_gha[w, t, c] = grad_raw
                            sum_gb[w, t, c] = dtt[w, t, c] * sum_gb[w, t, c] + d_lanes[w, c] * grad_out
                            bias_sums[w, c] += grad_raw
                            d_sums[w, c] += grad_out * uv
                    for c in range(LANES):
                        grad_bias[j, c] += bias_sums[w, c]
                        grad_d[j, c] += d_sums[w, c]
                    _scatter(sum_gb, w, du, b, c0, width, t0, steps)
                    _scatter(sum_gha, w, ddelta, b, c0, width, t0, steps)
                for t in range(steps):
                    for n in range(dstate):
                        total_b = zero
                        total_c = zero
                        for c in range(LANES):
                            total_b += lane_grad_b[w, t, n, c]
                            total_c += lane_grad_c[w, t, n, c]
                        dBt_part[part, b, g, t0 + t, n] = total_b
                        dCt_part[part, b, g, t0 + t, n] = total_c
            for j in range(count):
                c0 = g * heads + (lane0 + j) * LANES
                for c in range(min(LANES, (g + 1) * heads - c0)):
                    for n in range(dstate):
                        dA_part[b, c0 + c, n] = grad_a[j, n, c]
                    dD_part[b, c0 + c] = grad_d[j, c]
                    dbias_part[b, c0 + c] = grad_bias[j, c]



@njit(inline="always", **JIT)
def _route_position(t, length, reverse):
    """Map position of step ``t`` along a route that walks its map forwards or (``reverse``) backwards."""
    return length - 1 - t if reverse else t


@njit(**JIT)
def _gather_route_rows(x_dbl, b, g, reverse, t0, steps, rows, w):
    """rows[w, t, k] = x_dbl[b, g, k, position of step t0 + t]: one chunk's (Δ factor, B, C) rows of route g."""
    length = x_dbl.shape[3]
    for t in range(steps):
        p = _route_position(t0 + t, length, reverse)
        for k in range(x_dbl.shape[2]):
            rows[w, t, k] = x_dbl[b, g, k, p]


@njit(**JIT)
def _gather_route(src, b, c0, width, reverse, t0, steps, tiles, w):
    """tiles[w, t, c] = src[b, c0 + c, position of step t0 + t] for c < width, 0 beyond."""
    if not reverse:
        _gather(src, b, c0, width, t0, steps, tiles, w)
        return
    end = src.shape[2] - 1 - t0
    for t in range(steps):
        for c in range(LANES):
            tiles[w, t, c] = 0
        for c in range(width):
            tiles[w, t, c] = src[b, c0 + c, end - t]


@njit(**JIT)
def _scatter_add_route(tiles, w, dst, b, c0, width, reverse, t0, steps):
    """dst[b, c0 + c, position of step t0 + t] += tiles[w, t, c] for c < width."""
    if reverse:
        low = dst.shape[2] - t0 - steps  # the chunk's lowest position, that of its last step
        for c in range(width):
            for t in range(steps):
                dst[b, c0 + c, low + t] += tiles[w, steps - 1 - t, c]
    else:
        for c in range(width):
            for t in range(steps):
                dst[b, c0 + c, t0 + t] += tiles[w, t, c]


@njit(**JIT)
def _low_rank_delta(rows, w, weight_lanes, rank, steps, dtt):
    """dtt[w, t, c] = sum_r weight_lanes[w, r, c] rows[w, t, r]: Δ before its bias, from its low-rank factor."""
    for t in range(steps):
        for c in range(LANES):
            dtt[w, t, c] = 0
        for r in range(rank):
            factor = rows[w, t, r]
            for c in range(LANES):
                dtt[w, t, c] += weight_lanes[w, r, c] * factor


@njit(parallel=PARALLEL, **OPTIONS)
def cross_scan_forward(map_rows, map_cols, x_dbl, dt_weight, A, D, bias, rank, chunk, splits, workers,
                       y_rows, y_cols):
    """SS2D's four-route scan in one pass, for inference: adds routes 0 and 2 into ``y_rows``, 1 and 3 into
    ``y_cols``.

    map_rows: (batch, Di, L) the map row-major, map_cols: the same column-major (its transpose); route 0 walks
    map_rows forwards, 1 map_cols forwards, 2 and 3 the same backwards. x_dbl: (batch, 4, R + 2N, L) per route
    the low-rank Δ factor, B and C, in the order of that route's map; dt_weight: (4·Di, R); A: (4·Di, N);
    D, bias: (4·Di,). Δ = softplus(dt_weight · factor + bias). Items are runs of 16-channel lanes of one batch
    element; an item scans its lanes along every route in turn, so no two items write the same element.
    """
    batch, heads, length = map_rows.shape
    groups, dstate = x_dbl.shape[1], A.shape[1]
    lanes_per_group = (heads + LANES - 1) // LANES
    per_item = (lanes_per_group + splits - 1) // splits
    chunks = (length + chunk - 1) // chunk
    dtype = map_rows.dtype
    ut = np.empty((workers, chunk, LANES), dtype)
    dtt = np.empty((workers, chunk, LANES), dtype)
    out = np.empty((workers, chunk, LANES), dtype)
    rows = np.empty((workers, chunk, x_dbl.shape[2]), dtype)
    h = np.empty((workers, dstate, LANES), dtype)
    a = np.empty((workers, dstate, LANES), dtype)
    weight_lanes = np.empty((workers, rank, LANES), dtype)
    d_lanes = np.empty((workers, LANES), dtype)
    bias_lanes = np.empty((workers, LANES), dtype)
    for w in prange(workers):
        for item in range(w, batch * splits, workers):
            b = item // splits
            lane0 = (item % splits) * per_item
            count = min(lanes_per_group, lane0 + per_item) - lane0
            if count <= 0:
                continue
            for g in range(groups):
                source = map_rows if g % 2 == 0 else map_cols
                target = y_rows if g % 2 == 0 else y_cols
                reverse = g >= 2
                state = np.zeros((count, dstate, LANES), dtype)
                a_lanes = _lane_A(A, g, heads, lane0, count, dstate, dtype)
                for k in range(chunks):
                    t0 = k * chunk
                    steps = min(chunk, length - t0)
                    _gather_route_rows(x_dbl, b, g, reverse, t0, steps, rows, w)
                    for j in range(count):
                        channel = (lane0 + j) * LANES  # in the map
                        c0 = g * heads + channel  # in the route-stacked parameters
                        width = min(LANES, heads - channel)
                        _gather_route(source, b, channel, width, reverse, t0, steps, ut, w)
                        for r in range(rank):
                            for c in range(LANES):
                                weight_lanes[w, r, c] = 0
                            for c in range(width):
                                weight_lanes[w, r, c] = dt_weight[c0 + c, r]
                        _low_rank_delta(rows, w, weight_lanes, rank, steps, dtt)
                        _lane_values(bias, c0, width, bias_lanes, w)
                        _lane_values(D, c0, width, d_lanes, w)
                        _time_steps(dtt, dtt, w, bias_lanes, True, steps, False)
                        _copy_lane(state, j, h, w, True)
                        _copy_lane(a_lanes, j, a, w, True)
                        b_rows, c_rows = rows[w, :, rank:], rows[w, :, rank + dstate:]
                        _scan_chunk(ut, dtt, out, h, a, d_lanes, b_rows, c_rows, 0, steps, w)
                        _scatter_add_route(out, w, target, b, channel, width, reverse, t0, steps)
                        _copy_lane(state, j, h, w, False)


@njit(inline="always", **JIT)
def _nhwc_position(g, s, height, width):
    """Map position (row-major, i·W + j) of step ``s`` of route ``g``: rows (g even) or columns (g odd), the
    routes g >= 2 walked backwards."""
    length = height * width
    step = length - 1 - s if g >= 2 else s
    if g % 2 == 0:
        return step
    return (step % height) * width + step // height


@njit(parallel=PARALLEL, **OPTIONS)
def cross_scan_forward_nhwc(x_map, x_dbl, dt_weight, A, D, bias, rank, height, width, chunk, splits, workers, y):
    """:func:`cross_scan_forward` on a channels-last map: ``x_map`` and ``y`` are (batch, L, Di) (the NHWC memory of
    the map, L = H·W row-major), read and written in place by route position, so one chunk's 16 channels are
    contiguous; route 0 writes ``y``, routes 1-3 add to it (no zeroed output, no transposed copies).

    x_dbl: (batch, 4, R + 2N, L) per route the low-rank Δ factor, B and C, in map order (read by route position);
    dt_weight: (4·Di, R); A: (4·Di, N); D, bias: (4·Di,). Items: runs of 16-channel lanes of one batch element,
    scanned along every route in turn, so no two items write the same element.
    """
    batch, length, heads = x_map.shape
    groups, dstate = x_dbl.shape[1], A.shape[1]
    lanes_per_group = (heads + LANES - 1) // LANES
    per_item = (lanes_per_group + splits - 1) // splits
    chunks = (length + chunk - 1) // chunk
    dtype = x_map.dtype
    ut = np.empty((workers, chunk, LANES), dtype)
    dtt = np.empty((workers, chunk, LANES), dtype)
    out = np.empty((workers, chunk, LANES), dtype)
    rows = np.empty((workers, chunk, x_dbl.shape[2]), dtype)
    where = np.empty((workers, chunk), np.int64)
    h = np.empty((workers, dstate, LANES), dtype)
    a = np.empty((workers, dstate, LANES), dtype)
    weight_lanes = np.empty((workers, rank, LANES), dtype)
    d_lanes = np.empty((workers, LANES), dtype)
    bias_lanes = np.empty((workers, LANES), dtype)
    for w in prange(workers):
        for item in range(w, batch * splits, workers):
            b = item // splits
            lane0 = (item % splits) * per_item
            count = min(lanes_per_group, lane0 + per_item) - lane0
            if count <= 0:
                continue
            for g in range(groups):
                state = np.zeros((count, dstate, LANES), dtype)
                a_lanes = _lane_A(A, g, heads, lane0, count, dstate, dtype)
                for k in range(chunks):
                    t0 = k * chunk
                    steps = min(chunk, length - t0)
                    for t in range(steps):
                        p = _nhwc_position(g, t0 + t, height, width)
                        where[w, t] = p
                        for r in range(x_dbl.shape[2]):
                            rows[w, t, r] = x_dbl[b, g, r, p]
                    for j in range(count):
                        channel = (lane0 + j) * LANES  # in the map
                        c0 = g * heads + channel  # in the route-stacked parameters
                        lane_width = min(LANES, heads - channel)
                        for t in range(steps):
                            p = where[w, t]
                            for c in range(LANES):
                                ut[w, t, c] = 0
                            for c in range(lane_width):
                                ut[w, t, c] = x_map[b, p, channel + c]
                        for r in range(rank):
                            for c in range(LANES):
                                weight_lanes[w, r, c] = 0
                            for c in range(lane_width):
                                weight_lanes[w, r, c] = dt_weight[c0 + c, r]
                        _low_rank_delta(rows, w, weight_lanes, rank, steps, dtt)
                        _lane_values(bias, c0, lane_width, bias_lanes, w)
                        _lane_values(D, c0, lane_width, d_lanes, w)
                        _time_steps(dtt, dtt, w, bias_lanes, True, steps, False)
                        _copy_lane(state, j, h, w, True)
                        _copy_lane(a_lanes, j, a, w, True)
                        b_rows, c_rows = rows[w, :, rank:], rows[w, :, rank + dstate:]
                        _scan_chunk(ut, dtt, out, h, a, d_lanes, b_rows, c_rows, 0, steps, w)
                        for t in range(steps):
                            p = where[w, t]
                            if g == 0:
                                for c in range(lane_width):
                                    y[b, p, channel + c] = out[w, t, c]
                            else:
                                for c in range(lane_width):
                                    y[b, p, channel + c] += out[w, t, c]
                        _copy_lane(state, j, h, w, False)
