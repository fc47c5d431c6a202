"""Progress a person and a log can read (issue 22, item 3): a bar on a terminal; on any other stderr a line at
most every interval seconds with units done / total, the rate and the time left, and a final line.

The CLI runs in this process (``wsi_mamba.cli.main``) with stderr sent to a real file and the tile encoder slowed
down by a sleep, so the lines come from the real encoding loop; the interval is set small through
:data:`~wsi_mamba.progress.INTERVAL_ENV`. No timing upper bound is asserted anywhere.
"""

from __future__ import annotations

import io
import itertools
import json
import re
import sys
import time
from pathlib import Path

import pytest
from workflow_fixtures import WorkflowData, workflow_data

from wsi_mamba.cli import main
from wsi_mamba.models.encoders.base import TileEncoder
from wsi_mamba.progress import INTERVAL_ENV, Progress, format_duration, progress_interval

pytestmark = pytest.mark.usefixtures("one_torch_thread")

INTERVAL = 0.3  # seconds between lines in these tests (the default is 30)
LINE = re.compile(
    r"^(?P<desc>\w+): (?P<done>\d+)/(?P<total>\d+) (?P<unit>\w+)s \(\d+%\), (?P<rate>[\d.]+ \w+/s|[\d.]+ s/\w+), "
    r"(?P<elapsed>[\d.]+)s elapsed, ETA [\dhms.]+( \[.*\])?$"
)
FINAL = re.compile(r"^(?P<desc>\w+): (?P<done>\d+)/(?P<total>\d+) (?P<unit>\w+)s in [\dhms.]+ \(.+/.+\)$")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> WorkflowData:
    return workflow_data(tmp_path_factory)


@pytest.fixture
def slow_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every encoder batch takes at least 80 ms more (a stand-in for a large encoder on a slow CPU)."""
    view_features = TileEncoder.view_features

    def slow(self: TileEncoder, x, views: int = 1):
        time.sleep(0.08)
        return view_features(self, x, views)

    monkeypatch.setattr(TileEncoder, "view_features", slow)
    monkeypatch.setenv(INTERVAL_ENV, str(INTERVAL))


def run_logged(argv: list, log: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, list[str]]:
    """Run the CLI with stderr going to the file ``log`` (not a terminal); the exit code and stderr's lines."""
    with open(log, "w", encoding="utf-8") as handle, monkeypatch.context() as patch:
        patch.setattr(sys, "stderr", handle)
        code = main([str(a) for a in argv])
    return code, log.read_text(encoding="utf-8").splitlines()


def progress_lines(lines: list[str], desc: str) -> tuple[list[re.Match], re.Match]:
    """The timed progress lines of ``desc`` and its final line (exactly one, the last of them)."""
    timed = [m for m in map(LINE.match, lines) if m and m["desc"] == desc]
    finals = [m for m in map(FINAL.match, lines) if m and m["desc"] == desc]
    assert len(finals) == 1, lines
    assert "\r" not in "".join(lines), "no terminal redraws in a log"
    return timed, finals[0]


def assert_spaced(timed: list[re.Match]) -> None:
    """Lines at least the interval apart (elapsed is printed to 0.1 s: 0.1 s of rounding allowed)."""
    elapsed = [float(m["elapsed"]) for m in timed]
    assert all(later - earlier >= INTERVAL - 0.1 for earlier, later in itertools.pairwise(elapsed)), elapsed


def test_predict_to_a_log_prints_timed_lines_with_total_rate_and_eta(
    data: WorkflowData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow_encoder: None
) -> None:
    """The acceptance test: predict with stderr to a file on a slow encoder writes progress lines at the
    promised rate, each with done/total tiles, tiles/s and an ETA, and a final line with the total."""
    slides = data.slides("testing")
    argv = ["predict", *slides, "--model", data.model, "--batch-size", "1", "--read-threads", "1", "--json"]
    with open(tmp_path / "out.json", "w") as out, monkeypatch.context() as patch:
        patch.setattr(sys, "stdout", out)
        code, lines = run_logged(argv, tmp_path / "stderr.log", monkeypatch)
    results = json.loads((tmp_path / "out.json").read_text())
    assert code == 0 and all(r["score"] is not None for r in results), lines
    timed, final = progress_lines(lines, "predict")
    assert len(timed) >= 3, lines  # ≥ 1.6 s of encoding at one line per 0.3 s
    assert_spaced(timed)
    per_slide = [r["tiles"] for r in results]
    assert all(m["unit"] == "tile" and "tiles/s" in m["rate"] for m in timed)
    assert {int(m["total"]) for m in timed} <= {per_slide[0], sum(per_slide)}  # each slide counted when cut
    assert all(int(m["done"]) <= int(m["total"]) for m in timed)
    assert all(re.search(r"\[slide [12]/2 ", m.group(0)) for m in timed), "the slide being encoded is named"
    assert (int(final["done"]), int(final["total"])) == (sum(per_slide), sum(per_slide))


def test_extract_to_a_log_prints_timed_lines(
    data: WorkflowData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow_encoder: None
) -> None:
    slides = data.slides("testing")
    argv = ["extract", *slides, "--encoder", data.encoder, "--out", tmp_path / "f", "--batch-size", "1"]
    code, lines = run_logged(argv, tmp_path / "stderr.log", monkeypatch)
    assert code == 0, lines
    timed, final = progress_lines(lines, "extract")
    assert len(timed) >= 3, lines
    assert_spaced(timed)
    assert final["done"] == final["total"] and int(final["total"]) > 0
    # the total grows slide by slide: each line says which slide of how many it is on
    assert all(re.search(rf"\[slide \d+/{len(slides)} ", m.group(0)) for m in timed), lines
    # a rerun skips the complete stores: no tiles, no progress line at all
    code, lines = run_logged(argv, tmp_path / "again.log", monkeypatch)
    assert code == 0 and not [line for line in lines if line.startswith("extract:")], lines


def test_cohort_to_a_log_counts_slides_with_an_eta(
    data: WorkflowData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cohort: slides done / total with an ETA, then a final line; nothing with --no-progress."""
    pytest.importorskip("distributed")
    monkeypatch.setenv(INTERVAL_ENV, "0.001")  # a line at every finished slide
    argv = ["cohort", data.testing / "images", "--model", data.model, "--workers", "1", "--torch-threads", "1"]
    code, lines = run_logged([*argv, "--out", tmp_path / "c"], tmp_path / "stderr.log", monkeypatch)
    assert code == 0, lines
    timed, final = progress_lines(lines, "cohort")
    assert [(m["done"], m["total"], m["unit"]) for m in timed] == [("1", "2", "slide"), ("2", "2", "slide")], lines
    assert (final["done"], final["total"]) == ("2", "2")
    code, lines = run_logged([*argv, "--out", tmp_path / "d", "--no-progress"], tmp_path / "quiet.log", monkeypatch)
    assert code == 0 and not [line for line in lines if line.startswith("cohort:")], lines


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_at_most_every_interval_with_rate_and_eta() -> None:
    clock, stream = Clock(), io.StringIO()
    with Progress("predict", "tile", stream=stream, interval=30, clock=clock) as progress:
        progress.add_total(1000)
        progress.set_note("slide 1/1 a.tif")
        for _ in range(100):  # 100 tiles in 100 s, one every second: a line at 30 s, 60 s, 90 s
            clock.now += 1
            progress.update(1)
    lines = stream.getvalue().splitlines()
    assert lines == [
        "predict: 30/1000 tiles (3%), 1.0 tiles/s, 30.0s elapsed, ETA 16m10s [slide 1/1 a.tif]",
        "predict: 60/1000 tiles (6%), 1.0 tiles/s, 1m00s elapsed, ETA 15m40s [slide 1/1 a.tif]",
        "predict: 90/1000 tiles (9%), 1.0 tiles/s, 1m30s elapsed, ETA 15m10s [slide 1/1 a.tif]",
        "predict: 100/1000 tiles in 1m40s (1.0 tiles/s)",
    ]


def test_slow_units_show_seconds_each_and_disabled_shows_nothing() -> None:
    clock, stream = Clock(), io.StringIO()
    with Progress("cohort", "slide", total=4, stream=stream, interval=1, clock=clock) as progress:
        clock.now += 50
        progress.update(1)
    assert stream.getvalue().splitlines() == [
        "cohort: 1/4 slides (25%), 50.0 s/slide, 50.0s elapsed, ETA 2m30s",
        "cohort: 1/4 slides in 50.0s (50.0 s/slide)",
    ]
    quiet = io.StringIO()
    with Progress("cohort", "slide", total=4, stream=quiet, interval=1, enabled=False, clock=clock) as progress:
        clock.now += 50
        progress.update(4)
    assert quiet.getvalue() == ""


def test_terminal_gets_a_bar_redrawn_in_place() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    with Progress("predict", "tile", stream=stream, interval=0.001) as progress:
        progress.add_total(20)
        for _ in range(20):
            progress.update(1)
    text = stream.getvalue()
    assert "\r" in text and "20/20" in text and "ETA" not in text  # a tqdm bar, not log lines


def test_interval_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    assert progress_interval() == 30
    for text, expected in (("0.5", 0.5), ("junk", 30), ("-1", 30), ("0", 30)):
        monkeypatch.setenv(INTERVAL_ENV, text)
        assert progress_interval() == expected
    assert progress_interval(2.0) == 2.0
    assert [format_duration(s) for s in (4.24, 185, 7620)] == ["4.2s", "3m05s", "2h07m"]
