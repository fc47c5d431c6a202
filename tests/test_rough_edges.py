"""The rough edges a new user hits (issue 24, item 4): ``info --slide-mpp``, a mistyped option answered by the
command's own usage with a suggestion, the README's example outputs ignored by git, Jupyter as an optional
extra named where the README sends people to the notebooks, and a real-tissue example whose outcome is what
the README says beside it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from cli_helpers import run
from slide_fixtures import write_pyramid

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"



def error_line(err: str) -> str:
    """The one ``error:`` line of ``err`` (no traceback)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


# ---------------------------------------------------------------------------------------------- bad options


@pytest.mark.parametrize(
    ("argv", "command", "suggestion"),
    [
        (["predict", "slide.tif", "--heatmpa"], "predict", "--heatmap"),
        (["info", "slide.tif", "--jsno"], "info", "--json"),
        (["cohort", "m.csv", "--out", "o", "--torch-treads", "2"], "cohort", "--torch-threads"),
        (["predict", "slide.tif", "--slide-mmp", "0.5"], "predict", "--slide-mpp"),
    ],
)
def test_mistyped_option_shows_the_commands_usage_and_a_suggestion(
    argv: list[str], command: str, suggestion: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(argv, capsys)
    assert code == 2 and out == ""
    assert err.startswith(f"usage: wsi-mamba {command} "), err  # the command's usage, not the top-level one
    assert "COMMAND ..." not in err
    line = error_line(err)
    assert f"wsi-mamba {command}:" in line and argv[-1 if "--" in argv[-1] else -2] in line
    assert f"did you mean {suggestion}?" in line


def test_unknown_option_with_nothing_close_gets_no_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["tiles", "slide.tif", "--zzzzzz"], capsys)
    assert code == 2 and err.startswith("usage: wsi-mamba tiles ")
    line = error_line(err)
    assert "--zzzzzz" in line and "did you mean" not in line
    code, _, err = run(["--bogus"], capsys)  # no command: the top-level usage is the right one
    assert code == 2 and err.startswith("usage: wsi-mamba [-h]") and "--bogus" in error_line(err)


# ------------------------------------------------------------------------------------------ info --slide-mpp


def test_info_slide_mpp_sets_a_missing_resolution(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    slide = write_pyramid(tmp_path / "no-mpp.tif", mpp=None)
    code, out, _ = run(["info", slide, "--json"], capsys)
    info = json.loads(out)
    assert code == 0 and info["mpp"] is None and any("mpp" in w for w in info["warnings"])
    code, out, _ = run(["info", slide, "--json", "--slide-mpp", "0.25"], capsys)
    info = json.loads(out)
    assert code == 0 and info["mpp"] == 0.25 and info["warnings"] == []
    code, out, _ = run(["info", slide, "--slide-mpp", "0.25"], capsys)
    assert code == 0 and "mpp: 0.25 µm/px (--slide-mpp)" in out
    code, _, err = run(["info", slide, "--slide-mpp", "nan"], capsys)  # the same range as every --slide-mpp
    assert code == 2 and "--slide-mpp" in error_line(err)


# ------------------------------------------------------------------------------------------- README checks


def readme_example_outputs() -> set[str]:
    """Folders and files the README's runnable examples (those on the demo, real or shared data) write in the
    folder they are run from: ``synth``'s output folder and every ``--out``."""
    outputs: set[str] = set()
    for line in README.read_text(encoding="utf-8").splitlines():
        if "wsi-mamba " not in line or not re.search(r"\b(demo|real)/|\.\./shared/", line):
            continue
        for command in line.split("&&"):
            outputs.update(re.findall(r"wsi-mamba synth ([a-z][\w./-]*)", command))  # OUT: a placeholder
            outputs.update(re.findall(r"--out ([\w./-]+)", command))
    return outputs


def test_readme_example_outputs_are_git_ignored() -> None:
    outputs = readme_example_outputs()
    assert {"demo", "real", "demo/results", "real/results", "valid.csv", "preview.png"} <= outputs, outputs
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    probes = [f"{name}/x.json" if "." not in name else name for name in sorted(outputs)]
    done = subprocess.run(
        ["git", "check-ignore", "--no-index", *probes], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert set(done.stdout.split()) == set(probes), f"not ignored: {set(probes) - set(done.stdout.split())}"


def test_notebooks_extra_exists_and_is_named_where_the_readme_sends_people() -> None:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        tomllib = pytest.importorskip("tomli")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    names = {re.split(r"[<>=!~ ;\[]", spec, maxsplit=1)[0].lower() for spec in extras["notebooks"]}
    assert {"jupyterlab", "nbconvert", "ipykernel"} <= names
    section = README.read_text(encoding="utf-8").split("## Cohorts, clusters, notebooks, Python")[1].split("\n## ")[0]
    assert '.[notebooks]"' in section and "notebooks/README.md" in section
    assert 'pip install -e ".[notebooks]"' in (ROOT / "notebooks" / "README.md").read_text(encoding="utf-8")


def test_readme_gives_times_for_the_slow_steps() -> None:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Set up")[1].split("\n## ")[0]
    for step in ("python -m pytest", "score-patches", "predict", "synth"):
        assert re.search(rf"{re.escape(step)}[^|\n]*\|[^|\n]*\d+\s*(s|min)\b", section), step


def test_readme_real_tissue_example_is_a_slide_the_model_detects() -> None:
    """The set-up section's real-tissue example names a seed whose tumour slide holds a macro-metastasis
    (6/6 detected in the README's figures), and says so beside it; planning the cohort reads no pixels."""
    text = README.read_text(encoding="utf-8")
    found = re.search(
        r"wsi-mamba synth real --from-patches \.\./shared/data/pcam/valid --slides 2 --seed (\d+) --test-fraction 0 "
        r"&& wsi-mamba predict real/training/tumor/(tumor_\d+)\.tif[^\n]*\n```\n\nprints `\2<TAB>[\d.]+<TAB>tumor`",
        text,
    )
    assert found, "the real-tissue example gives its seed and the outcome it prints"
    patches = ROOT.parent / "shared" / "data" / "pcam" / "valid"
    if not patches.is_dir():
        pytest.skip(f"{patches} is not here")
    from wsi_mamba.data.patches import open_patches
    from wsi_mamba.synth.patch_plan import CohortSpec, plan_patch_cohort

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec = CohortSpec(slides=2, seed=int(found[1]), test_fraction=0)
        plan = plan_patch_cohort(ROOT / "unused", open_patches(patches), spec)
    slide = next(s for s in plan if s.name == found[2])
    assert slide.spec.metastasis == "macro"
