"""Argument helpers shared by the command modules: the parser of a subcommand, value types, the options several
commands declare (tile reading, the decoding limit) and deprecated option names.

Defaults come from the library's dataclasses (``wsi_mamba.features.options``,
``wsi_mamba.workflows.training.configs``), never literals here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from .. import ranges
from ..data.augment_config import VIEW_COUNTS
from ..data.stain_norm import METHODS as STAIN_METHODS
from ..data.stain_norm import StainNorm, builtin_target, target_from_image
from ..devices import DEFAULT_DEVICE, DEVICE_HELP, DeviceError, check_spec, resolve_device
from ..features.modes import NO_STAIN_NORM, FeatureMode, ViewsOnDemand
from ..features.modes import requested_mode as features_requested_mode
from ..features.options import MIN_POOL_TILES, PRECISION_CHOICES, ReadOptions
from ..ranges import Range
from ..workflows.training.configs import PatchTrainingConfig

if TYPE_CHECKING:
    import torch

READ_DEFAULTS = ReadOptions()
CARVE_DEFAULTS = PatchTrainingConfig()
THREADS_HELP = "torch CPU threads (default: the cores idle when the command starts, at least 1; wsi_mamba/threads.py)"


class UsageError(ValueError):
    """A command given a combination of arguments it cannot use: one line, exit code 2."""


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line, ``error: PROG: argument --x: ...``, exit code 2 (the
    subcommands' parsers are of the same class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        """argparse's, except that arguments nobody knows are reported by the subcommand they were given to: its
        usage, then one error line with ``did you mean --x?`` when an option is close to one of its own."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            parser = _subcommand_parser(self, parsed)
            parser.print_usage(sys.stderr)
            parser.error(f"unrecognized arguments: {' '.join(extras)}{_suggestion(parser, extras)}")
        return parsed


def _subcommand_parser(parser: argparse.ArgumentParser, parsed: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the subcommand named in ``parsed`` (``parser`` itself when none was given)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(getattr(parsed, action.dest, None), parser)
    return parser


def _suggestion(parser: argparse.ArgumentParser, extras: Sequence[str]) -> str:
    """``; did you mean --heatmap?`` for the first unknown option close to one of ``parser``'s (difflib), else ''."""
    import difflib

    options = [
        name
        for action in parser._actions
        if action.help is not argparse.SUPPRESS
        for name in action.option_strings
        if name.startswith("--")
    ]
    for text in extras:
        if text.startswith("-"):
            close = difflib.get_close_matches(text.partition("=")[0], options, n=1, cutoff=0.6)
            if close:
                return f"; did you mean {close[0]}?"
    return ""


class Ranged:
    """argparse type: a number obeying a :class:`~wsi_mamba.ranges.Range` (``range``), else a usage error naming
    the option, the range and the value (``nan``, ``inf`` and out-of-range numbers included)."""

    def __init__(self, rule: Range) -> None:
        self.range = rule

    def __call__(self, text: str) -> int | float:
        try:
            return self.range.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    def __repr__(self) -> str:
        return f"Ranged({self.range.bounds()})"


# The argparse types of numeric options: every int or float option uses one (tests/test_hostile_options.py checks).
positive_int = Ranged(ranges.POSITIVE_INT)
count = Ranged(ranges.COUNT)
positive_float = Ranged(ranges.POSITIVE)
non_negative = Ranged(ranges.NON_NEGATIVE)
fraction = Ranged(ranges.FRACTION)
val_fraction = Ranged(ranges.VAL_FRACTION)
decay = Ranged(ranges.DECAY)
mpp = Ranged(ranges.MPP)
seed = Ranged(ranges.SEED)
view_count = Ranged(ranges.VIEWS)
port = Ranged(ranges.PORT)
topk = Ranged(ranges.TOPK)
specificity = Ranged(ranges.SPECIFICITY)


def probability_band(text: str) -> tuple[float, float]:
    """argparse type: ``LO,HI``, two probabilities in [0, 1] with LO ≤ HI (``--views-on-demand 0.1,0.9``)."""
    parts = text.split(",")
    rule = f"LO,HI: two probabilities {ranges.FRACTION.bounds()} with LO ≤ HI, got {text!r}"
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"must be {rule}")
    try:
        lo, hi = (ranges.FRACTION.parse(part.strip()) for part in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {rule}") from None
    if lo > hi:
        raise argparse.ArgumentTypeError(f"must be {rule}")
    return float(lo), float(hi)


VIEWS_ON_DEMAND_HELP = (
    "tile mode: every tile in view 0, the other --views only for tiles whose first-view tumour probability (the "
    "encoder's head) is in [LO, HI]; needs 4 or 8 views"
)


def path_text(text: str) -> str:
    """argparse type: a file or folder path; an empty or blank one is refused (``predict ""`` would otherwise
    search the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"an empty path ({text!r}) names no file or folder")
    return text


def name_text(text: str) -> str:
    """argparse type: a name or other word (model name, step, address); an empty or blank one is refused."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"must not be empty, got {text!r}")
    return text


def json_object(text: str) -> dict:
    """argparse type: a JSON object (``'{"channels": [16, 32]}'``)."""
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc.msg} at character {exc.pos}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object ({{...}}), got {text!r}")
    return value


def command_parser(
    subparsers: argparse._SubParsersAction, name: str, help: str, example: str
) -> argparse.ArgumentParser:
    """A subcommand's parser: ``help`` as its description and ``example`` under it (plain text: a ``%`` is
    escaped for the command list, where argparse %-formats help strings, and left as it is in the description)."""
    return subparsers.add_parser(
        name,
        help=help.replace("%", "%%"),
        description=help,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


class DeprecatedAlias(argparse.Action):
    """An old option name kept for a release: stores like the new one (``dest``) after a one-line warning on
    stderr naming the replacement. Hidden from ``--help``."""

    def __init__(self, option_strings: Sequence[str], dest: str, replacement: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.replacement = replacement

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(
            f"{parser.prog}: warning: {option_string} is deprecated, use {self.replacement} (same meaning)",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


def max_pixels_argument(p: argparse.ArgumentParser) -> None:
    """``--max-pixels``: the decoding limit (levels, regions, file tiles, associated images)."""
    p.add_argument(
        "--max-pixels",
        type=positive_int,
        help="decode no image bigger than this many pixels (default 500000000): a guard against files whose "
        "tags claim absurd sizes",
    )


def device_spec(text: str) -> str:
    """argparse type: a device spelling (``auto``, ``cpu``, ``cuda``, ``cuda:N``), checked without torch."""
    try:
        return check_spec(text)
    except DeviceError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def device_argument(p: argparse.ArgumentParser) -> None:
    """``--device auto|cpu|cuda|cuda:N`` (default :data:`~wsi_mamba.devices.DEFAULT_DEVICE`); resolve it with
    :func:`command_device` first thing in the command, before any heavy work."""
    p.add_argument("--device", type=device_spec, default=DEFAULT_DEVICE, metavar="DEVICE", help=DEVICE_HELP)


def command_device(args: argparse.Namespace) -> torch.device:
    """The ``torch.device`` of ``args.device``; a device this machine lacks is a :class:`UsageError` (exit 2)."""
    try:
        return resolve_device(args.device)
    except DeviceError as exc:
        raise UsageError(str(exc)) from None


def carve_arguments(p: argparse.ArgumentParser) -> None:
    """The validation carve of labelled patches, declared once for train-encoder and split-patches (which must
    cut the same split): ``--val-fraction`` and ``--max-val-patches``."""
    d = CARVE_DEFAULTS
    p.add_argument(
        "--val-fraction",
        type=val_fraction,
        default=d.val_fraction,
        help=f"carved validation part, in [0, 1) (default {d.val_fraction})",
    )
    p.add_argument(
        "--max-val-patches",
        type=positive_int,
        default=d.max_val_patches,
        help=f"at most this many validation patches (default {d.max_val_patches})",
    )


def tile_arguments(p: argparse.ArgumentParser, workers_alias: bool = False) -> None:
    """The options of :class:`~wsi_mamba.features.options.ReadOptions` (``--batch-size``, ``--read-threads``,
    ``--min-tissue``, ``--slide-mpp``) and of the requested feature mode (``--region-px``, ``--region-overlap``,
    ``--views``: None when not given, :func:`requested_mode`). ``workers_alias`` adds
    ``--workers``, the old name of ``--read-threads`` (deprecated: ``--workers`` means worker processes, as in
    ``cohort``)."""
    d = READ_DEFAULTS
    help_batch = f"tiles per encoder batch (default {d.batch_size})"
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size, help=help_batch)
    help_threads = f"tile-reading threads (default {d.read_threads})"
    p.add_argument("--read-threads", type=positive_int, default=d.read_threads, help=help_threads)
    if workers_alias:
        p.add_argument(
            "--workers", dest="read_threads", type=positive_int, action=DeprecatedAlias, replacement="--read-threads"
        )
    p.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        default=d.precision,
        help="the encoder's precision on the CPU: fp32, bf16 (autocast; 1.3x the tiles/s on CPUs with AVX-512-BF16 "
        f"or AMX, features within ~1e-2) or auto (bf16 on such CPUs) (default {d.precision}; CUDA: bf16 autocast)",
    )
    p.add_argument(
        "--encode-processes",
        type=positive_int,
        default=d.encode_processes,
        metavar="N",
        help="CPU, tile mode: encode in N worker processes of one torch thread each (1: in this process; default: "
        f"one per torch thread for slides of {MIN_POOL_TILES:,} tiles or more)",
    )
    p.add_argument(
        "--min-tissue",
        type=fraction,
        default=d.min_tissue,
        help=f"keep tiles with this tissue fraction, in [0, 1] (default {d.min_tissue})",
    )
    p.add_argument("--slide-mpp", type=mpp, default=d.slide_mpp, help="level-0 µm/px for slides without one")
    p.add_argument(
        "--region-px",
        type=positive_int,
        default=None,
        help="region mode: encode whole regions of this many px (a multiple of the tile size) in one pass, pooled "
        "into the tiles (default: tile mode; predict: the model's mode)",
    )
    p.add_argument(
        "--region-overlap",
        dest="region_overlap_px",
        type=count,
        default=None,
        help="region mode: px shared by neighbouring regions, whole tiles (default: a quarter of --region-px)",
    )
    p.add_argument(
        "--views",
        type=view_count,
        choices=VIEW_COUNTS,
        default=None,
        help="tile mode: average each tile's features over 1, 4 (rotations) or 8 (and mirror images) views; 4x/8x "
        "the encoding time (default: 1; predict, and extract with the default encoder: the model's)",
    )
    p.add_argument(
        "--views-on-demand",
        type=probability_band,
        metavar="LO,HI",
        default=None,
        help=f"{VIEWS_ON_DEMAND_HELP} (default: all views for every tile; predict: the model's)",
    )
    stain_arguments(p, "extract: none; predict, cohort: the model's")


def stain_arguments(p: argparse.ArgumentParser, default: str) -> None:
    """``--stain-norm METHOD`` and ``--stain-target IMAGE`` (:func:`stain_request`); ``default`` says what their
    absence means for the command."""
    p.add_argument(
        "--stain-norm",
        choices=STAIN_METHODS,
        default=None,
        help=f"normalise each slide's stain (fitted once per slide, at the tissue mask's resolution) to a target "
        f"before the encoder: {', '.join(STAIN_METHODS)} (default: {default})",
    )
    p.add_argument(
        "--stain-target",
        type=path_text,
        metavar="IMAGE",
        help="fit the stain target on this image's tissue (default: the built-in target, fitted on PCam training "
        "patches)",
    )


def stain_request(args: argparse.Namespace) -> StainNorm | str | None:
    """The normalisation ``--stain-norm`` / ``--stain-target`` ask for, its target fitted now (before any work):
    a :class:`StainNorm`, :data:`NO_STAIN_NORM`, or None when neither is given. ``ValueError`` (one line) for a
    target image that cannot be read or holds no tissue; :class:`UsageError` for a target without a method."""
    method, target = getattr(args, "stain_norm", None), getattr(args, "stain_target", None)
    if target is not None and method in (None, NO_STAIN_NORM):
        raise UsageError("--stain-target needs --stain-norm macenko or reinhard")
    if method is None:
        return None
    if method == NO_STAIN_NORM:
        return NO_STAIN_NORM
    return target_from_image(method, target) if target is not None else builtin_target(method)


def read_options(args: argparse.Namespace) -> ReadOptions:
    """The :class:`ReadOptions` of the options :func:`tile_arguments` added."""
    return ReadOptions(
        args.min_tissue, args.batch_size, args.read_threads, args.slide_mpp, args.encode_processes, args.precision
    )


def requested_mode(args: argparse.Namespace) -> FeatureMode | ViewsOnDemand | None:
    """The feature mode ``--region-px`` / ``--region-overlap`` / ``--views`` / ``--views-on-demand`` ask for (None:
    none asked; :func:`~wsi_mamba.features.modes.requested_mode`); a combination that cannot be is a
    :class:`UsageError`."""
    try:
        return features_requested_mode(args.region_px, args.region_overlap_px, args.views, args.views_on_demand)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def encoder_arguments(p: argparse.ArgumentParser, geometry: bool = True) -> None:
    """``--encoder-weights`` (local weights of a ``timm:NAME`` encoder) and, with ``geometry``,
    ``--encoder-tile-px`` / ``--encoder-mpp`` (override the tile geometry the checkpoint or model config gives)."""
    p.add_argument(
        "--encoder-weights",
        type=path_text,
        metavar="PATH",
        help="local weights of a timm:NAME encoder: .safetensors, weights-only .pth/.bin, or a Hugging Face-style "
        "folder (config.json + model.safetensors | pytorch_model.bin); nothing is downloaded",
    )
    if geometry:
        p.add_argument("--encoder-tile-px", type=positive_int, help="tile side in pixels (default: the model's)")
        p.add_argument("--encoder-mpp", type=mpp, help="tile µm/px (default: the checkpoint's; 0.5 for timm models)")


def encoder_options(args: argparse.Namespace, spec: object) -> dict[str, Any]:
    """The keyword arguments of ``load_encoder`` that :func:`encoder_arguments` added; ``--encoder-weights``
    needs a ``FAMILY:NAME`` spec or a preset name (``spec``; ``wsi-mamba encoders``), a :class:`UsageError`
    otherwise."""
    weights = getattr(args, "encoder_weights", None)
    if weights is not None and (spec is None or ":" not in str(spec)):
        from ..models.encoders.presets import is_preset  # imports torch: only when weights are given

        if spec is None or not is_preset(spec):
            raise UsageError(
                "--encoder-weights needs the architecture of the weights, e.g. --encoder timm:resnet18, "
                "or a named encoder (wsi-mamba encoders), e.g. --encoder uni"
            )
    return {
        "weights": weights,
        "tile_px": getattr(args, "encoder_tile_px", None),
        "mpp": getattr(args, "encoder_mpp", None),
    }
