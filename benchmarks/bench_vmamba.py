"""VMamba speed and memory per model and input size: forward (inference) and forward+backward (training).

    python benchmarks/bench_vmamba.py                                   # nano + tiny at 224 and 512, CPU/CUDA
    python benchmarks/bench_vmamba.py --quick                           # nano at 64 and 128, a smoke run
    python benchmarks/bench_vmamba.py --models vmamba_base --sizes 1024 --device cuda --dtype bfloat16

Times are medians over ``--repeats`` runs after one warm-up. ``GFLOP/s`` divides the analytic forward
FLOPs (official fvcore rule, ``wsi_mamba.models.analysis``) by the forward time. Memory: on CUDA the peak
allocated bytes of the training step; on CPU the process's peak RSS so far (it only grows: read it as an
upper bound for the row). ``est act`` is the analytic activation estimate (fp32, times the batch).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time

import torch

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
    step = _median_time(train_step, args.device, args.repeats)
    if args.device == "cuda":
        mem = torch.cuda.max_memory_allocated() / 2**20
    else:
        mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    stages = analyze(model.config, size)
    flops = sum(s.flops for s in stages) * args.batch
    return {
        "model": name, "size": size, "batch": args.batch, "tokens_stage0": stages[0].height * stages[0].width,
        "forward_s": fwd, "train_step_s": step, "gflops_per_s": flops / fwd / 1e9, "peak_mib": mem,
        "est_act_mib": sum(s.activation_elements for s in stages) * 4 * args.batch / 2**20,
    }


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
    args = parser.parse_args()
    if args.quick:
        args.models, args.sizes, args.repeats = ["vmamba_nano"], [64, 128], 1
    torch.set_num_threads(args.threads)
    rows = [bench_case(name, size, args) for name in args.models for size in args.sizes]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    device = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    print(f"# {device}, {args.dtype}, backend {args.backend}, batch {args.batch}, torch {torch.__version__}")
    print(f"{'model':14s} {'size':>5s} {'fwd s':>8s} {'step s':>8s} {'GFLOP/s':>8s} {'peak MiB':>9s} {'est act':>8s}")
    for r in rows:
        print(f"{r['model']:14s} {r['size']:5d} {r['forward_s']:8.3f} {r['train_step_s']:8.3f} "
              f"{r['gflops_per_s']:8.1f} {r['peak_mib']:9.0f} {r['est_act_mib']:8.0f}")


if __name__ == "__main__":
    main()
