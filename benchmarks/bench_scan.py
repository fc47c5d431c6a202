"""Selective-scan speed and memory: every available backend against a floor and the reference loop.

    python benchmarks/bench_scan.py                 # CPU table (fp32) and, when CUDA is present, GPU (bf16)
    python benchmarks/bench_scan.py --quick         # smaller lengths, for a smoke run
    python benchmarks/bench_scan.py --device cuda   # only the GPU table
    python benchmarks/bench_scan.py --device cpu --threads 1 --shapes 384x65536   # the issue's CPU rows

Each CPU measurement runs in a fresh subprocess so that its peak RSS is its own: the memory column is
the peak resident-set growth after the inputs exist, and ``mem/io`` divides it by the bytes of the
inputs, outputs and gradients. The floor is, on CPU, one elementwise ``exp`` over dim * L * N elements;
on GPU, a device-to-device copy of the bytes the call must move (``triton.testing.do_bench`` medians).
``x ref`` is the reference loop's time divided by the row's time, at the same shape (small L only).
On CPU every backend is called once on a small input before the timed calls (numba loads or compiles its
kernels there); the first table line gives the numba kernels' compile time in a fresh cache.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import torch
from rss import current_rss, peak_rss, reset_peak_rss, run_isolated

from wsi_mamba_scan import selective_scan, triton_available
from wsi_mamba_scan.cpu_fused import numba_importable

DIRECTIONS = 4  # VMamba's four scan routes: grouped B and C, G = 4


@dataclass
class Shape:
    dim: int
    dstate: int
    length: int
    dtype: str
    device: str
    batch: int = 1

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def io_bytes(self, backward: bool) -> int:
        """Bytes the call must move at least: read u, delta, B, C and write y; backward also dy and grads."""
        size = torch.finfo(self.torch_dtype).bits // 8
        seq = self.batch * self.dim * self.length
        bc = self.batch * DIRECTIONS * self.dstate * self.length
        forward = 3 * seq + 2 * bc
        return size * (forward + (5 * seq + 4 * bc if backward else 0))

    def io_tensor_bytes(self) -> int:
        """Bytes of the inputs (u, delta, B, C, dy), the output and the gradients: what memory is compared to."""
        size = torch.finfo(self.torch_dtype).bits // 8
        seq = self.batch * self.dim * self.length
        bc = self.batch * DIRECTIONS * self.dstate * self.length
        return size * (6 * seq + 4 * bc)


def make_inputs(shape: Shape, grad: bool) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    b, d, n, length = shape.batch, shape.dim, shape.dstate, shape.length
    tensors = {
        "u": torch.randn(b, d, length, generator=gen),
        "delta": torch.rand(b, d, length, generator=gen) * 0.1 + 0.001,
        "A": -torch.rand(d, n, generator=gen) - 0.1,
        "B": torch.randn(b, DIRECTIONS, n, length, generator=gen),
        "C": torch.randn(b, DIRECTIONS, n, length, generator=gen),
    }
    out = {}
    for name, value in tensors.items():
        value = value.to(device=shape.device, dtype=torch.float32 if name == "A" else shape.torch_dtype)
        out[name] = value.requires_grad_(grad)
    return out


def measure(shape: Shape, backend: str, backward: bool, repeats: int) -> dict[str, float]:
    """Time (s, median) and peak memory growth (bytes) of one call, forward or forward + backward."""
    inputs = make_inputs(shape, backward)
    grad_y = torch.randn(shape.batch, shape.dim, shape.length, dtype=shape.torch_dtype, device=shape.device)

    def call() -> None:
        y = selective_scan(**inputs, backend=backend)
        if backward:
            y.backward(grad_y)
            for value in inputs.values():
                value.grad = None

    if shape.device == "cpu":  # load (or compile) numba's kernels, outside the timing and the memory
        small = make_inputs(Shape(shape.dim, shape.dstate, 16, shape.dtype, "cpu"), backward)
        y = selective_scan(**small, backend=backend)
        if backward:
            y.sum().backward()

    if shape.device == "cuda":
        import triton.testing

        call()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        call()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        return {"seconds": triton.testing.do_bench(call, return_mode="median") / 1e3, "peak_bytes": peak}
    reset_peak_rss()
    base = current_rss()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    peak = peak_rss() - base
    return {"seconds": statistics.median(times), "peak_bytes": peak}


def floor_seconds(shape: Shape, backward: bool) -> float:
    """CPU: one exp over dim * L * N fp32 elements; GPU: a device copy of the bytes the call moves."""
    if shape.device == "cuda":
        import triton.testing

        src = torch.empty(shape.io_bytes(backward) // 2, dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        return 2 * triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median") / 1e3
    x = torch.rand(shape.batch * shape.dim * shape.length * shape.dstate) * -1
    times = []
    for _ in range(3):
        start = time.perf_counter()
        torch.exp(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_child(shape: Shape, backend: str, backward: bool, repeats: int) -> dict[str, float]:
    """Measure in a fresh interpreter so that its peak RSS belongs to this measurement alone."""
    spec = {"shape": asdict(shape), "backend": backend, "backward": backward, "repeats": repeats}
    return run_isolated(__file__, spec, ["--threads", str(torch.get_num_threads())])


def compile_seconds(fresh: bool) -> dict[str, float]:
    """First forward and backward call of the numba kernels (float32) in a fresh interpreter: with an empty
    numba cache (``fresh``: the compile) or the usual one."""
    command = [sys.executable, __file__, "--compile-child", "--threads", str(torch.get_num_threads())]
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache} if fresh else None
        done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def first_calls() -> dict[str, float]:
    """Seconds of the first numba forward and backward calls (the compile, when the cache is empty)."""
    inputs = make_inputs(Shape(32, 4, 64, "float32", "cpu"), True)
    start = time.perf_counter()
    y = selective_scan(**inputs, backend="numba")
    forward = time.perf_counter() - start
    start = time.perf_counter()
    y.sum().backward()
    return {"forward": forward, "backward": time.perf_counter() - start}


def plan(device: str, quick: bool, shapes: list[str] | None = None) -> list[tuple[Shape, list[str]]]:
    """(shape, backends) rows: the issue's grid, with the reference loop at small L; ``shapes``: only these
    ``DIMxL`` rows."""
    rows = []
    if device == "cpu":
        lengths = [(384, 4096), (384, 65536), (64, 4096), (64, 1 << 20)]
        if quick:
            lengths = [(384, 4096), (64, 4096), (64, 1 << 16)]
        if shapes:
            lengths = [tuple(int(v) for v in text.lower().split("x")) for text in shapes]
        fused = ["numba"] if numba_importable() else []
        for dstate in (1, 16):
            for dim, length in lengths:
                backends = ["cpu", *fused] + (["reference"] if length <= 4096 else [])
                rows.append((Shape(dim, dstate, length, "float32", "cpu"), backends))
    else:
        lengths = [4096, 65536] if quick else [4096, 65536, 1 << 20]
        for dstate in (1, 16):
            for length in lengths:
                backends = ["triton"] + (["cpu"] if length <= 65536 else [])
                rows.append((Shape(384, dstate, length, "bfloat16", "cuda"), backends))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="smaller lengths")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    parser.add_argument("--shapes", nargs="+", metavar="DIMxL", help="CPU rows of these (dim, L) only")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--compile-child", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if opts.compile_child:
        print(json.dumps(first_calls()))
        return
    if opts.child:
        spec = json.loads(opts.child)
        torch.manual_seed(0)
        result = measure(Shape(**spec["shape"]), spec["backend"], spec["backward"], spec["repeats"])
        print(json.dumps(result))
        return
    devices = ["cpu", "cuda"] if opts.device == "all" else [opts.device]
    if "cuda" in devices and not (torch.cuda.is_available() and triton_available()):
        devices.remove("cuda")
        print("# no CUDA device with Triton: GPU rows skipped")
    print(f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads" + (f", {torch.cuda.get_device_name()}" if "cuda" in devices else ""))
    if "cpu" in devices and numba_importable():
        import numba

        cold = compile_seconds(fresh=True)
        compile_seconds(fresh=False)  # fills the usual cache if it is empty
        cached = compile_seconds(fresh=False)
        print(f"# numba {numba.__version__}, float32 kernels, first call in a new process: forward "
              f"{cold['forward']:.1f} s, backward {cold['backward']:.1f} s with an empty cache (the compile); "
              f"{cached['forward']:.2f} s, {cached['backward']:.2f} s from numba's on-disk cache")
    header = ("| device | backend | dtype | dim | N | L | pass | time ms | peak MiB | mem/io | MB moved | "
              "floor ms | x floor | x ref |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for device in devices:
        for shape, backends in plan(device, opts.quick, opts.shapes):
            for backward in (False, True):
                floor = floor_seconds(shape, backward)
                results = {}
                for backend in backends:
                    repeats = 1 if backend == "reference" or shape.length > 100_000 else 3
                    if device == "cuda":
                        results[backend] = measure(shape, backend, backward, repeats)
                    else:
                        results[backend] = run_child(shape, backend, backward, repeats)
                ref = results.get("reference")
                for backend, result in results.items():
                    seconds = result["seconds"]
                    versus_ref = f"{ref['seconds'] / seconds:.1f}" if ref and backend != "reference" else ""
                    print(
                        f"| {device} | {backend} | {shape.dtype} | {shape.dim} | {shape.dstate} | {shape.length} | "
                        f"{'fwd+bwd' if backward else 'fwd'} | {seconds * 1e3:.2f} | "
                        f"{result['peak_bytes'] / 2**20:.0f} | {result['peak_bytes'] / shape.io_tensor_bytes():.2f} | "
                        f"{shape.io_bytes(backward) / 1e6:.1f} | {floor * 1e3:.3f} | {seconds / floor:.1f} | "
                        f"{versus_ref} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
