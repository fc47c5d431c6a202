"""The CLI's defaults are the library's: each option that maps to a dataclass field defaults to that field.

Parsing only (nothing runs): a minimal argv per command, then each option's default is compared with the field.
"""

from __future__ import annotations

import dataclasses
import sys

import pytest

from wsi_mamba.cli import build_parser
from wsi_mamba.features.options import ReadOptions
from wsi_mamba.workflows.training.configs import EncoderTrainingConfig, PatchTrainingConfig, SlideTrainingConfig

MINIMAL_ARGV = {
    "extract": ["extract", "s.tif", "--out", "features"],
    "predict": ["predict", "s.tif"],
    "cohort": ["cohort", "slides.csv", "--out", "results"],
    "train-encoder": ["train-encoder", "--out", "encoder.safetensors"],
    "train": ["train", "--features", "features", "--labels", "labels.csv", "--out", "model"],
    "split-patches": ["split-patches", "patches", "--out", "split"],
}

READ_OPTIONS = [
    ("batch_size", ReadOptions, "batch_size"),
    ("read_threads", ReadOptions, "read_threads"),
    ("min_tissue", ReadOptions, "min_tissue"),
    ("slide_mpp", ReadOptions, "slide_mpp"),
    ("encode_processes", ReadOptions, "encode_processes"),
    ("precision", ReadOptions, "precision"),
]
# The feature mode's options: None when not given (extract: tile mode; predict and cohort: the model's mode).
MODE_OPTIONS = ("region_px", "region_overlap_px", "views")

# (command, option dest, dataclass, field)
DEFAULTS = [
    *[(command, *row) for command in ("extract", "predict", "cohort") for row in READ_OPTIONS],
    ("train-encoder", "tile_px", EncoderTrainingConfig, "tile_px"),
    ("train-encoder", "mpp", EncoderTrainingConfig, "mpp"),
    ("train-encoder", "max_tiles", EncoderTrainingConfig, "max_tiles_per_class"),
    ("train-encoder", "patience", PatchTrainingConfig, "patience"),
    ("train-encoder", "val_fraction", PatchTrainingConfig, "val_fraction"),
    ("train-encoder", "max_val_patches", PatchTrainingConfig, "max_val_patches"),
    ("train-encoder", "epoch_patches", PatchTrainingConfig, "epoch_patches"),
    ("train-encoder", "model_args", PatchTrainingConfig, "model_args"),
    ("train-encoder", "seed", PatchTrainingConfig, "seed"),
    ("train-encoder", "distill_from", PatchTrainingConfig, "distill_from"),
    ("train-encoder", "distill_views", PatchTrainingConfig, "distill_views"),
    ("train-encoder", "distill_weight", PatchTrainingConfig, "distill_weight"),
    ("train-encoder", "precision", PatchTrainingConfig, "precision"),
    ("train-encoder", "seed", EncoderTrainingConfig, "seed"),
    ("split-patches", "val_fraction", PatchTrainingConfig, "val_fraction"),
    ("split-patches", "max_val_patches", PatchTrainingConfig, "max_val_patches"),
    ("split-patches", "seed", PatchTrainingConfig, "seed"),
    ("train", "epochs", SlideTrainingConfig, "epochs"),
    ("train", "lr", SlideTrainingConfig, "lr"),
    ("train", "patience", SlideTrainingConfig, "patience"),
    ("train", "val_fraction", SlideTrainingConfig, "val_fraction"),
    ("train", "seed", SlideTrainingConfig, "seed"),
    ("train", "aggregator", SlideTrainingConfig, "aggregator"),
    ("train", "folds", SlideTrainingConfig, "folds"),
    ("train", "topk", SlideTrainingConfig, "topk"),
    ("train", "target_specificity", SlideTrainingConfig, "target_specificity"),
    ("train", "compose_sections", SlideTrainingConfig, "compose_sections"),
    ("train", "compose_slides", SlideTrainingConfig, "compose_slides"),
    ("train", "compose_val_slides", SlideTrainingConfig, "compose_val_slides"),
]

# Options whose default depends on what is trained (patches or slides): None on the command line, the
# dataclass of the chosen path fills it in.
RESOLVED_LATER = [("train-encoder", dest) for dest in ("model", "epochs", "batch_size", "lr")]
RESOLVED_LATER += [(command, dest) for command in ("extract", "predict", "cohort") for dest in MODE_OPTIONS]

# Options that share a field's name but mean something else.
UNRELATED = [("cohort", "workers")]  # worker processes; ReadOptions.read_threads is --read-threads


def parse(command: str) -> dict:
    return vars(build_parser().parse_args(MINIMAL_ARGV[command]))


@pytest.mark.parametrize(("command", "dest", "config", "field"), DEFAULTS)
def test_cli_default_is_the_dataclass_default(command: str, dest: str, config: type, field: str) -> None:
    args = parse(command)
    assert dest in args, f"{command} has no option with dest {dest}"
    assert args[dest] == getattr(config(), field), f"{command} --{dest.replace('_', '-')} vs {config.__name__}.{field}"


@pytest.mark.parametrize(("command", "dest"), RESOLVED_LATER)
def test_defaults_resolved_from_the_dataclass_are_none(command: str, dest: str) -> None:
    assert parse(command)[dest] is None


@pytest.mark.parametrize("command", sorted(MINIMAL_ARGV))
def test_every_option_named_like_a_field_is_in_the_table(command: str) -> None:
    """An option that shares a field's name must be in :data:`DEFAULTS` (or resolved later)."""
    configs = {row[2] for row in DEFAULTS if row[0] == command}
    fields = {f.name for config in configs for f in dataclasses.fields(config)}
    covered = {row[1] for row in DEFAULTS if row[0] == command}
    covered |= {dest for name, dest in RESOLVED_LATER + UNRELATED if name == command}
    missing = sorted((set(parse(command)) & fields) - covered)
    assert not missing, f"{command}: options {missing} share a dataclass field's name but are not in the table"


def test_cli_start_up_does_not_import_torch() -> None:
    import subprocess

    code = "import sys, wsi_mamba.cli as c; c.build_parser(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


# --------------------------------------------------------------------------------------- --workers


@pytest.mark.parametrize("command", ["extract", "predict"])
def test_workers_is_a_deprecated_alias_of_read_threads(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args([*MINIMAL_ARGV[command], "--workers", "3"])
    assert args.read_threads == 3 and not hasattr(args, "workers")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--workers is deprecated, use --read-threads" in err
    build_parser().parse_args([*MINIMAL_ARGV[command], "--read-threads", "2"])
    assert capsys.readouterr().err == ""


def test_workers_means_processes_in_cohort(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args([*MINIMAL_ARGV["cohort"], "--workers", "3", "--read-threads", "2"])
    assert (args.workers, args.read_threads) == (3, 2)
    assert capsys.readouterr().err == ""


def test_deprecated_alias_is_not_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["predict", "--help"])
    out = capsys.readouterr().out
    assert "--read-threads" in out and "--workers" not in out
