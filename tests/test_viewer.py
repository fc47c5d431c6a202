"""``wsi-mamba view``: the catalog, the tile pyramid (bounded reads on a huge slide), the HTTP endpoints of a
server started in-process on a free port, the command's errors, and a real-browser check (headless Chromium)."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("bokeh", reason="the viewer needs bokeh: pip install -e '.[dev]' (or '.[viewer]')")

from slide_fixtures import write_pyramid

from wsi_mamba.cli import main
from wsi_mamba.outputs.geojson import write_tiles_geojson
from wsi_mamba.outputs.grid import score_grid
from wsi_mamba.outputs.region_calling import RegionCalling, call_regions, write_called_regions_geojson
from wsi_mamba.slide.base import Slide
from wsi_mamba.viewer import ViewerError, viewer_in_thread
from wsi_mamba.viewer.catalog import Catalog, slide_id
from wsi_mamba.viewer.screenshot import browser_screenshot, find_chromium
from wsi_mamba.viewer.tiles import MAX_READ_PX, TILE_PX, SlideTiles, TilePyramid

WIDTH, HEIGHT, SIZE0 = 1024, 768, 128


def write_result(folder: Path, name: str, slide: Path, scores: np.ndarray, warnings: list[str]) -> None:
    """A predict-style result: NAME.json, NAME.tiles.geojson and NAME.regions.geojson over a 6 x 8 tile grid."""
    rows, cols = (g.ravel() for g in np.mgrid[0 : HEIGHT // SIZE0, 0 : WIDTH // SIZE0])
    x, y = cols * SIZE0, rows * SIZE0
    write_tiles_geojson(folder / f"{name}.tiles.geojson", x, y, SIZE0, scores)
    score = float(scores.max())
    calling = RegionCalling.uncalibrated(0.5)  # as predict with a model without calibration
    called = call_regions(score_grid(rows, cols, scores, (HEIGHT // SIZE0, WIDTH // SIZE0)), calling, 0.01)
    path = folder / f"{name}.regions.geojson"
    regions = write_called_regions_geojson(path, rows, cols, x, y, SIZE0, called, calling, score, 0.5)
    result = {
        "slide": name, "path": str(slide), "score": score, "prediction": "tumor" if score >= 0.5 else "normal",
        "threshold": 0.5, "tiles": len(scores), "corrupt_tiles": 0, "warnings": warnings, "regions": regions,
        "model": "test", "reason": None,
    }  # fmt: skip
    (folder / f"{name}.json").write_text(json.dumps(result))


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results folder of two slides (one with a high-score block, one all low) beside a folder of slides."""
    root = tmp_path_factory.mktemp("viewer")
    slides, out = root / "slides", root / "results"
    slides.mkdir()
    out.mkdir()
    n = (HEIGHT // SIZE0) * (WIDTH // SIZE0)
    tumour = np.full(n, 0.1)
    tumour[[10, 11, 18, 19]] = 0.95
    write_result(out, "tumor_001", write_pyramid(slides / "tumor_001.tif", WIDTH, HEIGHT), tumour, [])
    low = np.full(n, 0.05)
    warning = "colour far from the training slides'"
    write_result(out, "normal_001", write_pyramid(slides / "normal_001.tif", WIDTH, HEIGHT), low, [warning])
    (out / "cohort.json").write_text('{"not": "a result"}')  # other JSON files are skipped
    return root


@pytest.fixture(scope="module")
def viewer(results: Path):
    with viewer_in_thread([results / "results"]) as running:
        yield running


def fetch(url: str) -> tuple[int, str, bytes]:
    """(status, content type, body) of a GET; HTTP errors are returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=60) as reply:
            return reply.status, reply.headers.get("Content-Type", ""), reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read()


# ---- catalog ------------------------------------------------------------------------------------------------
def test_catalog_of_results_and_of_slides(results: Path) -> None:
    catalog = Catalog([results / "results"])
    assert list(catalog.entries) == ["normal_001", "tumor_001"]  # cohort.json is not a result
    entry = catalog.get("tumor_001")
    assert entry.slide == results / "slides" / "tumor_001.tif"
    assert entry.tiles_geojson and entry.regions_geojson
    bare = Catalog([results / "slides"])
    assert [e.result for e in bare.entries.values()] == [None, None]
    assert catalog.get("../slides/tumor_001.tif") is None


def test_catalog_refuses_what_it_cannot_show(tmp_path: Path) -> None:
    with pytest.raises(ViewerError, match="no such file"):
        Catalog([tmp_path / "missing"])
    with pytest.raises(ViewerError, match="no predict results"):
        Catalog([tmp_path])


@pytest.mark.parametrize(
    ("name", "expected"), [("a b/c", "a_b_c"), ("../../etc", "_._etc"), (".hidden", "hidden")]
)
def test_slide_ids_are_url_safe(name: str, expected: str) -> None:
    made = slide_id(name, set())
    assert made == expected and ".." not in made and "/" not in made
    assert slide_id(name, {made}) == f"{made}-2"


# ---- tiles --------------------------------------------------------------------------------------------------
class HugeSlide(Slide):
    """A 100,000 x 46,000 px slide whose pixels are made on request; records the largest read."""

    backend = "fake"

    def __init__(self, levels: int) -> None:
        self.path = Path("huge.tif")
        self.level_dimensions = tuple((100_000 // 4**k, 46_000 // 4**k) for k in range(levels))
        self.largest_read = 0

    def _read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        self.largest_read = max(self.largest_read, w * h)
        return np.full((h, w, 3), 200, np.uint8)

    def _associated_images(self) -> dict[str, np.ndarray]:
        return {}

    def _tile_size(self, level: int) -> tuple[int, int]:
        return 256, 256

    def close(self) -> None:
        pass


def test_pyramid_layout() -> None:
    pyramid = TilePyramid(100_000, 46_000)
    assert pyramid.max_zoom == 9 and pyramid.side0(9) == TILE_PX and pyramid.side0(0) == TILE_PX * 512
    assert pyramid.grid(0) == (1, 1) and pyramid.grid(9) == (391, 180)
    assert pyramid.contains(9, 390, 179) and not pyramid.contains(9, 391, 0) and not pyramid.contains(10, 0, 0)


@pytest.mark.parametrize("levels", [4, 1])
def test_huge_slide_tiles_read_bounded_regions(levels: int) -> None:
    """Every zoom of a 100,000 x 46,000 px slide reads at most MAX_READ_PX per request, with or without a
    pyramid (without one, coarse tiles are built from finer ones; checked down to 5 zooms below the top, the
    first built that way)."""
    slide = HugeSlide(levels)
    tiles = SlideTiles({"huge": Path("huge.tif")}, cache_bytes=8 << 20, opener=lambda _: slide)
    top = TilePyramid(100_000, 46_000).max_zoom
    for zoom in range(top, top - 6 if levels == 1 else -1, -1):
        jpeg = tiles.tile("huge", zoom, 0, 0)
        assert Image.open(io.BytesIO(jpeg)).size == (TILE_PX, TILE_PX)
    assert 0 < slide.largest_read <= MAX_READ_PX


# ---- HTTP endpoints -----------------------------------------------------------------------------------------
def test_slide_list(viewer) -> None:
    status, kind, body = fetch(viewer.url + "api/slides")
    assert (status, kind) == (200, "application/json")
    listed = {item["id"]: item for item in json.loads(body)}
    assert set(listed) == {"tumor_001", "normal_001"}
    assert listed["tumor_001"]["prediction"] == "tumor" and listed["tumor_001"]["score"] == 0.95
    assert listed["normal_001"]["warnings"] and listed["normal_001"]["has_overlay"]
    assert str(viewer.data.catalog.get("tumor_001").slide) not in body.decode()  # ids, not paths


def test_slide_info(viewer) -> None:
    status, _, body = fetch(viewer.url + "api/slides/tumor_001")
    info = json.loads(body)
    assert status == 200 and info["slide"] == {"width": WIDTH, "height": HEIGHT, "tile_px": TILE_PX, "max_zoom": 2}
    assert info["overlay"] == {"x": 0.0, "y": 0.0, "width": WIDTH, "height": HEIGHT, "tile_size0": SIZE0}


@pytest.mark.parametrize(("zoom", "col", "row"), [(0, 0, 0), (1, 1, 1), (2, 3, 2), (2, 0, 0)])
def test_tiles_at_several_zooms(viewer, zoom: int, col: int, row: int) -> None:
    status, kind, body = fetch(viewer.url + f"api/slides/tumor_001/tiles/{zoom}/{col}_{row}.jpeg")
    assert (status, kind) == (200, "image/jpeg")
    image = Image.open(io.BytesIO(body))
    assert image.format == "JPEG" and image.size == (TILE_PX, TILE_PX)
    pixels = np.asarray(image.convert("RGB"), np.int16)
    if zoom == 2:  # full resolution: the test pattern's red channel is x % 256, so it rises across the tile
        assert pixels[128, 200, 0] - pixels[128, 50, 0] > 100
    else:  # the slide covers the tile's top-left part only: the rest is white
        side = TILE_PX * 2 ** (2 - zoom)
        inside_w = min(side, WIDTH - col * side) * TILE_PX // side
        if inside_w < TILE_PX:
            assert (pixels[:, inside_w + 2 :] > 245).all()


def test_overlay_and_regions(viewer) -> None:
    status, kind, body = fetch(viewer.url + "api/slides/tumor_001/overlay.png")
    assert (status, kind) == (200, "image/png")
    overlay = np.asarray(Image.open(io.BytesIO(body)))
    assert overlay.shape == (HEIGHT // SIZE0, WIDTH // SIZE0, 4)
    assert overlay[1, 2, 3] > 200 and overlay[0, 0, 3] == 0  # high score opaque, low transparent
    status, _, body = fetch(viewer.url + "api/slides/tumor_001/regions.geojson")
    regions = json.loads(body)
    assert status == 200 and len(regions["features"]) == 1
    status, _, body = fetch(viewer.url + "api/slides/normal_001/regions.geojson")
    assert status == 200 and json.loads(body)["features"] == []


@pytest.mark.parametrize(
    "path",
    [
        "api/slides/nope",
        "api/slides/nope/tiles/0/0_0.jpeg",
        "api/slides/tumor_001/tiles/2/4_0.jpeg",  # outside the slide
        "api/slides/tumor_001/tiles/3/0_0.jpeg",  # beyond the top zoom
        "api/slides/..%2F..%2Fslides%2Ftumor_001.tif/tiles/0/0_0.jpeg",
        "api/slides/%2E%2E/tiles/0/0_0.jpeg",
        "api/slides/tumor_001.json",
        "tumor_001.json",
        "results/tumor_001.json",
        "static/../../../../etc/passwd",
        "static/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    ],
)
def test_outside_the_results_is_not_found(viewer, path: str) -> None:
    status, _, body = fetch(viewer.url + path)
    assert status in (400, 403, 404) and b"root:" not in body and b'"slide"' not in body


def test_page_serves_bokehjs_itself(viewer) -> None:
    status, kind, body = fetch(viewer.url + "?slide=tumor_001")
    assert status == 200 and kind.startswith("text/html")
    scripts = [s for s in body.decode().split('src="')[1:] if "bokeh" in s]
    assert scripts and all(s.startswith("/static/") for s in scripts), scripts
    assert b"cdn.bokeh.org" not in body


def test_binds_loopback_by_default(results: Path) -> None:
    with viewer_in_thread([results / "slides"]) as running:
        assert running.url.startswith("http://127.0.0.1:")
        assert running.server.address == "127.0.0.1"
        status, _, body = fetch(running.url + "?slide=normal_001")  # a slide without results: no overlays
        assert status == 200 and b"<html" in body.lower()


def test_unreadable_files_are_problems_not_failures(results: Path, tmp_path: Path) -> None:
    """A slide or GeoJSON that cannot be read: a problem in the slide's JSON and on its page, a one-line 500 for
    its tiles or overlay; the server goes on serving the rest."""
    (tmp_path / "bad.tif").write_bytes(b"not a slide " * 100)
    (tmp_path / "bad.tiles.geojson").write_text("{not json")
    good = results / "slides" / "tumor_001.tif"
    (tmp_path / "bad.json").write_text(json.dumps({"slide": "bad", "path": str(tmp_path / "bad.tif")}))
    (tmp_path / "good.json").write_text(json.dumps({"slide": "good", "path": str(good), "score": 0.2}))
    with viewer_in_thread([tmp_path]) as running:
        status, _, body = fetch(running.url + "api/slides/bad")
        info = json.loads(body)
        assert status == 200 and "slide" not in info and "overlay" not in info
        assert any("bad.tif" in p for p in info["problems"]) and any("bad.tiles.geojson" in p for p in info["problems"])
        for path in ("api/slides/bad/tiles/0/0_0.jpeg", "api/slides/bad/overlay.png"):
            status, kind, body = fetch(running.url + path)
            assert status == 500 and kind.startswith("text/plain") and len(body.splitlines()) == 1, body
            assert b"Traceback" not in body and b"bad." in body
        assert fetch(running.url + "?slide=bad")[0] == 200
        assert fetch(running.url + "api/slides/good/tiles/0/0_0.jpeg")[0] == 200


def test_page_text_is_escaped(tmp_path: Path) -> None:
    """Slide names and warnings reach the page as text, never as markup."""
    from wsi_mamba.viewer.page import slide_info_html, slide_list_html
    from wsi_mamba.viewer.service import ViewerData

    slide = write_pyramid(tmp_path / "<img src=x onerror=alert(1)>.tif", 256, 256, levels=1)
    result = {"slide": slide.stem, "path": str(slide), "score": 0.5, "warnings": ["<script>alert(2)</script>"]}
    (tmp_path / "r.json").write_text(json.dumps(result))
    data = ViewerData(Catalog([tmp_path]))
    try:
        (slide_key,) = data.catalog.entries
        page = slide_list_html(data, slide_key) + slide_info_html(data.describe(slide_key))
    finally:
        data.close()
    assert "<img" not in page and "<script" not in page
    assert "&lt;img src=x" in page and "&lt;script&gt;alert(2)" in page


# ---- the command ---------------------------------------------------------------------------------------------
def test_command_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["view", str(tmp_path / "missing")]) == 1
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'missing'}: no such file or folder"
    assert main(["view", str(tmp_path), "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err


def test_command_serves_until_ctrl_c(results: Path) -> None:
    """The real command: prints its address, serves, and stops on Ctrl-C with exit code 0 and no traceback."""
    command = [sys.executable, "-m", "wsi_mamba", "view", str(results / "results"), "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(120, process.kill)  # a server that never answers cannot hang the suite
    watchdog.start()
    try:
        line = process.stdout.readline()  # the first line is the address (or nothing, if it failed)
        url = line.split(" at ")[1].split()[0]
        assert fetch(url + "api/slides")[0] == 200
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert line.startswith("wsi-mamba view: 2 slides at http://127.0.0.1:")
    assert process.returncode == 0 and "Traceback" not in err and "stopped" in out


def test_command_without_bokeh_names_the_extra(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bokeh" else real(name, *a))
    assert main(["view", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == "error: view needs bokeh, which is not installed: pip install " \
        "'wsi-mamba[viewer]'"


# ---- a real browser -------------------------------------------------------------------------------------------
@pytest.mark.skipif(find_chromium() is None, reason="no Chromium on PATH (Debian: apt-get install chromium)")
def test_headless_chromium_renders_the_page(viewer, tmp_path: Path) -> None:
    shot = browser_screenshot(viewer.url + "?slide=tumor_001", tmp_path / "viewer.png", window=(1000, 700))
    pixels = np.asarray(Image.open(shot).convert("RGB"), np.int16)
    assert pixels.shape == (700, 1000, 3)
    # the slide's tiles were drawn: the test pattern's saturated colours, which the page itself has none of
    saturation = pixels.max(axis=2) - pixels.min(axis=2)
    assert (saturation > 150).mean() > 0.05
