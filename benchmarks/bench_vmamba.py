"""VMamba speed and memory per model and input size: forward (inference) and forward+backward (training).

    python benchmarks/bench_vmamba.py                                   # nano + tiny at 224 and 512, CPU/CUDA
    python benchmarks/bench_vmamba.py --quick                           # nano at 64 and 128, a smoke run
    python benchmarks/bench_vmamba.py --models vmamba_base --sizes 1024 --device cuda --dtype bfloat16
    python benchmarks/bench_vmamba.py --models vmamba_tiny --sizes 1024 --threads 1 --compare-backends numba cpu

Times are medians over ``--repeats`` runs after one warm-up. ``GFLOP/s`` divides the analytic forward
FLOPs (official fvcore rule, ``wsi_mamba.models.analysis``) by the forward time. Memory, forward (``fwd
MiB``) and training step (``step MiB``): on CUDA the peak allocated bytes; on CPU the growth of peak RSS
over the RSS once the model and input exist, each row in a fresh process (rows do not see each other).
``x prev`` is the step memory over the previous size's (4 for memory linear in pixels when the size
doubles). ``est act`` is the analytic activation estimate (fp32, times the batch).

``--compare-backends`` times the forward alone with each selective-scan backend in turn, interleaved in one
process on the same model and input (so that a busy machine slows them alike), after one warm-up call each.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from rss import current_rss, peak_rss, reset_peak_rss, run_isolated

from wsi_mamba.models import create_model
from wsi_mamba.models.analysis import analyze


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _median_time(fn, device: str, repeats: int) -> float:
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_case(name: str, size: int, args: argparse.Namespace) -> dict:
    """One row: forward and training-step time and memory for ``name`` at ``size``×``size``."""
    model = create_model(name, scan_backend=args.backend).to(args.device)
    dtype = getattr(torch, args.dtype)
    x = torch.randn(args.batch, 3, size, size, device=args.device)
    autocast = torch.autocast(args.device, dtype=dtype, enabled=dtype != torch.float32)

    def forward() -> None:
        with torch.no_grad(), autocast:
            model.eval()(x)

    def train_step() -> None:
        model.train()
        with autocast:
            loss = model(x).float().mean()
        loss.backward()

    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        fwd = _median_time(forward, args.device, args.repeats)
        fwd_mem = torch.cuda.max_memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
        step = _median_time(train_step, args.device, args.repeats)
        mem = torch.cuda.max_memory_allocated() / 2**20
    else:  # growth of peak RSS over the RSS with the model and input built (this process runs this row alone)
        reset_peak_rss()
        base = current_rss()
        fwd = _median_time(forward, args.device, args.repeats)
        fwd_mem = (peak_rss() - base) / 2**20
        reset_peak_rss()  # memory the forward left resident still counts from the same base
        step = _median_time(train_step, args.device, args.repeats)
        mem = (peak_rss() - base) / 2**20
    stages = analyze(model.config, size)
    flops = sum(s.flops for s in stages) * args.batch
    return {
        "model": name, "size": size, "batch": args.batch, "tokens_stage0": stages[0].height * stages[0].width,
        "forward_s": fwd, "train_step_s": step, "gflops_per_s": flops / fwd / 1e9, "peak_mib": mem,
        "forward_peak_mib": fwd_mem,
        "est_act_mib": sum(s.activation_elements for s in stages) * 4 * args.batch / 2**20,
    }


def _forward_with(model: torch.nn.Module, backend: str, x: torch.Tensor, autocast) -> torch.Tensor:
    model.set_scan_backend(backend)
    with torch.no_grad(), autocast:
        return model(x)


def compare_backends(args: argparse.Namespace) -> None:
    """Forward (inference) time of each scan backend, interleaved in this process; ``x first``: time over the
    first backend's time."""
    print(f"# {platform.processor() or args.device}, {args.dtype}, batch {args.batch}, {torch.get_num_threads()} "
          f"threads, torch {torch.__version__}; forward medians of {args.repeats}, backends interleaved")
    print("| model | size | backend | fwd s | runs s | x first | max abs diff to first |")
    print("|---|---|---|---|---|---|---|")
    dtype = getattr(torch, args.dtype)
    for name in args.models:
        model = create_model(name).to(args.device).eval()
        for size in args.sizes:
            x = torch.randn(args.batch, 3, size, size, device=args.device)
            autocast = torch.autocast(args.device, dtype=dtype, enabled=dtype != torch.float32)
            outputs, times = {}, {backend: [] for backend in args.compare_backends}
            for backend in args.compare_backends:  # warm-up: numba loads (or compiles) its kernels here
                outputs[backend] = _forward_with(model, backend, x, autocast)
            for _ in range(args.repeats):
                for backend in args.compare_backends:
                    start = time.perf_counter()
                    _forward_with(model, backend, x, autocast)
                    _sync(args.device)
                    times[backend].append(time.perf_counter() - start)
            first = args.compare_backends[0]
            for backend in args.compare_backends:
                median = statistics.median(times[backend])
                diff = (outputs[backend].float() - outputs[first].float()).abs().max().item()
                print(f"| {name} | {size} | {backend} | {median:.3f} | "
                      f"{' '.join(f'{t:.2f}' for t in times[backend])} | "
                      f"{median / statistics.median(times[first]):.2f} | {diff:.1e} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vmamba_nano", "vmamba_tiny"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[224, 512])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--backend", default="auto", help="selective-scan backend")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--quick", action="store_true", help="vmamba_nano at 64 and 128, one repeat")
    parser.add_argument("--json", action="store_true", help="print JSON rows")
    parser.add_argument("--compare-backends", nargs="+", metavar="BACKEND",
                        help="only the forward, each of these scan backends in turn in this process")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        torch.set_num_threads(args.threads)
        print(json.dumps(bench_case(spec["name"], spec["size"], args)))
        return
    if args.quick:
        args.models, args.sizes, args.repeats = ["vmamba_nano"], [64, 128], 1
    torch.set_num_threads(args.threads)
    if args.compare_backends:
        compare_backends(args)
        return
    if args.device == "cuda":
        rows = [bench_case(name, size, args) for name in args.models for size in args.sizes]
    else:
        passed = ["--batch", str(args.batch), "--device", "cpu", "--dtype", args.dtype, "--backend", args.backend,
                  "--repeats", str(args.repeats), "--threads", str(args.threads)]
        rows = [run_isolated(__file__, {"name": name, "size": size}, passed)
                for name in args.models for size in args.sizes]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    device = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    print(f"# {device}, {args.dtype}, backend {args.backend}, batch {args.batch}, torch {torch.__version__}")
    print("| model | size | fwd s | step s | GFLOP/s | fwd MiB | step MiB | x prev | est act MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    previous: dict[str, float] = {}
    for r in rows:
        ratio = f"{r['peak_mib'] / previous[r['model']]:.2f}" if r["model"] in previous else ""
        previous[r["model"]] = r["peak_mib"]
        print(f"| {r['model']} | {r['size']} | {r['forward_s']:.3f} | {r['train_step_s']:.3f} | "
              f"{r['gflops_per_s']:.1f} | {r['forward_peak_mib']:.0f} | {r['peak_mib']:.0f} | {ratio} | "
              f"{r['est_act_mib']:.0f} |")


if __name__ == "__main__":
    main()
