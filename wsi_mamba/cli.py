"""The ``wsi-mamba`` command: parses arguments and calls the workflows; holds no logic of its own.

Exit codes: 0 ok, 1 failed, 2 bad usage.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from . import __version__
from .commands import COMMAND_MODULES, EXPECTED_ERRORS
from .commands._args import CommandParser, UsageError
from .messages import use_one_line_warnings
from .threads import passive_openmp_waits

EXAMPLES = """\
examples:
  wsi-mamba info slide.svs
  wsi-mamba tiles slide.svs --mpp 0.5 --tile 256 --out preview.png
  wsi-mamba synth data/synth --slides 6 --seed 0
  wsi-mamba synth data/real --from-patches pcam/valid --slides 40 --test-fraction 1
  wsi-mamba model-info vmamba_tiny --resolution 1024
  wsi-mamba predict slide.svs --heatmap --out results/
  wsi-mamba score-patches pcam/valid --out valid-scores.csv
  wsi-mamba train-encoder --patches pcam/train --out encoder.safetensors
  wsi-mamba extract data/cohort/training --out features/
  wsi-mamba train --features features/ --labels labels.csv --out model/
  wsi-mamba evaluate --model model/ --features test-features/ --labels reference.csv --baseline --out eval/
  wsi-mamba cohort slides.csv --out results/ --workers 4
  wsi-mamba run pipelines/pcam-camelyon.yaml
  wsi-mamba COMMAND --help
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = CommandParser(  # usage errors on one line, exit code 2
        prog="wsi-mamba",
        description=(
            "Whole-slide pathology analysis: slides in, metastasis scores out (VMamba + Triton scan)."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"wsi-mamba {__version__}")
    parser.set_defaults(dispatch=main)  # `wsi-mamba run` runs each recipe step through it (commands never import cli)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) or bad usage (2): argparse printed the message
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return 0
    passive_openmp_waits()  # before any command loads torch
    # tifffile logs damaged-file details on stderr; the slide layer reports them as one SlideError
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    use_one_line_warnings()  # `warning: message` lines, not a source listing
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers, not at interpreter exit
        return code
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except EXPECTED_ERRORS as exc:  # the message names the file and the problem
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader went away (`... | head`): stop quietly, as the Python docs advise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:  # e.g. an output folder that cannot be written
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def console() -> None:
    """The ``wsi-mamba`` console script: :func:`main`, then exit without the interpreter's teardown.

    Every result is written, closed and renamed into place before :func:`main` returns; what remains at exit
    is freeing torch's and numba's state, 0.3–0.5 s measured on every command (BENCHMARKS.md, "Start-up").
    The output streams and logging are flushed first. ``python -m wsi_mamba`` and :func:`main` called from
    Python exit the usual way."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can be said
            pass
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
