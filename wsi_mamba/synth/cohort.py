"""A procedural CAMELYON16-style cohort: planned from a seed, written slide by slide with lesion XML and CSVs.

Tumor slides carry metastases (``procedural``) with ASAP XML annotations of the lesions; slides are written
by ``writer.write_slide``, so the same seed gives the same files and an interrupted cohort resumes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..slide.annotations import Annotations
from .layout import (
    LABEL_COLUMNS,
    claim_cohort_output,
    label_row,
    slide_layout,
    tumor_annotations,
    write_label_csvs,
    write_lesion_xml,
)
from .procedural import SlideSpec, make_spec
from .writer import FLAVOURS, tile_count, write_slide

__all__ = ["CohortSlide", "cohort_parameters", "lesion_annotations", "plan_cohort", "write_cohort"]


def lesion_annotations(spec: SlideSpec) -> Annotations:
    """The lesions of a synthetic slide as ASAP-style annotations (group "Tumor")."""
    return tumor_annotations(lesion.polygon() for lesion in spec.lesions)


@dataclass
class CohortSlide:
    """One planned slide of a cohort."""

    split: str  # training | testing
    name: str
    path: Path
    spec: SlideSpec
    flavour: str


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


def cohort_parameters(
    slides: int, seed: int = 0, size: int = 8192, flavour: str = "mixed", test_fraction: float | None = None
) -> dict:
    """What decides a procedural cohort's files, as its folder records them."""
    return {
        "generator": "procedural",
        "slides": slides,
        "seed": seed,
        "size": size,
        "flavour": flavour,
        "test_fraction": test_fraction,
    }


def write_cohort(
    out: str | os.PathLike[str],
    slides: int,
    seed: int = 0,
    size: int = 8192,
    flavour: str = "mixed",
    tick: Callable[[], None] | None = None,
    test_fraction: float | None = None,
    overwrite: bool = False,
) -> list[CohortSlide]:
    """Write a synthetic cohort under ``out`` (CAMELYON16 layout, labels CSVs, lesion XML). Resumable:
    slides already there are kept (files are written atomically, and the same seed gives the same pixels)
    when ``out`` records the same parameters (``synth.json``); a cohort of other parameters there is refused
    (``ValueError``), or with ``overwrite`` replaced whole (:func:`~.layout.claim_cohort_output`)."""
    plan = plan_cohort(out, slides, seed, size, flavour, test_fraction)
    claim_cohort_output(out, cohort_parameters(slides, seed, size, flavour, test_fraction), overwrite)
    for item in plan:
        item.path.parent.mkdir(parents=True, exist_ok=True)
        if item.path.exists():
            for _ in range(tile_count(item.spec.width, item.spec.height, item.flavour) if tick else 0):
                tick()  # type: ignore[misc]
        else:
            write_slide(item.spec, item.path, item.flavour, tick=tick)
        write_lesion_xml(item.path, lesion_annotations(item.spec))
    rows = ((item.split, label_row(item.name, item.spec, item.flavour)) for item in plan)
    write_label_csvs(Path(out), LABEL_COLUMNS, rows)
    return plan
