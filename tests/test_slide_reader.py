"""open_slide: both backends, pyramid layouts, mpp sources, thread safety and every bad input."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tifffile
from slide_fixtures import (
    gradient_image,
    shared_file,
    synthetic_slide,
    write_corrupt_tile,
    write_pyramid,
    write_unsupported_compression,
)

from wsi_mamba.slide import SlideError, choose_backend, open_slide
from wsi_mamba.slide.base import set_max_pixels


def open_quiet(path: Path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return open_slide(path, **kwargs)


# ---- layouts and properties --------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["pages", "subifds", "ome"])
def test_tifffile_reads_pyramid_layouts(tmp_path: Path, layout: str) -> None:
    path = write_pyramid(tmp_path / f"{layout}.tif", layout=layout)
    image = gradient_image(1024, 768)
    with open_slide(path, backend="tifffile") as s:
        assert s.backend == "tifffile"
        assert s.dimensions == (1024, 768)
        assert s.level_count == 3
        assert s.level_dimensions == ((1024, 768), (512, 384), (256, 192))
        assert s.level_downsamples == pytest.approx((1.0, 2.0, 4.0))
        assert s.mpp == pytest.approx(0.5)
        assert s.vendor == ("ome-tiff" if layout == "ome" else "generic-tiff")
        np.testing.assert_array_equal(s.read_region((100, 60), 0, (300, 200)), image[60:260, 100:400])
        np.testing.assert_array_equal(s.read_region((200, 120), 1, (64, 32)), image[::2, ::2][60:92, 100:164])
        level1 = s.to_dask(1)
        assert level1.shape == (384, 512, 3) and level1.dtype == np.uint8
        assert level1.chunks[0][0] == 128 and level1.chunks[1][0] == 128
        np.testing.assert_array_equal(level1.compute(), image[::2, ::2])


def test_auto_backend_is_tifffile_for_tiled_tiff(tmp_path: Path) -> None:
    path = write_pyramid(tmp_path / "p.tif")
    assert choose_backend(path) == "tifffile"
    with open_slide(path) as s:
        assert s.backend == "tifffile"


def test_backends_agree_on_lossless_pyramid(tmp_path: Path) -> None:
    path = write_pyramid(tmp_path / "p.tif", layout="pages")
    with open_slide(path, backend="tifffile") as a, open_slide(path, backend="openslide") as b:
        assert (a.dimensions, a.level_dimensions, a.vendor) == (b.dimensions, b.level_dimensions, b.vendor)
        assert a.level_downsamples == pytest.approx(b.level_downsamples)
        assert a.mpp == pytest.approx(b.mpp)
        for level in range(a.level_count):
            np.testing.assert_array_equal(
                a.read_region((256, 128), level, (200, 150)), b.read_region((256, 128), level, (200, 150))
            )


def test_outside_the_image_is_white(tmp_path: Path) -> None:
    path = write_pyramid(tmp_path / "p.tif")
    with open_slide(path, backend="tifffile") as a, open_slide(path, backend="openslide") as b:
        for s in (a, b):
            region = s.read_region((1000, 700), 0, (50, 100))
            assert region.shape == (100, 50, 3)
            assert (region[70:, :] == 255).all() and (region[:, 24:] == 255).all()
            assert (s.read_region((-20, -10), 0, (10, 5)) == 255).all()


@pytest.mark.parametrize("backend", ["tifffile", "openslide"])
def test_both_backends_check_regions_alike(tmp_path: Path, backend: str) -> None:
    with open_slide(write_pyramid(tmp_path / "p.tif"), backend=backend) as s:
        with pytest.raises(SlideError, match=r"negative region size \(-1, 5\)"):
            s.read_region((0, 0), 0, (-1, 5))
        with pytest.raises(SlideError, match=r"level 3 out of range"):
            s.read_region((0, 0), 3, (5, 5))
        assert s.read_region((0, 0), 0, (0, 5)).shape == (5, 0, 3)
        set_max_pixels(1000)
        try:
            with pytest.raises(SlideError, match="a region of level 0 is 100 x 100 px"):
                s.read_region((0, 0), 0, (100, 100))
        finally:
            set_max_pixels(None)


def test_best_level_and_thumbnail(tmp_path: Path) -> None:
    with open_slide(write_pyramid(tmp_path / "p.tif")) as s:
        assert [s.best_level_for_downsample(d) for d in (0.5, 1, 1.9, 2, 3.99, 100)] == [0, 0, 0, 1, 2, 2]
        thumb = s.get_thumbnail((200, 200))
        assert thumb.size == (200, 150) and thumb.mode == "RGB"


def test_reads_are_thread_safe(tmp_path: Path) -> None:
    path = write_pyramid(tmp_path / "p.tif", width=2048, height=2048, levels=2)
    image = gradient_image(2048, 2048)
    origins = [(x, y) for y in range(0, 2048, 256) for x in range(0, 2048, 256)]
    with open_slide(path, backend="tifffile") as s, ThreadPoolExecutor(8) as pool:
        tiles = list(pool.map(lambda o: s.read_region(o, 0, (256, 256)), origins * 2))
    for (x, y), tile in zip(origins * 2, tiles, strict=True):
        np.testing.assert_array_equal(tile, image[y : y + 256, x : x + 256])


# ---- mpp ----------------------------------------------------------------------------------------


def test_missing_mpp_warns_and_is_none(tmp_path: Path) -> None:
    path = write_pyramid(tmp_path / "nompp.tif", mpp=None)
    with pytest.warns(UserWarning, match="no microns-per-pixel"), open_slide(path) as s:
        assert s.mpp is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with open_slide(path, mpp=0.25) as s:
            assert s.mpp == 0.25


def test_mpp_override_and_bad_value(tmp_path: Path) -> None:
    path = write_pyramid(tmp_path / "p.tif")
    with open_slide(path, mpp=0.3) as s:
        assert s.mpp == 0.3 and s.native_mpp == pytest.approx(0.5)
    with pytest.raises(SlideError, match="mpp must be a positive number"):
        open_slide(path, mpp=-1)


def test_inch_resolution_tags(tmp_path: Path) -> None:
    path = tmp_path / "inch.tif"
    tifffile.imwrite(
        path,
        gradient_image(256, 256),
        tile=(128, 128),
        resolution=(101600, 101600),
        resolutionunit="INCH",
        metadata=None,
    )
    with open_slide(path) as s:
        assert s.mpp == pytest.approx(0.25)


# ---- synthetic SVS / TIFF flavours against OpenSlide ----------------------------------------------


@pytest.mark.parametrize("flavour", ["svs", "tiff"])
def test_synthetic_flavours_agree_with_openslide(
    tmp_path_factory: pytest.TempPathFactory, flavour: str
) -> None:
    path = synthetic_slide(tmp_path_factory, flavour)
    with open_slide(path) as a, open_slide(path, backend="openslide") as b:
        assert a.backend == "tifffile" and b.backend == "openslide"
        assert a.vendor == b.vendor == ("aperio" if flavour == "svs" else "generic-tiff")
        assert a.level_dimensions == b.level_dimensions and a.level_count >= 3
        assert a.level_downsamples == pytest.approx(b.level_downsamples)
        assert a.mpp == pytest.approx(b.mpp) == pytest.approx(0.243)
        assert a.objective_power == b.objective_power == (40 if flavour == "svs" else None)
        assert sorted(a.associated_images) == sorted(b.associated_images)
        for level in range(a.level_count):
            ra = a.read_region((512, 256), level, (256, 256)).astype(int)
            rb = b.read_region((512, 256), level, (256, 256)).astype(int)
            assert np.abs(ra - rb).mean() < 2.0  # JPEG: decoders may differ slightly
        assert a.to_dask(0).chunks[0][0] == 256


def test_svs_associated_images(tmp_path_factory: pytest.TempPathFactory) -> None:
    with open_slide(synthetic_slide(tmp_path_factory, "svs")) as s:
        assert set(s.associated_images) == {"thumbnail", "label", "macro"}
        for image in s.associated_images.values():
            assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8


# ---- bad inputs -----------------------------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(SlideError, match=r"missing\.svs: no such file"):
        open_slide(tmp_path / "missing.svs")


def test_text_file_renamed_svs(tmp_path: Path) -> None:
    path = tmp_path / "notes.svs"
    path.write_text("this is not a slide\n" * 20)
    with pytest.raises(SlideError, match=r"notes\.svs: not a slide"):
        open_slide(path)
    with pytest.raises(SlideError, match=r"notes\.svs"):
        open_slide(path, backend="tifffile")
    with pytest.raises(SlideError, match=r"notes\.svs"):
        open_slide(path, backend="openslide")


def test_truncated_tiff(tmp_path: Path) -> None:
    full = write_pyramid(tmp_path / "full.tif", compression="none")
    path = tmp_path / "cut.tif"
    data = full.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideError, match=r"cut\.tif: .*(truncated|not a readable TIFF|cannot)"):
        open_slide(path, backend="tifffile")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.tif"
    path.write_bytes(b"")
    with pytest.raises(SlideError, match="empty file"):
        open_slide(path)


def test_unknown_backend(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="backend must be one of"):
        open_slide(write_pyramid(tmp_path / "p.tif"), backend="pillow")  # type: ignore[arg-type]


def test_unsupported_compression(tmp_path: Path) -> None:
    path = write_unsupported_compression(tmp_path / "odd.tif")
    for backend in (None, "tifffile", "openslide"):
        with pytest.raises(SlideError, match=r"odd\.tif: .*compression.*52479"):
            open_slide(path, backend=backend)


@pytest.mark.parametrize("backend", ["tifffile", "openslide"])
def test_corrupt_tile_fails_when_read(tmp_path: Path, backend: str) -> None:
    path = write_corrupt_tile(tmp_path / "bad.tif")
    with open_slide(path, backend=backend) as s:  # opening is fine: the tile is only read on demand
        with pytest.raises(SlideError, match=r"bad\.tif: cannot .* pixels of level 0 at \(0, 0\)"):
            s.read_region((0, 0), 0, (64, 64))
    if backend == "tifffile":  # other tiles still read
        with open_slide(path, backend=backend) as s:
            assert s.read_region((600, 600), 0, (64, 64)).shape == (64, 64, 3)


def test_untiled_tiff_works_with_warning(tmp_path: Path) -> None:
    path = tmp_path / "plain.tif"
    image = gradient_image(600, 400)
    tifffile.imwrite(path, image, photometric="rgb", metadata=None)
    with pytest.warns(UserWarning, match="not tiled"), open_slide(path, mpp=1.0) as s:
        assert s.backend == "tifffile" and s.level_count == 1
        np.testing.assert_array_equal(s.read_region((10, 20), 0, (100, 50)), image[20:70, 10:110])
        np.testing.assert_array_equal(s.to_dask(0).compute(), image)


# ---- real sample slides (../shared/data) ------------------------------------------------------------


def test_real_aperio_svs_both_backends() -> None:
    path = shared_file("CMU-1-Small-Region.svs")
    with open_slide(path) as a, open_slide(path, backend="openslide") as b:
        assert a.backend == "tifffile"
        assert a.dimensions == b.dimensions == (2220, 2967)
        assert a.vendor == b.vendor == "aperio"
        assert a.mpp == pytest.approx(0.499) and b.mpp == pytest.approx(0.499)
        assert a.objective_power == b.objective_power == 20
        assert set(a.associated_images) == set(b.associated_images) == {"thumbnail", "label", "macro"}
        ra = a.read_region((1000, 1000), 0, (512, 512)).astype(int)
        rb = b.read_region((1000, 1000), 0, (512, 512)).astype(int)
        assert np.abs(ra - rb).mean() < 2.0


def test_real_generic_pyramid_both_backends() -> None:
    path = shared_file("openslide-boxes.tiff")
    with open_slide(path) as a, open_slide(path, backend="openslide") as b:
        assert a.level_count == b.level_count == 4
        assert a.level_dimensions == b.level_dimensions
        assert a.level_downsamples == pytest.approx(b.level_downsamples)
        assert a.mpp == pytest.approx(b.mpp)
        np.testing.assert_array_equal(
            a.read_region((0, 0), 0, (300, 250)), b.read_region((0, 0), 0, (300, 250))
        )


def test_real_tiny_svs_edge_tiles() -> None:
    with open_slide(shared_file("openslide-small.svs")) as s:
        assert s.dimensions == (16, 16)
        region = s.read_region((8, 8), 0, (16, 16))
        assert region.shape == (16, 16, 3) and (region[8:, 8:] == 255).all()


def test_real_untiled_tiff_without_mpp() -> None:
    path = shared_file("kidney-48-5.tif")
    with pytest.warns(UserWarning) as record, open_slide(path) as s:
        assert s.backend == "tifffile" and s.dimensions == (1493, 901) and s.mpp is None
        assert s.read_region((0, 0), 0, (64, 64)).shape == (64, 64, 3)
    messages = " ".join(str(w.message) for w in record)
    assert "not tiled" in messages and "no microns-per-pixel" in messages
    with pytest.raises(SlideError, match="OpenSlide cannot open it"):
        open_slide(path, backend="openslide")


def test_real_dicom_folder_through_openslide() -> None:
    path = shared_file("dicom-boxes")
    with open_slide(path) as s:
        assert s.backend == "openslide" and s.vendor == "dicom"
        assert s.read_region((0, 0), 0, (16, 16)).shape == (16, 16, 3)


def test_real_unsupported_compression() -> None:
    path = shared_file("openslide-unopenable.tiff")
    for backend in (None, "tifffile", "openslide"):
        with pytest.raises(SlideError, match=r"openslide-unopenable\.tiff: .*compression"):
            open_slide(path, backend=backend)


@pytest.mark.parametrize("backend", ["tifffile", "openslide"])
def test_real_corrupt_tile_data(backend: str) -> None:
    path = shared_file("openslide-unreadable.svs")
    with (
        open_quiet(path, backend=backend) as s,
        pytest.raises(SlideError, match=r"openslide-unreadable\.svs: .*pixels"),
    ):
        s.read_region((0, 0), 0, (16, 16))


def test_read_level_in_bands_matches_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from wsi_mamba.slide import base

    with open_slide(write_pyramid(tmp_path / "p.tif")) as s:
        whole = s.read_level(0, (256, 192))
        monkeypatch.setattr(base, "_MAX_WHOLE_LEVEL_PX", 1000)
        monkeypatch.setattr(base, "_BAND_ROWS", 200)
        banded = s.read_level(0, (256, 192))
    assert banded.shape == whole.shape
    assert np.abs(banded.astype(int) - whole.astype(int)).mean() < 2.0


def test_openslide_to_dask_matches_tifffile(tmp_path: Path) -> None:
    path = write_pyramid(tmp_path / "p.tif")
    with open_slide(path, backend="tifffile") as a, open_slide(path, backend="openslide") as b:
        for level in range(a.level_count):
            np.testing.assert_array_equal(a.to_dask(level).compute(), b.to_dask(level).compute())
