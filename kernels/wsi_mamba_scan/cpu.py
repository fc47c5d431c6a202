"""Chunked selective scan in plain PyTorch: any device, memory independent of the sequence length.

The sequence is cut into blocks of at most ``MAX_BLOCK_ELEMENTS / (batch * dim * N)`` steps; the state is
carried from block to block, so the largest temporary is O(batch * dim * N * block), never O(L * N).
Inside a block the scan is two-level: the block is viewed as K chunks of T steps (T ~ K ~ sqrt(block)) in
a time-major layout ``(T, batch, G, H, N, K)`` (channels split into G groups of H); one vectorised step
updates all K chunks at once (T steps), a walk over the K chunk ends carries the state, and
``h += (product of decays since the chunk start) * carry`` finishes the chunks. Every decay is a product
of factors <= 1 (for A <= 0), so nothing overflows: no division by cumulative decays as in the closed form.
Only ``(batch, dim, L)``-sized tensors are transposed to and from that layout, never the N-fold ones.

The backward pass walks the blocks in reverse, recomputes each block's states from the saved block-start
state, and runs the adjoint recurrence ``g_t = exp(dt_{t+1} A) g_{t+1} + C_t dy_t`` as the same two-level
scan walked backwards. ``exp(dt_t A) h_{t-1} = h_t - dt_t B_t u_t`` gives the decay gradients without
shifting the states.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .validation import ScanArgs, compute_dtype

MAX_BLOCK_ELEMENTS = 1 << 21  # elements of one (batch, dim, N, block) temporary: 8 MiB in float32
MIN_BLOCK = 64
SOFTPLUS_THRESHOLD = 20.0


def block_length(batch: int, dim: int, dstate: int, length: int) -> int:
    """Steps per block: the element budget spread over batch * dim * N, at least ``MIN_BLOCK``."""
    return max(MIN_BLOCK, min(length, MAX_BLOCK_ELEMENTS // (batch * dim * dstate)))


def chunk_shape(steps: int) -> tuple[int, int]:
    """(T, K) with T * K >= steps and T ~ K ~ sqrt(steps): T vectorised steps, then K chunk carries."""
    chunk = math.isqrt(steps - 1) + 1 if steps > 1 else 1
    return chunk, -(-steps // chunk)


def scan_forward(decay: torch.Tensor, states: torch.Tensor, init: torch.Tensor) -> torch.Tensor:
    """h_t = decay_t * h_{t-1} + drive_t over a time-major block ``(T, *S, K)``; ``states`` holds the drive.

    ``init`` (shape ``S``) enters the first step. Overwrites ``decay`` and ``states`` (which becomes h);
    returns the state after the last step.
    """
    steps, decays = states.unbind(0), decay.unbind(0)  # views: no per-step indexing in the loops
    for t in range(1, len(steps)):  # all K chunks at once, each from a zero state
        steps[t].addcmul_(decays[t], steps[t - 1])
        decays[t].mul_(decays[t - 1])  # decay[t] becomes the product of decays since the chunk start
    entering = []  # the state entering each chunk
    state = init
    for end, end_decay in zip(steps[-1].unbind(-1), decays[-1].unbind(-1), strict=True):
        entering.append(state)
        state = torch.addcmul(end, end_decay, state)
    states.addcmul_(decay, torch.stack(entering, dim=-1))
    return state


def scan_backward(decay: torch.Tensor, states: torch.Tensor, init: torch.Tensor) -> torch.Tensor:
    """g_t = decay_{t+1} * g_{t+1} + source_t, walked from the end; ``states`` holds the source.

    ``init`` is ``decay * g`` at the step after the block. Overwrites both tensors (``states`` becomes g)
    and returns ``decay_0 * g_0``, the term the previous block needs.
    """
    steps, decays = states.unbind(0), decay.unbind(0)
    count = len(steps)
    for t in range(count - 2, -1, -1):
        steps[t].addcmul_(decays[t + 1], steps[t + 1])
        if t + 2 < count:
            decays[t + 1].mul_(decays[t + 2])  # decay[t] (t >= 1) becomes the product of decays from t to T-1
    span = decays[1] if count > 1 else torch.ones_like(decays[0])
    entering = []  # decay * g entering each chunk from its right, last chunk first
    term = init
    for start, first_decay, chunk_span in zip(
        reversed(steps[0].unbind(-1)), reversed(decays[0].unbind(-1)), reversed(span.unbind(-1)), strict=True
    ):
        entering.append(term)
        term = first_decay * torch.addcmul(start, chunk_span, term)
    carry = torch.stack(entering[::-1], dim=-1)
    steps[-1].add_(carry)
    if count > 1:
        states[:-1].addcmul_(decay[1:], carry)
    return term


class TimeMajor:
    """Layout of one block: (b, d, L) <-> (T, b, G, H, 1, K) and (b, G, N, L) <-> (T, b, G, 1, N, K)."""

    def __init__(self, length: int, groups: int, heads: int):
        self.length, self.groups, self.heads = length, groups, heads
        self.chunk, self.count = chunk_shape(length)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.chunk * self.count - x.shape[-1]
        if pad:  # a zero-length step (dt = 0, drive = 0) keeps the state
            x = F.pad(x, (0, pad))
        return x.unflatten(-1, (self.count, self.chunk)).movedim(-1, 0).contiguous()

    def channels(self, x: torch.Tensor) -> torch.Tensor:
        """(b, d, L) -> (T, b, G, H, 1, K)."""
        return self._split(x).unflatten(2, (self.groups, self.heads)).unsqueeze(4)

    def grouped(self, x: torch.Tensor) -> torch.Tensor:
        """(b, G, N, L) -> (T, b, G, 1, N, K)."""
        return self._split(x).unsqueeze(3)

    def channels_back(self, x: torch.Tensor) -> torch.Tensor:
        """(T, b, G, H, K) -> (b, d, L)."""
        return x.flatten(2, 3).movedim(0, -1).flatten(-2)[..., : self.length]

    def grouped_back(self, x: torch.Tensor) -> torch.Tensor:
        """(T, b, G, N, K) -> (b, G, N, L)."""
        return x.movedim(0, -1).flatten(-2)[..., : self.length]


class Block:
    """One block of the sequence in the compute dtype and the time-major layout."""

    def __init__(self, args: ScanArgs, start: int, stop: int, dtype: torch.dtype, softplus: bool):
        groups = args.groups
        heads = args.dim // groups
        self.layout = layout = TimeMajor(stop - start, groups, heads)
        piece = slice(start, stop)
        raw_dt = args.delta[..., piece].to(dtype)
        if args.delta_bias is not None:
            raw_dt = raw_dt + args.delta_bias.to(dtype)[:, None]
        self.raw_dt = raw_dt
        dt = F.softplus(raw_dt) if softplus else raw_dt
        self.u = layout.channels(args.u[..., piece].to(dtype))
        self.dt = layout.channels(dt)
        self.B = layout.grouped(args.B[..., piece].to(dtype))
        self.C = layout.grouped(args.C[..., piece].to(dtype))
        self.A = args.A.to(dtype).view(groups, heads, args.dstate, 1)  # broadcasts as (G, H, N, K)
        self.D = None if args.D is None else args.D.to(dtype).view(groups, heads, 1)
        self.z = None if args.z is None else layout.channels(args.z[..., piece].to(dtype)).squeeze(4)

    def decay(self) -> torch.Tensor:
        """exp(dt A): (T, b, G, H, N, K)."""
        return torch.exp(self.dt * self.A)

    def drive(self) -> torch.Tensor:
        """dt B u: (T, b, G, H, N, K)."""
        return self.dt * self.u * self.B

    def states(self, init: torch.Tensor, decay: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """All states of the block from ``init`` (b, d, N), and the state after the block (b, d, N).

        ``decay``, when given, is ``self.decay()`` computed already; it is overwritten.
        """
        states = self.drive()
        decay = self.decay() if decay is None else decay
        last = scan_forward(decay, states, init.unflatten(1, self.A.shape[:2]))
        return states, last.flatten(1, 2)

    def output(self, states: torch.Tensor) -> torch.Tensor:
        """C . h + D u before the gate: (T, b, G, H, K)."""
        out = (states * self.C).sum(4)
        if self.D is not None:
            out.addcmul_(self.u.squeeze(4), self.D)
        return out


def _blocks(args: ScanArgs) -> list[tuple[int, int]]:
    step = block_length(args.batch, args.dim, args.dstate, args.length)
    return [(start, min(start + step, args.length)) for start in range(0, args.length, step)]


def chunked_forward(args: ScanArgs, softplus: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns y (u's dtype), the last state and the state entering every block (for the backward)."""
    dtype = compute_dtype(args.u, args.delta, args.A, args.B, args.C, args.D, args.z, args.delta_bias)
    y = torch.empty_like(args.u, memory_format=torch.contiguous_format)
    blocks = _blocks(args)
    block_starts = args.u.new_empty((len(blocks), args.batch, args.dim, args.dstate), dtype=dtype)
    state = args.u.new_zeros((args.batch, args.dim, args.dstate), dtype=dtype)
    for index, (start, stop) in enumerate(blocks):
        block_starts[index] = state
        block = Block(args, start, stop, dtype, softplus)
        states, state = block.states(state)
        out = block.output(states)
        if block.z is not None:
            out = out * F.silu(block.z)
        y[..., start:stop] = block.layout.channels_back(out)
    return y, state, block_starts


def _silu_grad(z: torch.Tensor) -> torch.Tensor:
    sig = torch.sigmoid(z)
    return sig * (1 + z * (1 - sig))


def chunked_backward(
    args: ScanArgs, softplus: bool, block_starts: torch.Tensor, grad_y: torch.Tensor
) -> dict[str, torch.Tensor | None]:
    """Gradients of every input (in each input's dtype) by a reverse walk over the blocks."""
    dtype = block_starts.dtype
    grads: dict[str, torch.Tensor | None] = {
        "u": torch.empty_like(args.u),
        "delta": torch.empty_like(args.delta),
        "B": torch.empty_like(args.B),
        "C": torch.empty_like(args.C),
        "z": None if args.z is None else torch.empty_like(args.z),
    }
    grad_A = torch.zeros(args.A.shape, dtype=dtype, device=args.A.device)
    grad_D = None if args.D is None else torch.zeros(args.dim, dtype=dtype, device=args.u.device)
    grad_bias = None if args.delta_bias is None else torch.zeros(args.dim, dtype=dtype, device=args.u.device)
    adjoint_in = torch.zeros_like(block_starts[0]).unflatten(1, (args.groups, args.dim // args.groups))
    for index, (start, stop) in reversed(list(enumerate(_blocks(args)))):
        piece = slice(start, stop)
        block = Block(args, start, stop, dtype, softplus)
        layout = block.layout
        decay = block.decay()
        states, _ = block.states(block_starts[index], decay.clone())
        grad_out = layout.channels(grad_y[..., piece].to(dtype)).squeeze(4)  # (T, b, G, H, K)
        if block.z is not None:
            grads["z"][..., piece] = layout.channels_back(grad_out * block.output(states) * _silu_grad(block.z))
            grad_out = grad_out * F.silu(block.z)
        grad_out = grad_out.unsqueeze(4)  # (T, b, G, H, 1, K)
        adjoint = block.C * grad_out  # becomes g, the gradient of the state
        adjoint_in = scan_backward(decay, adjoint, adjoint_in)

        grads["C"][..., piece] = layout.grouped_back((states * grad_out).sum(3))
        grads["B"][..., piece] = layout.grouped_back((adjoint * (block.dt * block.u)).sum(3))
        adjoint_B = (adjoint * block.B).sum(4, keepdim=True)
        decayed = states.sub_(block.drive())  # exp(dt_t A) h_{t-1}
        adjoint_decayed = adjoint.mul_(decayed)
        grad_dt = block.u * adjoint_B + (adjoint_decayed * block.A).sum(4, keepdim=True)
        grad_A += (adjoint_decayed * block.dt).sum((0, 1, 5)).flatten(0, 1)
        grad_u = block.dt * adjoint_B
        if block.D is not None:
            grad_u.addcmul_(grad_out, block.D.unsqueeze(-1))
            grad_D += (grad_out * block.u).sum((0, 1, 4, 5)).flatten()
        grad_dt = layout.channels_back(grad_dt[..., 0, :])
        if softplus:
            grad_dt = grad_dt * torch.where(block.raw_dt > SOFTPLUS_THRESHOLD, 1.0, torch.sigmoid(block.raw_dt))
        if grad_bias is not None:
            grad_bias += grad_dt.sum((0, 2))
        grads["u"][..., piece] = layout.channels_back(grad_u[..., 0, :])
        grads["delta"][..., piece] = grad_dt
    grads["A"] = grad_A.to(args.A.dtype)
    grads["D"] = None if grad_D is None else grad_D.to(args.D.dtype)
    grads["delta_bias"] = None if grad_bias is None else grad_bias.to(args.delta_bias.dtype)
    return grads


ORDER = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


class ChunkedScan(torch.autograd.Function):
    """Autograd wrapper: saves the inputs and the block-start states, recomputes the rest."""

    @staticmethod
    def forward(ctx, softplus: bool, *tensors: torch.Tensor | None):
        args = ScanArgs(*tensors)
        y, last_state, block_starts = chunked_forward(args, softplus)
        ctx.softplus = softplus
        ctx.save_for_backward(block_starts, *tensors)
        ctx.mark_non_differentiable(last_state)
        return y, last_state

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor, _grad_last: torch.Tensor | None):
        block_starts, *tensors = ctx.saved_tensors
        args = ScanArgs(*tensors)
        grads = chunked_backward(args, ctx.softplus, block_starts, grad_y)
        needed = zip(ORDER, ctx.needs_input_grad[1:], strict=True)
        return (None, *(grads[name] if wanted else None for name, wanted in needed))


def scan_chunked(args: ScanArgs, softplus: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunked scan with autograd: returns (y, last_state)."""
    return ChunkedScan.apply(
        softplus, args.u, args.delta, args.A, args.B, args.C, args.D, args.z, args.delta_bias
    )
