"""Hostile inputs, second round (issue 25, items 2-4): slide pixel data and resolution. Tiles that hold no image
data are corrupt (never read as black tissue); pixel formats other than 8-bit RGB are rendered as RGB by a
well-defined rule or refused in one line; pixels that are not square are not averaged. See the section
"Second round (issue 25): slide pixel data and resolution" of docs/hostile-inputs.md."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from cli_helpers import assert_one_error, run
from PIL import Image
from workflow_fixtures import WorkflowData, copy_with_small_tiles, workflow_data

from wsi_mamba.slide import Slide, open_slide
from wsi_mamba.slide.errors import SlideError, TileDecodeError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = ["--batch-size", "8", "--read-threads", "2"]
CM = dict(resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")  # 0.5 µm/px


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> WorkflowData:
    return workflow_data(tmp_path_factory)




def quiet_open(path: Path, **kwargs: object) -> Slide:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return open_slide(path, **kwargs)


def every_read(path: Path) -> list[np.ndarray]:
    """Level 0 as read_region, to_dask and read_level (the thumbnail and tissue-detection path) give it."""
    with quiet_open(path) as slide:
        w, h = slide.dimensions
        return [
            slide.read_region((0, 0), 0, (w, h)),
            np.asarray(slide.to_dask(0).compute()),
            slide.read_level(0),
            np.asarray(slide.get_thumbnail((w, h))),
        ]


# ----------------------------------------------------------------------------------- item 2: missing tile data


def zero_tiles(path: Path, page: int, which: list[int], tag: str = "TileByteCounts") -> None:
    """Set the byte counts (or offsets, ``tag="TileOffsets"``) of file tiles ``which`` of ``page`` to 0."""
    with tifffile.TiffFile(path, mode="r+b") as tf:
        entry = tf.pages[page].tags[tag]
        values = list(entry.value)
        for i in which:
            values[i] = 0
        entry.overwrite(values)


def pink_tiff(path: Path, size: tuple[int, int] = (128, 96)) -> Path:
    image = np.zeros((size[1], size[0], 3), np.uint8)
    image[:] = (200, 80, 150)
    tifffile.imwrite(path, image, tile=(32, 32), photometric="rgb", metadata=None, **CM)
    return path


@pytest.mark.parametrize("tag", ["TileByteCounts", "TileOffsets"])
def test_a_tile_without_data_is_a_decode_error_not_black(tmp_path: Path, tag: str) -> None:
    path = pink_tiff(tmp_path / "holes.tif")
    zero_tiles(path, 0, [5], tag)  # row 1, column 1 of 4 x 3 file tiles
    with quiet_open(path) as slide:
        assert (slide.read_region((0, 0), 0, (32, 32)) == (200, 80, 150)).all()  # other tiles read as before
        assert (slide.read_region((64, 0), 0, (64, 96)) == (200, 80, 150)).all()
        for read in (
            lambda: slide.read_region((40, 40), 0, (8, 8)),
            lambda: slide.to_dask(0).compute(),
            lambda: slide.get_thumbnail(64),
        ):
            with pytest.raises(TileDecodeError, match=r"holes\.tif: no image data for level 0 .*row 1, column 1"):
                read()



def test_predict_counts_tiles_without_data_as_corrupt(
    data: WorkflowData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from wsi_mamba.slide.tiling import make_tile_grid
    from wsi_mamba.slide.tissue import detect_tissue

    path = copy_with_small_tiles(data.slide("test_001"), tmp_path / "one-hole.tif", compression="zlib")
    with open_slide(path) as slide:
        grid = make_tile_grid(slide, 64, 1.0, 0.25, tissue=detect_tissue(slide))
        across = -(-slide.level_dimensions[2][0] // 32)
    assert grid.level == 2 and len(grid) >= 8
    lx, ly = int(grid.x[0]) // 4, int(grid.y[0]) // 4  # the file tile of level 2 inside grid tile 0 only
    tx, ty = -(-lx // 32), -(-ly // 32)
    assert (tx + 1) * 32 <= lx + grid.read_px and (ty + 1) * 32 <= ly + grid.read_px
    zero_tiles(path, 2, [ty * across + tx])
    with pytest.warns(UserWarning) as caught:
        code, stdout, err = run(["predict", path, "--model", data.model, "--json", *FAST], capsys)
    assert code == 0 and "error:" not in err, err
    result = json.loads(stdout)[0]
    assert result["corrupt_tiles"] == 1 and result["tiles"] == len(grid) - 1 and result["score"] is not None
    lines = [str(w.message) for w in caught if "no image data" in str(w.message)]
    assert len(lines) == 1 and lines[0].startswith(f"{path}: tile 0 (level 2, ") and "left out" in lines[0]

    half = copy_with_small_tiles(data.slide("test_001"), tmp_path / "half.tif", compression="zlib")
    with tifffile.TiffFile(half) as tf:
        count = len(tf.pages[2].databytecounts)
    zero_tiles(half, 2, list(range(0, count, 2)))  # the case: half the tiles of a level have no data
    code, stdout, err = run(["predict", half, "--model", data.model, "--json", *FAST], capsys)
    assert code == 1 and json.loads(stdout)[0]["score"] is None
    assert_one_error(err, str(half), "tiles cannot be decoded", "no image data")


# ----------------------------------------------------------------------------------- item 3: pixel formats

RNG = np.random.default_rng(25)
SHAPE = (48, 64)  # (h, w): 3 x 4 file tiles of 16 px
GRAY = RNG.integers(0, 256, SHAPE, dtype=np.uint8)
RGB = RNG.integers(0, 256, (*SHAPE, 3), dtype=np.uint8)
CMYK = RNG.integers(0, 256, (*SHAPE, 4), dtype=np.uint8)
COLORMAP = RNG.integers(0, 65536, (3, 256), dtype=np.uint16)
TWELVE_BIT = RNG.integers(0, 4096, (*SHAPE, 3), dtype=np.uint16)


def write(path: Path, pixels: np.ndarray, **options: object) -> Path:
    tifffile.imwrite(path, pixels, tile=(16, 16), metadata=None, **CM, **options)  # type: ignore[arg-type]
    return path


def cmyk_by_pil(cmyk: np.ndarray) -> np.ndarray:
    h, w = cmyk.shape[:2]
    return np.asarray(Image.frombytes("CMYK", (w, h), cmyk.tobytes()).convert("RGB"))


FORMATS = {
    # name: (pixels, writer options, expected RGB)
    "gray": (GRAY, dict(photometric="minisblack"), np.repeat(GRAY[:, :, None], 3, axis=2)),
    "min-is-white": (GRAY, dict(photometric="miniswhite"), np.repeat(255 - GRAY[:, :, None], 3, axis=2)),
    "gray-4-bit": (
        GRAY >> 4,
        dict(photometric="minisblack", bitspersample=4),
        np.repeat((GRAY >> 4)[:, :, None] * 17, 3, axis=2),
    ),
    "palette": (GRAY, dict(photometric="palette", colormap=COLORMAP), (COLORMAP >> 8).astype(np.uint8).T[GRAY]),
    "palette-8-bit-entries": (
        GRAY,
        dict(photometric="palette", colormap=COLORMAP >> 8),
        (COLORMAP >> 8).astype(np.uint8).T[GRAY],
    ),
    "cmyk": (CMYK, dict(photometric="separated"), cmyk_by_pil(CMYK)),
    "12-bit-in-16": (
        TWELVE_BIT,
        dict(photometric="rgb", extratags=[(281, 3, 1, 4095, True)]),  # MaxSampleValue 4095
        np.rint(TWELVE_BIT * (255 / 4095)).astype(np.uint8),
    ),
    "16-bit": (RGB.astype(np.uint16) * 257, dict(photometric="rgb"), RGB),
    "rgba": (np.dstack([RGB, GRAY]), dict(photometric="rgb", extrasamples=[2]), RGB),
}


@pytest.mark.parametrize("name", list(FORMATS))
def test_pixel_formats_are_read_as_rgb(tmp_path: Path, name: str) -> None:
    pixels, options, expected = FORMATS[name]
    path = write(tmp_path / f"{name}.tif", pixels, **options)
    for read in every_read(path):
        assert read.dtype == np.uint8 and read.shape == (*SHAPE, 3)
        np.testing.assert_array_equal(read, expected)


def test_a_palette_slide_finds_its_tissue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Read as indices (gray), a palette slide had no tissue: a null score with exit 0."""
    indices = np.zeros((1024, 1024), np.uint8)
    indices[256:768, 256:768] = 1  # 256 µm a side at 0.5 µm/px
    colormap = np.zeros((3, 256), np.uint16)
    colormap[:, 0] = 0xF0F0  # glass
    colormap[:, 1] = (0xC8C8, 0x5050, 0x9696)  # stained tissue
    path = write(tmp_path / "palette.tif", indices, photometric="palette", colormap=colormap)
    code, stdout, err = run(["tiles", path, "--mpp", "1", "--tile", "64", "--json"], capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["tiles"] >= 9 and 0.2 < summary["tissue_fraction"] < 0.3


@pytest.mark.parametrize("photometric", ["minisblack", "miniswhite"])
def test_a_grayscale_slide_is_refused_not_called_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], photometric: str
) -> None:
    """Read right (R = G = B), a grayscale slide still has no stain colour: tissue detection found nothing and
    predict gave a null score with exit 0. It is one line naming the file and why, exit 1; reading still works."""
    gray = np.full((1024, 1024), 240, np.uint8)
    gray[256:768, 256:768] = 90  # dark tissue on light glass
    pixels = gray if photometric == "minisblack" else 255 - gray
    path = write(tmp_path / f"{photometric}.tif", pixels, photometric=photometric)
    assert quiet_open(path).read_region((0, 0), 0, (8, 8)).shape == (8, 8, 3)
    for argv in (["tiles", path, "--mpp", "1", "--tile", "64", "--json"], ["predict", path]):
        code, stdout, err = run(argv, capsys)
        assert code == 1 and stdout == "", (argv, err)
        assert_one_error(err, str(path), "grayscale image")


def test_openslide_refuses_samples_deeper_than_8_bits(tmp_path: Path) -> None:
    """OpenSlide reads only the high byte of 16-bit samples (12-bit data came out near-black and was scored): the
    OpenSlide backend refuses them in one line; the tifffile backend renders them by MaxSampleValue."""
    pixels, options, expected = FORMATS["12-bit-in-16"]
    path = write(tmp_path / "deep.tif", pixels, **options)
    with pytest.raises(SlideError, match="16-bit samples: OpenSlide renders only their high byte"):
        quiet_open(path, backend="openslide")
    np.testing.assert_array_equal(quiet_open(path, backend="tifffile").read_region((0, 0), 0, SHAPE[::-1]), expected)


REFUSED = {
    # name: (pixels, writer options, words of the error)
    "float": (RGB.astype(np.float32) / 255, dict(photometric="rgb"), "32-bit floating-point samples"),
    "signed": (RGB.astype(np.int16), dict(photometric="rgb"), "16-bit signed integer samples"),
    "ycbcr-uncompressed": (RGB, dict(photometric="ycbcr", subsampling=(1, 1)), "YCbCr samples with compression 1"),
    "cmyk-other-inkset": (CMYK, dict(photometric="separated", extratags=[(332, 3, 1, 2, True)]), "InkSet 2"),
    "cielab": (RGB, dict(photometric="cielab"), "CIELAB has no RGB rendering"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_pixel_formats_without_an_rgb_rendering_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    pixels, options, words = REFUSED[name]
    path = write(tmp_path / f"{name}.tif", pixels, **options)
    with pytest.raises(SlideError) as caught:
        quiet_open(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: unsupported pixel format: ") and words in message and "\n" not in message
    code, stdout, err = run(["tiles", path, "--tile", "16", "--min-tissue", "0"], capsys)
    assert code == 1 and stdout == ""
    assert_one_error(err, str(path), "unsupported pixel format", words)


def test_ome_channels_as_pages_stay_rgb(tmp_path: Path) -> None:
    """An OME-TIFF with R, G and B as three gray pages (axes CYX) is read as RGB, as before."""
    path = tmp_path / "planes.ome.tif"
    tifffile.imwrite(path, np.moveaxis(RGB, 2, 0), photometric="minisblack", tile=(16, 16))
    for read in every_read(path):
        np.testing.assert_array_equal(read, RGB)


# ----------------------------------------------------------------------------------- item 4: anisotropic pixels


def write_resolution(path: Path, mpp_x: float, mpp_y: float) -> Path:
    image = np.full((256, 256, 3), 255, np.uint8)
    image[64:192, 64:192] = (200, 80, 150)
    options = dict(tile=(64, 64), photometric="rgb", metadata=None, resolutionunit="CENTIMETER")
    with tifffile.TiffWriter(path) as tw:
        tw.write(image, resolution=(1e4 / mpp_x, 1e4 / mpp_y), **options)
        tw.write(image[::2, ::2], subfiletype=1, resolution=(1e4 / mpp_x / 2, 1e4 / mpp_y / 2), **options)
    return path


@pytest.mark.parametrize("backend", ["tifffile", "openslide"])
def test_pixels_that_are_not_square_are_not_averaged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], backend: str
) -> None:
    path = write_resolution(tmp_path / "stretched.tif", 0.243, 24.3)  # the case: averaged to 12.27
    both = ("0.243 µm/px across (X)", "24.3 µm/px down (Y)")
    with pytest.warns(UserWarning) as caught, open_slide(path, backend=backend) as slide:
        assert slide.mpp is None and slide.native_mpp is None
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "pixels are not square" in messages[0] and all(t in messages[0] for t in both)
    with open_slide(path, backend=backend, mpp=0.243) as slide:  # --slide-mpp overrides, without a warning
        assert slide.mpp == 0.243

    argv = ["tiles", path, "--tile", "16", "--min-tissue", "0"]
    if backend == "tifffile":  # `tiles` picks the backend itself: tifffile for a tiled TIFF
        code, stdout, err = run(argv, capsys)
        assert code == 1 and stdout == ""
        assert_one_error(err, str(path), "pixels are not square", *both, "--slide-mpp")
        code, stdout, err = run([*argv, "--slide-mpp", "0.243"], capsys)
        assert code == 0 and "tiles of 16 px" in stdout, err


@pytest.mark.parametrize("backend", ["tifffile", "openslide"])
def test_nearly_square_pixels_are_averaged(tmp_path: Path, backend: str) -> None:
    path = write_resolution(tmp_path / "scanner.tif", 0.2430, 0.2440)  # 0.4 % apart: a scanner's rounding
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with open_slide(path, backend=backend) as slide:
            assert slide.mpp == pytest.approx(0.2435)


def test_ome_physical_sizes_that_differ_are_not_averaged(tmp_path: Path) -> None:
    path = tmp_path / "stretched.ome.tif"
    metadata = {"PhysicalSizeX": 0.25, "PhysicalSizeY": 0.5}
    tifffile.imwrite(path, RGB, photometric="rgb", tile=(16, 16), metadata=metadata)
    with pytest.warns(UserWarning, match=r"0\.25 µm/px across \(X\) and 0\.5 µm/px down \(Y\)"):
        with open_slide(path) as slide:
            assert slide.mpp is None
