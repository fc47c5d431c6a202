"""Recipes: parsing, variables, resume by ``creates``, --only, failures; the shipped recipes parse."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsi_mamba.cli import main
from wsi_mamba.workflows.recipe import load_recipe, run_recipe

ROOT = Path(__file__).resolve().parents[1]

RECIPE = """
name: demo
workdir: work
vars:
  slides: "2"
steps:
  - name: first
    creates: a.txt
    run: synth cohort --slides ${slides}
  - name: second
    run: [predict, "x y.tif", --json]
"""


def _write(tmp_path: Path, text: str = RECIPE) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_variables_and_argv(tmp_path: Path) -> None:
    recipe = load_recipe(_write(tmp_path), {"slides": "5"}, workdir=tmp_path / "w")
    assert recipe.workdir == tmp_path / "w"
    assert recipe.steps[0].argv == ["synth", "cohort", "--slides", "5"]
    assert recipe.steps[1].argv == ["predict", "x y.tif", "--json"]  # list form keeps spaces


def test_skips_steps_whose_output_exists_and_stops_at_a_failure(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(_write(tmp_path))
    calls: list[list[str]] = []
    assert run_recipe(recipe, lambda argv: calls.append(list(argv)) or 0, log=lambda _: None) == 0
    assert [c[0] for c in calls] == ["synth", "predict"]
    (tmp_path / "work" / "a.txt").write_text("done")
    calls.clear()
    assert run_recipe(recipe, lambda argv: calls.append(list(argv)) or 3, log=lambda _: None) == 3
    assert [c[0] for c in calls] == ["predict"]  # the first step was done already
    calls.clear()
    run_recipe(recipe, lambda argv: calls.append(list(argv)) or 0, only=["first"], log=lambda _: None)
    assert [c[0] for c in calls] == ["synth"]  # --only reruns a step even when its output exists
    assert Path.cwd() == tmp_path  # the working folder is restored


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("steps: []", "non-empty 'steps'"),
        ("steps:\n  - name: a\n", "needs 'run'"),
        ("steps:\n  - run: synth ${nope}\n", "unknown variable ${nope}"),
        ("steps: [\n", "not valid YAML"),
        ("steps:\n  - {name: a, run: x}\n  - {name: a, run: y}\n", "unique"),
    ],
)
def test_bad_recipes_name_the_file(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"recipe\.yaml") as info:
        load_recipe(_write(tmp_path, text))
    assert message in str(info.value)


def test_cli_dry_run_and_errors(tmp_path: Path, capsys) -> None:
    path = _write(tmp_path)
    assert main(["run", str(path), "--workdir", str(tmp_path / "w"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "[1/2] first: wsi-mamba synth cohort --slides 2" in out
    assert not (tmp_path / "w" / "cohort").exists()
    assert main(["run", str(path), "--set", "unknown=1"]) == 1
    assert "unknown" in capsys.readouterr().err
    assert main(["run", str(path), "--only", "missing", "--workdir", str(tmp_path / "w")]) == 1
    assert "no step named missing" in capsys.readouterr().err


def test_cli_runs_each_step_through_its_own_entry_point(tmp_path: Path, capsys) -> None:
    path = _write(tmp_path, "steps:\n  - name: look\n    run: info missing.svs\n")
    assert main(["run", str(path), "--workdir", str(tmp_path / "w")]) == 1  # the step's exit code
    assert "missing.svs: no such file" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["synthetic-camelyon.yaml", "camelyon16.yaml"])
def test_shipped_recipes_parse_into_known_commands(name: str) -> None:
    from wsi_mamba.cli import build_parser

    recipe = load_recipe(ROOT / "pipelines" / name, workdir="/tmp/unused")
    parser = build_parser()
    for step in recipe.steps:
        args = parser.parse_args(step.argv)  # every step is a valid wsi-mamba command line
        assert args.command == step.argv[0]


def test_variables_may_use_each_other_but_not_in_a_cycle(tmp_path: Path) -> None:
    text = 'vars:\n  root: /d\n  train: ${root}/train\nsteps:\n  - run: train-encoder --patches ${train}\n'
    assert load_recipe(_write(tmp_path, text)).steps[0].argv[-1] == "/d/train"
    assert load_recipe(_write(tmp_path, text), {"root": "/e"}).steps[0].argv[-1] == "/e/train"
    cyclic = 'vars:\n  a: ${b}\n  b: ${a}\nsteps:\n  - run: info x\n'
    with pytest.raises(ValueError, match="cycle"):
        load_recipe(_write(tmp_path, cyclic))


def test_default_model_recipe_keeps_valid_patches_out_of_training() -> None:
    """pcam-camelyon: PCam valid patches feed only the evaluation cohort and the patch scores."""
    recipe = load_recipe(ROOT / "pipelines" / "pcam-camelyon.yaml", {"pcam": "/data/pcam"})
    uses_valid = {s.name for s in recipe.steps if any("/data/pcam/valid" in a for a in s.argv)}
    assert uses_valid == {"test-cohort", "score-valid-patches"}
    train = {s.name: s.argv for s in recipe.steps}
    assert "/data/pcam/train" in train["train-encoder"] and "--val-patches" not in train["train-encoder"]
    assert "cohort-test" not in " ".join(train["train"]) and "features-test" not in " ".join(train["train"])
