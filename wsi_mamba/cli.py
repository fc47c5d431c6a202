"""The ``wsi-mamba`` command: parses arguments and calls the workflows; holds no logic of its own.

Exit codes: 0 ok, 1 failed, 2 bad usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__

EXAMPLES = """\
examples:
  wsi-mamba --version
  wsi-mamba --help

Subcommands (predict, info, tiles, synth, extract, train, evaluate, cohort) arrive with later releases;
see README.md for what is available in this version.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="wsi-mamba",
        description="Whole-slide pathology analysis: slides in, metastasis scores out (VMamba + Triton scan).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"wsi-mamba {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
