"""A synthetic CAMELYON16-style cohort: H&E-like pyramidal TIFFs generated tile by tile.

Pixels come from ``procedural.render``, a seeded function of level-0 position, so slides of any size are
written tile by tile (tifffile takes a generator of tiles) without holding the image in memory, and the
same seed gives the same files. Tumor slides carry metastases with ASAP XML annotations of the lesions.
"""

from __future__ import annotations

import csv
import math
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import tifffile

from ..outputs.atomic import atomic_path
from .annotations import Annotations, Polygon, write_asap_xml
from .procedural import MPP, Lesion, SlideSpec, make_spec, render

__all__ = [
    "MPP",
    "CohortSlide",
    "Lesion",
    "Renderer",
    "SlideLike",
    "SlideSpec",
    "lesion_annotations",
    "make_spec",
    "plan_cohort",
    "render",
    "slide_layout",
    "tile_count",
    "write_cohort",
    "write_slide",
]

APP_MAG = 40  # at MPP; other resolutions get the objective power in proportion (0.972 µm/px: 10x)
TILE = 256
FLAVOURS = ("svs", "tiff")
COMPRESSIONS = {"jpeg": "jpeg", "lossless": "zlib"}


class SlideLike(Protocol):
    """What the writer needs of a slide description (``SlideSpec`` or another generator's)."""

    width: int
    height: int
    mpp: float
    seed: int


Renderer = Callable[[SlideLike, float, float, int, int, float], np.ndarray]
"""``render(spec, x0, y0, width, height, downsample)`` → (height, width, 3) uint8, as :func:`render`."""


# ---- writing -----------------------------------------------------------------------------------


def _levels(width: int, height: int, factor: int) -> list[tuple[int, int, int]]:
    """(w, h, downsample) per level, down to a level whose longer side is ≤ 256 px."""
    levels = [(width, height, 1)]
    while max(levels[-1][:2]) > 256:
        ds = levels[-1][2] * factor
        levels.append((max(1, width // ds), max(1, height // ds), ds))
    return levels


def _tiles(
    spec: SlideLike, width: int, height: int, ds: int, tick: Callable[[], None] | None, renderer: Renderer = render
) -> Iterator[np.ndarray]:
    """Tiles of one level in row-major order, rendered on a few threads with a bounded look-ahead."""
    origins = ((tx * ds, ty * ds) for ty in range(0, height, TILE) for tx in range(0, width, TILE))
    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        pending: deque[Future[np.ndarray]] = deque()
        for x, y in origins:
            pending.append(pool.submit(renderer, spec, x, y, TILE, TILE, ds))
            if len(pending) >= 2 * workers:
                yield _done(pending.popleft(), tick)
        while pending:
            yield _done(pending.popleft(), tick)


def _done(future: Future[np.ndarray], tick: Callable[[], None] | None) -> np.ndarray:
    """The future's tile, counted before it is handed on (the consumer may stop after the last one)."""
    tile = future.result()
    if tick is not None:
        tick()
    return tile


def tile_count(width: int, height: int, flavour: str) -> int:
    """Tiles written for a slide of this size (for progress bars)."""
    return sum(
        math.ceil(w / TILE) * math.ceil(h / TILE)
        for w, h, _ in _levels(width, height, 4 if flavour == "svs" else 2)
    )


def write_slide(
    spec: SlideLike,
    path: str | os.PathLike[str],
    flavour: str = "tiff",
    quality: int = 85,
    tick: Callable[[], None] | None = None,
    renderer: Renderer = render,
    compression: str = "jpeg",
) -> Path:
    """Write ``spec`` as a JPEG-tiled pyramidal TIFF: flavour "svs" (Aperio layout and description, 4×
    levels, thumbnail/label/macro) or "tiff" (generic, resolution tags, 2× levels). Atomic (temp + rename).
    ``renderer`` gives the pixels (default: the procedural :func:`render`); ``compression="lossless"``
    writes deflate tiles instead of JPEG."""
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {FLAVOURS}, got {flavour!r}")
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {tuple(COMPRESSIONS)}, got {compression!r}")
    path = Path(path)
    w0, h0 = spec.width, spec.height
    levels = _levels(w0, h0, 4 if flavour == "svs" else 2)
    common = dict(
        photometric="rgb",
        compression=COMPRESSIONS[compression],
        compressionargs={"level": quality if compression == "jpeg" else 6},
        metadata=None,
    )
    tiled = dict(common, tile=(TILE, TILE), dtype=np.uint8)
    if flavour == "tiff":
        res = 1e4 / spec.mpp
        tiled.update(resolution=(res, res), resolutionunit="CENTIMETER")
    header = "Aperio Image Library v12.0.15"
    bigtiff = w0 * h0 * 3 > 2**31
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tw:
        for index, (w, h, ds) in enumerate(levels):
            if flavour == "svs":
                description = (
                    f"{header}\r\n{w0}x{h0} [0,0 {w0}x{h0}] ({TILE}x{TILE}) JPEG/RGB Q={quality}"
                    f"|AppMag = {max(1, round(APP_MAG * MPP / spec.mpp))}|MPP = {spec.mpp}"
                    if index == 0
                    else f"{header}\r\n{w0}x{h0} -> {w}x{h}"
                )
                subfiletype = 0
            else:
                description, subfiletype = None, (1 if index else 0)
            tw.write(
                _tiles(spec, w, h, ds, tick, renderer),
                shape=(h, w, 3),
                description=description,
                subfiletype=subfiletype,
                **tiled,
            )
            if flavour == "svs" and index == 0:
                _write_thumbnail(tw, spec, header, common, renderer)
        if flavour == "svs":
            _write_label_macro(tw, spec, header, common, renderer)
    return path


def _write_thumbnail(
    tw: tifffile.TiffWriter, spec: SlideLike, header: str, common: dict, renderer: Renderer = render
) -> None:
    ds = max(spec.width, spec.height) / 768
    w, h = max(1, round(spec.width / ds)), max(1, round(spec.height / ds))
    tw.write(
        renderer(spec, 0, 0, w, h, ds),
        description=f"{header}\r\n{spec.width}x{spec.height} -> {w}x{h}",
        rowsperstrip=16,
        **common,
    )


def _write_label_macro(
    tw: tifffile.TiffWriter, spec: SlideLike, header: str, common: dict, renderer: Renderer = render
) -> None:
    rng = np.random.default_rng(spec.seed)
    label = np.full((300, 300, 3), 250, np.uint8)
    label[40:260, 40:260] = np.where(rng.random((220, 1, 1)) < 0.5, 20, 250).astype(np.uint8)  # a barcode
    tw.write(
        label,
        description=f"{header}\r\nlabel 300x300",
        subfiletype=1,
        rowsperstrip=64,
        photometric="rgb",
        compression="lzw",
        metadata=None,
    )
    ds = max(spec.width, spec.height) / 600
    macro = np.full((400, 1000, 3), 240, np.uint8)
    w, h = min(600, round(spec.width / ds)), min(400, round(spec.height / ds))
    macro[:h, 380 : 380 + w] = renderer(spec, 0, 0, w, h, ds)
    macro[:, :300] = 230
    tw.write(macro, description=f"{header}\r\nmacro 1000x400", subfiletype=9, rowsperstrip=16, **common)


def lesion_annotations(spec: SlideSpec) -> Annotations:
    """The lesions of a synthetic slide as ASAP-style annotations (group "Tumor")."""
    return Annotations(
        lesions=[
            Polygon(lesion.polygon(), f"Annotation {i}", "Tumor") for i, lesion in enumerate(spec.lesions)
        ]
    )


@dataclass
class CohortSlide:
    """One planned slide of a cohort."""

    split: str  # training | testing
    name: str
    path: Path
    spec: SlideSpec
    flavour: str


def slide_layout(
    out: str | os.PathLike[str], slides: int, test_fraction: float | None = None
) -> list[tuple[str, str, Path, bool]]:
    """CAMELYON16 layout as (split, name, path, tumor) per slide: the last ``test_fraction`` of the slides
    (default a third, rounded down) go to testing/images, the rest to training/normal and training/tumor;
    normal and tumor alternate (odd indices are tumor)."""
    out = Path(out)
    if test_fraction is not None and not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    n_test = slides // 3 if test_fraction is None else round(slides * test_fraction)
    layout = []
    counters = {"normal": 0, "tumor": 0, "test": 0}
    for index in range(slides):
        tumor = index % 2 == 1
        if index >= slides - n_test:
            counters["test"] += 1
            name = f"test_{counters['test']:03d}"
            layout.append(("testing", name, out / "testing" / "images" / f"{name}.tif", tumor))
        else:
            group = "tumor" if tumor else "normal"
            counters[group] += 1
            name = f"{group}_{counters[group]:03d}"
            layout.append(("training", name, out / "training" / group / f"{name}.tif", tumor))
    return layout


def plan_cohort(
    out: str | os.PathLike[str],
    slides: int,
    seed: int = 0,
    size: int = 8192,
    flavour: str = "mixed",
    test_fraction: float | None = None,
) -> list[CohortSlide]:
    """CAMELYON16 layout: the last ``test_fraction`` of the slides (default a third, rounded down) go to
    testing/, the rest to training/normal and training/tumor; normal and tumor alternate."""
    plan = []
    rng = np.random.default_rng(seed)
    for index, (split, name, path, tumor) in enumerate(slide_layout(out, slides, test_fraction)):
        height = int(size * rng.uniform(0.7, 1.0)) // 16 * 16
        spec = make_spec(seed, index, size, max(height, 16), tumor)
        kind = flavour if flavour != "mixed" else FLAVOURS[index % 2 if index < 2 else int(rng.integers(2))]
        plan.append(CohortSlide(split, name, path, spec, kind))
    return plan


def write_cohort(
    out: str | os.PathLike[str],
    slides: int,
    seed: int = 0,
    size: int = 8192,
    flavour: str = "mixed",
    tick: Callable[[], None] | None = None,
    test_fraction: float | None = None,
) -> list[CohortSlide]:
    """Write a synthetic cohort under ``out`` (CAMELYON16 layout, labels CSVs, lesion XML). Resumable:
    slides already there are kept (files are written atomically, and the same seed gives the same pixels)."""
    plan = plan_cohort(out, slides, seed, size, flavour, test_fraction)
    for item in plan:
        item.path.parent.mkdir(parents=True, exist_ok=True)
        if item.path.exists():
            for _ in range(tile_count(item.spec.width, item.spec.height, item.flavour) if tick else 0):
                tick()  # type: ignore[misc]
        else:
            write_slide(item.spec, item.path, item.flavour, tick=tick)
        if item.spec.lesions:
            xml = item.path.parents[1] / "lesion_annotations" / f"{item.name}.xml"
            xml.parent.mkdir(parents=True, exist_ok=True)
            write_asap_xml(lesion_annotations(item.spec), xml)
    _write_csvs(Path(out), plan)
    return plan


def _write_csvs(out: Path, plan: list[CohortSlide]) -> None:
    columns = [
        "image",
        "label",
        "metastasis",
        "lesions",
        "largest_lesion_um",
        "width",
        "height",
        "mpp",
        "flavour",
    ]
    for split, filename in (("training", "labels.csv"), ("testing", "reference.csv")):
        rows = [item for item in plan if item.split == split]
        if not rows:
            continue
        (out / split).mkdir(parents=True, exist_ok=True)
        # atomic: labels.csv is a recipe's `creates` marker, and a cut-off file would lose slides
        with atomic_path(out / split / filename) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            for item in rows:
                s = item.spec
                largest = max((lesion.diameter_um for lesion in s.lesions), default=0.0)
                writer.writerow(
                    [
                        item.name,
                        s.label,
                        s.metastasis.capitalize() if s.lesions else "None",
                        len(s.lesions),
                        f"{largest:.1f}",
                        s.width,
                        s.height,
                        s.mpp,
                        item.flavour,
                    ]
                )
