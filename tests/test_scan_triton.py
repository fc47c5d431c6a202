"""The Triton selective-scan kernels against the float64 reference: forward, last state and every gradient.

Runs natively on CUDA, or on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``, set by
conftest.py), where scans cost ~0.1 ms per element: the interpreted grid is trimmed to small shapes that
still cover every L, N, G and option value at least once.
"""

from __future__ import annotations

import functools

import pytest
import torch

pytest.importorskip("triton", reason="triton does not import (it ships Linux wheels only)")

from scan_cases import (
    OPTION_PATTERNS,
    TOLERANCE,
    assert_matches_reference,
    make_case,
    reference_float64,
    rel_err,
)

from wsi_mamba_scan import selective_scan, triton_scan
from wsi_mamba_scan.triton_scan import check_triton_device

pytestmark = pytest.mark.triton

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
scan = functools.partial(selective_scan, backend="triton")
MAX_ERRORS: dict[torch.dtype, float] = {}  # largest relative error per dtype, for reports

# (batch, dim, L, N, G); the option pattern rotates with the position in the list.
if CUDA:
    SHAPES = [
        (batch, 8 * groups, length, dstate, groups)
        for length in (1, 7, 64, 1000, 4099)
        for dstate in (1, 4, 16)
        for groups in (1, 4)
        for batch in (2,)
    ]
else:
    SHAPES = [
        (2, 8, 1, 16, 4),
        (2, 8, 1, 1, 1),
        (2, 8, 7, 4, 1),
        (1, 8, 7, 16, 4),
        (2, 8, 64, 1, 4),
        (2, 8, 64, 4, 1),
        (1, 4, 64, 16, 1),
        (2, 8, 300, 1, 1),
        (1, 8, 300, 4, 4),
    ]
GRID = [(shape, OPTION_PATTERNS[i % len(OPTION_PATTERNS)]) for i, shape in enumerate(SHAPES)]
# 16-bit inputs on a few shapes (A stays float32, as in the models).
HALF_GRID = [
    ((2, 8, 64, 4, 4), OPTION_PATTERNS[0], torch.bfloat16),
    ((1, 8, 7, 16, 1), OPTION_PATTERNS[3], torch.float16),
    ((2, 8, 300, 1, 4), OPTION_PATTERNS[5], torch.bfloat16),
    ((2, 8, 64, 4, 1), OPTION_PATTERNS[6], torch.float16),
]


def _ids(shape: tuple[int, ...], options: frozenset[str]) -> str:
    batch, dim, length, dstate, groups = shape
    return f"b{batch}-d{dim}-L{length}-N{dstate}-G{groups}-{'+'.join(sorted(options)) or 'none'}"


def _check(shape: tuple[int, ...], options: frozenset[str], dtype: torch.dtype, seed: int) -> dict:
    return _check_case(make_case(*shape, options=options, seed=seed), dtype)


def _check_case(case, dtype: torch.dtype) -> dict:
    errors = assert_matches_reference(scan, case, dtype, device=DEVICE)
    MAX_ERRORS[dtype] = max(MAX_ERRORS.get(dtype, 0.0), *errors.values())
    return errors


@pytest.mark.parametrize("shape,options", GRID, ids=[_ids(s, o) for s, o in GRID])
def test_float32_matches_reference(shape, options):
    _check(shape, options, torch.float32, seed=sum(shape))


@pytest.mark.parametrize(
    "shape,options,dtype", HALF_GRID, ids=[f"{_ids(s, o)}-{str(t)[6:]}" for s, o, t in HALF_GRID]
)
def test_half_matches_reference(shape, options, dtype):
    _check(shape, options, dtype, seed=7)


def test_channels_per_group_not_a_multiple_of_block_d(monkeypatch):
    # 10 channels per group in blocks of 4: three channel blocks per group, the last one half masked, so the
    # grouped dB/dC partial sums of several programs are reduced.
    monkeypatch.setattr(triton_scan, "MAX_BLOCK_D", 4)
    _check((2, 20, 23, 4, 2), OPTION_PATTERNS[0], torch.float32, seed=3)
    # 6 channels per group in one block of 8.
    monkeypatch.setattr(triton_scan, "MAX_BLOCK_D", None)
    _check((1, 12, 9, 2, 2), OPTION_PATTERNS[2], torch.float32, seed=4)


@pytest.mark.parametrize("chunks,step", [(1, -1), (1, 1), (3, 1)], ids=["BL-1", "BL+1", "3BL+1"])
def test_chunk_boundaries(chunks, step, monkeypatch):
    # L = BLOCK_L - 1, BLOCK_L + 1 and 3 BLOCK_L + 1 (tile boundaries), with a small BLOCK_L so that several
    # tiles stay cheap; one segment, so the state crosses every tile boundary inside one program.
    block_l = 64 if CUDA else 16
    monkeypatch.setattr(triton_scan, "BLOCK_L", block_l)
    monkeypatch.setattr(triton_scan, "SEG_TILES", 1 << 20)
    length = chunks * block_l + step
    options = OPTION_PATTERNS[(chunks + step) % len(OPTION_PATTERNS)] | {"return_last_state"}
    _check((1, 4, length, 4, 2), options, torch.float32, seed=length)


def test_plan_fills_an_h100():
    # The grid arithmetic of the module docstring and docs/selective_scan.md, at the GPU block sizes.
    sms = 132
    for length, seg_tiles in ((65_536, 47), (2**20, 745)):
        for groups, dblocks in ((4, 12), (1, 48)):
            p = triton_scan.plan(1, 384, groups, length, sms, interpreted=False)
            assert (p.block_d, p.block_l, p.n_dblocks) == (8, 128, dblocks)
            assert (p.seg_tiles, p.n_segs) == (seg_tiles, 11)
            assert groups * p.n_dblocks * p.n_segs >= triton_scan.PROGRAMS_PER_SM * sms
    # a batch that fills the GPU alone keeps one segment; short sequences keep >= GPU_MIN_SEG_TILES tiles
    assert triton_scan.plan(16, 384, 4, 65_536, sms, interpreted=False).n_segs == 1
    short = triton_scan.plan(1, 384, 4, 1000, sms, interpreted=False)
    assert (short.n_tiles, short.n_segs) == (8, 2)


# (batch, dim, L, N, G, tiles per segment, segments): L split across programs with short segments (BLOCK_L
# 16, or 64 on CUDA), so that h and the adjoint are carried across several segment boundaries.
SEGMENT_CASES = [
    ((1, 8, 3 * 32 + 5, 4, 2), 2, 4),  # 3 segments and a 5-step one: L is not a multiple of the segment
    ((2, 4, 96, 2, 1), 2, 3),  # exactly 3 segments
    ((1, 8, 20, 4, 4), 2, 1),  # L shorter than one segment
    ((1, 4, 40, 16, 2), 2, 2),  # a last segment of one partial tile
    ((1, 12, 70, 4, 2), 1, 5),  # one tile per segment, two channel blocks per group (see below)
]


@pytest.mark.parametrize("shape,seg_tiles,n_segs", SEGMENT_CASES,
                         ids=[f"{_ids(s, frozenset())[:-5]}-seg{k}x{n}" for s, k, n in SEGMENT_CASES])
def test_segments(shape, seg_tiles, n_segs, monkeypatch):
    block_l = 64 if CUDA else 16
    batch, dim, length, dstate, groups = shape
    length = length * block_l // 16
    monkeypatch.setattr(triton_scan, "BLOCK_L", block_l)
    monkeypatch.setattr(triton_scan, "SEG_TILES", seg_tiles)
    monkeypatch.setattr(triton_scan, "MAX_BLOCK_D", 4)  # 6 channels per group: dB/dC added by 2 programs
    assert triton_scan.plan(batch, dim, groups, length, 132).n_segs == n_segs
    options = OPTION_PATTERNS[length % len(OPTION_PATTERNS)] | {"return_last_state"}
    _check((batch, dim, length, dstate, groups), options, torch.float32, seed=length)


def test_segments_half_precision(monkeypatch):
    monkeypatch.setattr(triton_scan, "SEG_TILES", 1)
    _check((1, 8, 53, 4, 2), OPTION_PATTERNS[0], torch.bfloat16, seed=21)


def test_segments_with_vanishing_decay(monkeypatch):
    # exp(dt A) down to about e^-44 a step: a segment's decay product underflows to 0 in fp32, which the carry
    # must take as it is (no division by it anywhere).
    monkeypatch.setattr(triton_scan, "SEG_TILES", 1)
    case = make_case(1, 4, 50, 4, 2, OPTION_PATTERNS[1] | {"return_last_state"}, seed=13)
    case.inputs["delta"] *= 100.0
    _check_case(case, torch.float32)


def _strided(x: torch.Tensor) -> torch.Tensor:
    """A leaf holding ``x`` at even positions of its last axis, first two axes transposed in memory."""
    base = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype, device=x.device)
    base[..., ::2] = x
    if x.dim() >= 2:
        base = base.transpose(0, 1).contiguous().transpose(0, 1)
    return base.requires_grad_(True)


def test_non_contiguous_inputs():
    case = make_case(2, 8, 20, 4, 2, OPTION_PATTERNS[0], seed=11)
    grad_out = torch.randn(2, 8, 20, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    y_ref, last_ref, grads_ref = reference_float64(case, torch.float32, grad_out)
    leaves = {
        name: None if v is None else _strided(v.to(device=DEVICE, dtype=torch.float32))
        for name, v in case.inputs.items()
    }
    views = {name: None if v is None else v[..., ::2] for name, v in leaves.items()}
    assert not views["u"].is_contiguous() and not views["B"].is_contiguous()
    y, last = scan(**views, **case.kwargs())
    y.backward(grad_out.to(device=DEVICE, dtype=y.dtype))
    fwd_tol, grad_tol = TOLERANCE[torch.float32]
    assert rel_err(y, y_ref) < fwd_tol and rel_err(last, last_ref) < fwd_tol
    for name, grad in grads_ref.items():
        got = leaves[name].grad[..., ::2]
        assert rel_err(got, grad) < grad_tol, name
        assert leaves[name].grad[..., 1::2].abs().max() == 0, name


def test_softplus_threshold():
    # delta + bias above 20 passes through softplus unchanged, and so does its gradient.
    case = make_case(1, 4, 12, 2, 1, OPTION_PATTERNS[0], seed=8)
    case.inputs["delta"][..., ::3] += 22.0
    _check_case(case, torch.float32)


def test_gradient_of_some_inputs_only():
    case = make_case(1, 4, 10, 2, 2, OPTION_PATTERNS[0], seed=9)
    tensors = case.tensors(torch.float32, DEVICE)
    for name in ("delta", "A", "C", "D", "delta_bias"):
        tensors[name].requires_grad_(False)
    y, _ = scan(**tensors, **case.kwargs())
    y.sum().backward()
    assert tensors["u"].grad is not None and tensors["B"].grad is not None and tensors["z"].grad is not None
    assert tensors["A"].grad is None and tensors["delta"].grad is None


def test_inference_without_grad_matches():
    case = make_case(1, 8, 30, 4, 1, OPTION_PATTERNS[0], seed=2)
    tensors = case.tensors(torch.float32, DEVICE)
    y_grad, last_grad = scan(**tensors, **case.kwargs())
    with torch.no_grad():
        y, last = scan(**tensors, **case.kwargs())
    assert not y.requires_grad and not last.requires_grad and not last_grad.requires_grad
    torch.testing.assert_close(y, y_grad.detach(), rtol=0, atol=0)
    torch.testing.assert_close(last, last_grad, rtol=0, atol=0)


def test_check_triton_device_errors(monkeypatch):
    u64 = torch.zeros(2, 3, 5, dtype=torch.float64, device=DEVICE)
    with pytest.raises(ValueError, match=r"float64.*\(2, 3, 5\)|\(2, 3, 5\).*float64"):
        check_triton_device(u64)
    with pytest.raises(ValueError, match="float64"):
        scan(u64, u64, torch.zeros(3, 2, dtype=torch.float64, device=DEVICE),
             torch.zeros(2, 2, 5, dtype=torch.float64, device=DEVICE),
             torch.zeros(2, 2, 5, dtype=torch.float64, device=DEVICE))
    u_cpu = torch.zeros(2, 3, 5)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match=r"\(2, 3, 5\).*cpu"):
        check_triton_device(u_cpu)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="CUDA"):
        check_triton_device(u_cpu)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    check_triton_device(u_cpu)  # accepted under the interpreter


_COMPILE_FOR_H100 = """
import os
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from wsi_mamba_scan import triton_scan as ts

CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def resources(cubin):
    # registers and stack (spills) per thread, as ptxas allotted them
    if not os.access(CUOBJDUMP, os.X_OK):
        return "(no cuobjdump)"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([CUOBJDUMP, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    return " ".join(w for line in out.splitlines() if "REG:" in line for w in line.split() if w[:4] in ("REG:", "STAC"))


ptrs = ("u", "delta", "B", "C", "D", "z", "bias", "y", "dout", "du", "ddelta", "dz")
kernels = (
    (ts._fwd_local_kernel, {}, ts.FWD_NUM_WARPS),
    (ts._carry_kernel, {"BLOCK": ts.CARRY_BLOCK, "REVERSE": True}, ts.CARRY_NUM_WARPS),
    (ts._scan_fwd_kernel, {"SAVE_STATES": True, "HAS_INIT": True}, ts.FWD_NUM_WARPS),
    (ts._bwd_local_kernel, {}, ts.FWD_NUM_WARPS),
    (ts._scan_bwd_kernel, {"HAS_INIT": True}, ts.BWD_NUM_WARPS),
)
for dtype, dstate, flags in (("bf16", 16, True), ("fp16", 1, True), ("fp32", 4, False)):
    io = {f"{name}_ptr": f"*{dtype}" for name in ptrs}
    for fn, extra, warps in kernels:
        every = dict(N=dstate, N_PAD=triton.next_power_of_2(dstate), BLOCK_D=ts.GPU_MAX_BLOCK_D,
                     BLOCK_L=ts.GPU_BLOCK_L, HAS_D=flags, HAS_Z=flags, HAS_BIAS=flags, SOFTPLUS=flags, **extra)
        consts = {name: value for name, value in every.items() if name in fn.arg_names}
        sig = {name: "constexpr" if name in consts else io.get(name, "*fp32") if name.endswith("_ptr") else "i32"
               for name in fn.arg_names}
        kernel = triton.compile(ASTSource(fn, sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                                options={"num_warps": warps})
        assert kernel.asm["cubin"], (fn.__name__, dtype)
        print(f"{fn.__name__} {dtype} N {dstate}: {resources(kernel.asm['cubin'])}")
print("compiled")
"""


@pytest.mark.skipif(CUDA, reason="on CUDA every other test compiles the kernels for the device")
def test_kernels_compile_for_h100_without_a_gpu():
    # The interpreter runs the kernels' Python, not Triton's compiler: compile them ahead of time for sm_90
    # (ptxas ships with the triton wheel) so that code only a GPU build rejects fails here too.
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    done = subprocess.run([sys.executable, "-c", _COMPILE_FOR_H100], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]
    print(done.stdout)  # registers and stack bytes (spills) per kernel: pytest -s shows them
