"""``wsi-mamba encoders``: the named foundation-model tile encoders (``--encoder NAME --encoder-weights PATH``)."""

from __future__ import annotations

import argparse
import json

EXPECTED_ERRORS: tuple[type[Exception], ...] = ()
EXAMPLE = "wsi-mamba encoders [--json]\n  wsi-mamba extract SLIDE --encoder uni --encoder-weights UNI/ --out features/"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``encoders`` to the CLI."""
    help_text = (
        "List the named pathology foundation-model encoders (--encoder NAME --encoder-weights PATH) with their "
        "architecture, feature size, input size and expected µm/px. Weights are downloaded by you; nothing is fetched."
    )
    p = subparsers.add_parser(
        "encoders",
        help="List the named foundation-model encoders (UNI, Virchow2, H-optimus-0, …).",
        description=help_text,
        epilog=f"examples:\n  {EXAMPLE}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print JSON (one object per preset)")
    p.set_defaults(func=cmd_encoders)


def _params(count: int) -> str:
    return f"{count / 1e9:.2f}B" if count >= 1e9 else f"{count / 1e6:.1f}M"


def cmd_encoders(args: argparse.Namespace) -> int:
    from ..models.encoders.presets import preset_rows  # torch is imported only when the command runs

    rows = preset_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ("name", "model", "architecture", "params", "feature", "input", "µm/px", "weights (huggingface.co/…)")
    table = [header] + [
        (r["name"], r["model"], r["architecture"], _params(r["params"]), f"{r['feature_dim']} {r['feature']}",
         f"{r['input_px']} px", f"{r['mpp']:g}", f"{r['repo']}: {r['weights']}")
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    print("\nuse: --encoder NAME --encoder-weights PATH (the file or folder as the model's repository has it)")
    return 0
