"""``wsi-mamba view``: a thin wrapper around ``wsi_mamba.viewer.serve_forever`` (bokeh imported only here)."""

from __future__ import annotations

import argparse

from ..viewer.errors import ViewerError
from ..viewer.server import DEFAULT_HOST, DEFAULT_PORT
from ._args import command_parser, name_text, path_text, port

# Nothing to show, bokeh missing, a port in use: one line naming the path, extra or address.
EXPECTED_ERRORS: tuple[type[Exception], ...] = (ViewerError,)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``view`` subcommand to the CLI."""
    p = command_parser(
        subparsers,
        "view",
        "Look at slides and their predict results in the browser: the slide list with scores, and each slide at "
        "full resolution (pan/zoom) with its tile scores, regions and warnings. Local only unless --host is given; "
        "needs the [viewer] extra (bokeh).",
        "wsi-mamba view results/\n"
        "  wsi-mamba view results/ --port 8080   # then open http://127.0.0.1:8080/ (ssh -L 8080:127.0.0.1:8080 host)",
    )
    p.add_argument(
        "paths",
        nargs="+",
        type=path_text,
        metavar="RESULTS_OR_SLIDES",
        help="predict output folders (NAME.json with NAME.tiles.geojson / NAME.regions.geojson), folders of slides, "
        "result JSON files or slide files",
    )
    p.add_argument(
        "--port", type=port, default=DEFAULT_PORT, help=f"port to serve on (default {DEFAULT_PORT}; 0: a free one)"
    )
    p.add_argument(
        "--host",
        type=name_text,
        default=DEFAULT_HOST,
        help=f"address to serve on (default {DEFAULT_HOST}: this machine only; 0.0.0.0 exposes it to the network)",
    )
    p.set_defaults(func=cmd_view)


def cmd_view(args: argparse.Namespace) -> int:
    from ..viewer.server import serve_forever

    serve_forever(args.paths, host=args.host, port=args.port)
    return 0
