"""The decoded-tile cache: LRU by bytes, thread-safe, and cached reads equal direct reads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from slide_fixtures import gradient_image, write_pyramid

from wsi_mamba.slide import open_slide
from wsi_mamba.slide.tile_cache import TileCache


def test_lru_evicts_by_bytes_and_keeps_recent() -> None:
    cache = TileCache(max_bytes=3 * 100)
    loads = []

    def loader(key: int):
        def load() -> np.ndarray:
            loads.append(key)
            return np.full(100, key, np.uint8)

        return load

    for key in (1, 2, 3):
        cache.get(key, loader(key))
    cache.get(1, loader(1))  # 1 becomes the most recent
    cache.get(4, loader(4))  # evicts 2, the least recent
    assert loads == [1, 2, 3, 4]
    cache.get(1, loader(1))
    cache.get(3, loader(3))
    assert loads == [1, 2, 3, 4]
    cache.get(2, loader(2))
    assert loads == [1, 2, 3, 4, 2]


def test_oversized_values_are_returned_not_kept() -> None:
    cache = TileCache(max_bytes=10)
    loads = []
    for _ in range(2):
        value = cache.get("big", lambda: loads.append(1) or np.zeros(11, np.uint8))
        assert value.nbytes == 11
    assert len(loads) == 2


def test_cached_reads_equal_the_image_from_many_threads(tmp_path: Path) -> None:
    path = write_pyramid(tmp_path / "p.tif", width=1000, height=700, levels=2, tile=128)
    image = gradient_image(1000, 700)
    rng = np.random.default_rng(0)
    windows = [(int(rng.integers(-50, 990)), int(rng.integers(-50, 690)), int(rng.integers(1, 300)),
                int(rng.integers(1, 300))) for _ in range(200)]

    def expected(x: int, y: int, w: int, h: int) -> np.ndarray:
        out = np.full((h, w, 3), 255, np.uint8)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, 1000), min(y + h, 700)
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = image[y0:y1, x0:x1]
        return out

    with open_slide(path, backend="tifffile") as slide:
        def check(window: tuple[int, int, int, int]) -> bool:
            x, y, w, h = window
            return np.array_equal(slide.read_region((x, y), 0, (w, h)), expected(x, y, w, h))

        with ThreadPoolExecutor(8) as pool:
            assert all(pool.map(check, windows + windows))
        whole = slide.read_region((0, 0), 0, (1000, 700))  # more tiles than the cache path takes
        assert np.array_equal(whole, image)
