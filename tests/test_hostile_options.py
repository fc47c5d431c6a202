"""Option ranges and empty paths (issue 25, items 5, 6 and ``tiles --mpp inf`` of 14): every numeric option is
range-checked when parsed, every path option refuses an empty or blank path, each with one ``error:`` line naming
the option and exit code 2, before any work; the library's dataclasses apply the same rules (``ValueError``).

The parser walk (``build_parser()``) finds every option, so a new one without a range or a path type fails here.
See docs/hostile-inputs.md, "Second round (issue 25): option ranges and empty paths"."""

from __future__ import annotations

import argparse
import functools
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import run
from slide_fixtures import write_pyramid

from wsi_mamba import ranges
from wsi_mamba.cli import build_parser
from wsi_mamba.commands._args import Ranged, device_spec, json_object, name_text, path_text, probability_band
from wsi_mamba.commands.compare import labelled_folder
from wsi_mamba.commands.models import _resolution
from wsi_mamba.features.modes import RegionMode, TileMode
from wsi_mamba.features.options import ReadOptions
from wsi_mamba.workflows.inputs import find_slides
from wsi_mamba.workflows.training.configs import EncoderTrainingConfig, PatchTrainingConfig, SlideTrainingConfig

# Types of value options that are neither a range nor a path: each checks its own syntax.
OTHER_TYPES = {device_spec, json_object, labelled_folder, _resolution, name_text, probability_band}

# Options that name files or folders (by dest or metavar): they must use path_text.
PATH_DESTS = {
    "slide", "slides", "out", "model", "encoder", "encoder_weights", "features", "labels", "annotations", "patches",
    "val_patches", "val_features", "val_labels", "val_annotations", "from_patches", "manifest", "paths", "recipe",
    "workdir",
}


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def value_actions(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    """The actions of ``parser`` that take a value (not --help, flags or store_const)."""
    for action in parser._actions:
        if action.nargs != 0 and not isinstance(action, argparse._HelpAction):
            yield action


def minimal_argv(command: str, parser: argparse.ArgumentParser, leave_out: argparse.Action | None = None) -> list:
    """``command`` with a placeholder for each positional and required option (except ``leave_out``)."""
    argv = [command]
    for action in value_actions(parser):
        if action is leave_out or (action.option_strings and not action.required):
            continue
        if action.nargs == "*":
            continue
        value = "a=x" if action.type is labelled_folder else "x"
        argv += [*action.option_strings[:1], value]
    return argv


def name_of(action: argparse.Action) -> str:
    """The option as argparse names it in errors: its first long option string, or the positional's name."""
    return next((s for s in action.option_strings if s.startswith("--")), action.metavar or action.dest)


def bad_values(rule: ranges.Range) -> list[str]:
    """Values ``rule`` refuses: not finite, not a number, past each end, a fraction for an integer."""
    step = 1 if rule.integer else 0.01
    values = ["nan", "inf", "-inf", "x"]
    if rule.values:
        values += [str(min(rule.values) - 1), str(max(rule.values) + 1)]
    if rule.low is not None:
        values.append(f"{rule.low if rule.low_open else rule.low - step:g}")
    if rule.high is not None:
        values.append(f"{rule.high if rule.high_open else rule.high + step:g}")
    if rule.integer:
        values.append("1.5")
    return values


def ranged_cases() -> list[tuple[str, str, str]]:
    return [
        (command, name_of(action), value)
        for command, parser in subcommands().items()
        for action in value_actions(parser)
        if isinstance(action.type, Ranged)
        for value in bad_values(action.type.range)
    ]


def path_cases() -> list[tuple[str, str, str]]:
    return [
        (command, name_of(action), value)
        for command, parser in subcommands().items()
        for action in value_actions(parser)
        if action.type is path_text
        for value in ("", "   ")
    ]


def find_action(command: str, name: str) -> tuple[argparse.ArgumentParser, argparse.Action]:
    parser = subcommands()[command]
    (action,) = [a for a in value_actions(parser) if name_of(a) == name]
    return parser, action


def parse_error(argv: list, capsys: pytest.CaptureFixture[str]) -> str:
    """The one stderr line of a usage error (exit code 2) that parsing ``argv`` gives; nothing runs."""
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([str(a) for a in argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err



def assert_usage_line(err: str, *fragments: str) -> None:
    """Exactly one stderr line, an ``error:`` holding every fragment, no traceback."""
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert all(text in err for text in fragments), (fragments, err)


# ------------------------------------------------------------------------------------ the parser walk


def test_every_value_option_has_a_checked_type() -> None:
    """Every int/float option is a range-checked type (no bare ``type=int`` or ``float``), every option naming a
    file or folder is a path (empty refused), and no value option is an unchecked string (unless it has
    choices): a new option without a range or a path type fails here."""
    unchecked, not_paths = [], []
    for command, parser in subcommands().items():
        for action in value_actions(parser):
            where = f"{command} {name_of(action)}"
            checked = isinstance(action.type, Ranged) or action.type is path_text or action.type in OTHER_TYPES
            if not checked and not (action.type is None and action.choices is not None):
                unchecked.append(f"{where} (type {action.type!r})")
            named_path = action.dest in PATH_DESTS or action.metavar in ("PATH", "DIR", "SRC")
            if named_path and not isinstance(action.type, Ranged) and action.type not in (path_text, labelled_folder):
                not_paths.append(where)  # (synth --slides is a count; compare's LABEL=FOLDER checks its folder)
    assert not unchecked, f"options without a range or path type: {unchecked}"
    assert not not_paths, f"path options that accept an empty path: {not_paths}"


def test_the_walk_sees_the_options_of_the_issue() -> None:
    cases = {(command, option) for command, option, _ in ranged_cases()}
    seen = [("tiles", "--min-tissue"), ("tiles", "--mpp"), ("extract", "--min-tissue"), ("train", "--val-fraction")]
    seen += [("train-encoder", "--val-fraction"), ("split-patches", "--val-fraction"), ("synth", "--stain")]
    for case in seen:
        assert case in cases
    assert ("predict", "slides") in {(command, option) for command, option, _ in path_cases()}


@pytest.mark.parametrize(("command", "option", "value"), ranged_cases())
def test_numeric_option_out_of_range_is_a_usage_error(
    command: str, option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser, action = find_action(command, option)
    err = parse_error([*minimal_argv(command, parser), f"{option}={value}"], capsys)
    assert f"argument {option}" in err and action.type.range.bounds() in err and repr(value) in err, err


@pytest.mark.parametrize(("command", "option", "value"), path_cases())
def test_empty_path_is_a_usage_error(command: str, option: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser, action = find_action(command, option)
    argv = minimal_argv(command, parser, leave_out=action)
    if action.option_strings:
        argv.append(f"{option}={value}")
    else:  # a positional: the empty path in its place
        argv = [argv[0], value, *argv[1:]]
    err = parse_error(argv, capsys)
    assert f"argument {option}" in err and "empty path" in err, err


def test_a_blank_folder_after_a_label_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    err = parse_error(["compare", "--out", "c", "--encoder", "A=  "], capsys)
    assert "argument --encoder" in err and "empty path" in err


# -------------------------------------------------------------------- the cases of the issue, through main()


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_tiles_mpp_inf_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str) -> None:
    path = write_pyramid(tmp_path / "small.tif", 256, 192)
    code, stdout, err = run(["tiles", path, f"--mpp={value}", "--out", tmp_path / "p.png"], capsys)
    assert code == 2 and stdout == ""
    assert_usage_line(err, "argument --mpp", "must be > 0 (a finite number)", repr(value))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.tif"]


@pytest.mark.parametrize("value", ["25", "-1", "nan", "1.01"])
def test_min_tissue_must_be_a_fraction(tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str) -> None:
    path = write_pyramid(tmp_path / "small.tif", 256, 192)
    for argv in (["tiles", path], ["extract", path, "--out", tmp_path / "features"]):
        code, stdout, err = run([*argv, f"--min-tissue={value}"], capsys)
        assert code == 2 and stdout == ""
        assert_usage_line(err, "argument --min-tissue", "must be in [0, 1]", repr(value))
    assert not (tmp_path / "features").exists()


@pytest.mark.parametrize("value", ["2", "-1", "nan", "1"])
def test_train_val_fraction_must_be_below_one(tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str) -> None:
    (tmp_path / "labels.csv").write_text("image,label\na,0\n")
    argv = ["train", "--features", tmp_path, "--labels", tmp_path / "labels.csv", "--out", tmp_path / "model"]
    code, stdout, err = run([*argv, f"--val-fraction={value}"], capsys)
    assert code == 2 and stdout == ""
    assert_usage_line(err, "argument --val-fraction", "must be in [0, 1)", repr(value))
    assert not (tmp_path / "model").exists()


def test_predict_empty_path_scores_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    write_pyramid(tmp_path / "slide.tif", 256, 192)  # `predict ""` searched the current folder and scored this
    monkeypatch.chdir(tmp_path)
    for slides in ([""], ["  "], ["slide.tif", ""]):
        code, stdout, err = run(["predict", *slides, "--out", tmp_path / "out"], capsys)
        assert code == 2 and stdout == ""
        assert_usage_line(err, "argument slides", "empty path")
    code, _, err = run(["predict", "slide.tif", "--out", ""], capsys)
    assert code == 2
    assert_usage_line(err, "argument --out", "empty path")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slide.tif"]


def test_library_find_slides_refuses_an_empty_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_pyramid(tmp_path / "slide.tif", 256, 192)
    monkeypatch.chdir(tmp_path)  # "" was this folder: slide.tif found twice
    for empty in ("", "  "):
        with pytest.raises(ValueError, match="empty path"):
            find_slides(["slide.tif", empty])


# ------------------------------------------------------------------------------- the library's dataclasses


@pytest.mark.parametrize(
    ("config", "field", "value", "message"),
    [
        (ReadOptions, "min_tissue", 25, "ReadOptions.min_tissue must be in [0, 1]"),
        (ReadOptions, "min_tissue", math.nan, "ReadOptions.min_tissue must be in [0, 1]"),
        (ReadOptions, "batch_size", 0, "ReadOptions.batch_size must be ≥ 1 (an integer)"),
        (ReadOptions, "read_threads", 0, "ReadOptions.read_threads must be ≥ 1 (an integer)"),
        (ReadOptions, "slide_mpp", math.inf, "ReadOptions.slide_mpp must be in [0.05, 20] µm/px"),
        (TileMode, "views", 3, "TileMode.views must be one of 1, 4, 8"),
        (functools.partial(RegionMode, 256), "overlap_px", -1, "RegionMode.overlap_px must be ≥ 0"),
        (SlideTrainingConfig, "val_fraction", 2.0, "SlideTrainingConfig.val_fraction must be in [0, 1)"),
        (SlideTrainingConfig, "val_fraction", math.nan, "SlideTrainingConfig.val_fraction must be in [0, 1)"),
        (SlideTrainingConfig, "lr", math.inf, "SlideTrainingConfig.lr must be > 0"),
        (SlideTrainingConfig, "epochs", 1.5, "SlideTrainingConfig.epochs must be ≥ 1 (an integer)"),
        (PatchTrainingConfig, "val_fraction", -1, "PatchTrainingConfig.val_fraction must be in [0, 1)"),
        (PatchTrainingConfig, "ema_decay", 1.0, "PatchTrainingConfig.ema_decay must be in (0, 1)"),
        (PatchTrainingConfig, "seed", -1, "PatchTrainingConfig.seed must be in [0, 4294967295]"),
        (EncoderTrainingConfig, "mpp", 0.0, "EncoderTrainingConfig.mpp must be in [0.05, 20] µm/px"),
        (EncoderTrainingConfig, "val_fraction", True, "EncoderTrainingConfig.val_fraction must be in [0, 1)"),
    ],
)
def test_dataclasses_apply_the_same_ranges(config: type, field: str, value: object, message: str) -> None:
    config()  # the defaults obey the rules
    with pytest.raises(ValueError, match=f"^{message.replace('[', '.').replace('(', '.').replace(')', '.')}"):
        config(**{field: value})


def test_cli_and_library_rules_agree() -> None:
    """An option and the dataclass field it fills share a rule: what the CLI accepts the library accepts."""
    _, min_tissue = find_action("extract", "--min-tissue")
    _, val_fraction = find_action("train", "--val-fraction")
    assert min_tissue.type.range is ranges.FRACTION and val_fraction.type.range is ranges.VAL_FRACTION
    for text in ("0", "0.5", "1"):
        ReadOptions(min_tissue=min_tissue.type(text))
    SlideTrainingConfig(val_fraction=val_fraction.type("0"))
    PatchTrainingConfig(val_fraction=val_fraction.type("0.99"))
