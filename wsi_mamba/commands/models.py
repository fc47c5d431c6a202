"""``wsi-mamba model-info``: size, FLOPs and activation memory of a registered model (thin wrapper)."""

from __future__ import annotations

import argparse
import json
import sys

from ._args import name_text

EXPECTED_ERRORS: tuple[type[Exception], ...] = ()
EXAMPLE = "wsi-mamba model-info vmamba_tiny --resolution 1024 --json"


def _resolution(text: str) -> tuple[int, int]:
    """``PX`` or ``HxW`` → (height, width)."""
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not PX or HxW: {text!r}") from None
    if len(values) not in (1, 2) or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"not PX or HxW with positive sizes: {text!r}")
    return (values[0], values[-1])


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``model-info`` to the CLI."""
    help_text = "Show a model's parameters, FLOPs and activation memory at an input resolution."
    p = subparsers.add_parser(
        "model-info",
        help=help_text,
        description=help_text,
        epilog=f"example:\n  {EXAMPLE}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "name", type=name_text, help="registered model name, e.g. vmamba_tiny, vmamba_small, vmamba_base, vmamba_nano"
    )
    p.add_argument("--resolution", type=_resolution, default=(224, 224), help="input PX or HxW (default 224)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_model_info)


def cmd_model_info(args: argparse.Namespace) -> int:
    from ..models import CONFIGS  # torch is imported only when the command runs
    from ..models.analysis import analyze, count_params

    if args.name not in CONFIGS:
        print(f"error: unknown model {args.name!r}; available: {', '.join(sorted(CONFIGS))}", file=sys.stderr)
        return 2
    cfg = CONFIGS[args.name]
    height, width = args.resolution
    stages = analyze(cfg, height, width)
    info = {
        "model": args.name,
        "resolution": [height, width],
        "params": count_params(cfg),
        "gflops": sum(s.flops for s in stages) / 1e9,
        "train_activation_mib_fp32": sum(s.activation_elements for s in stages) * 4 / 2**20,
        "stages": [
            {"dim": s.dim, "size": [s.height, s.width], "tokens": s.height * s.width, "gflops": s.flops / 1e9}
            for s in stages
        ],
        "config": cfg.to_dict(),
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{args.name} at {height}x{width} (batch 1)")
    print(f"  parameters          {info['params']:,}")
    print(f"  FLOPs               {info['gflops']:.3f} G (multiply-add = 1, official fvcore rule)")
    print(f"  activations (train) {info['train_activation_mib_fp32']:.1f} MiB fp32, estimate")
    for i, s in enumerate(info["stages"]):
        print(f"  stage {i}: dim {s['dim']:5d}  {s['size'][0]}x{s['size'][1]} = {s['tokens']:,} tokens  "
              f"{s['gflops']:.3f} GFLOPs")
    return 0
