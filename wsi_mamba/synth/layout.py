"""The CAMELYON16 cohort layout both generators write: slide paths, lesion XML, labels.csv / reference.csv."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..outputs.atomic import write_csv_atomic
from ..slide.annotations import Annotations, Polygon, write_asap_xml

__all__ = [
    "LABEL_COLUMNS",
    "LabelledSpec",
    "label_row",
    "slide_layout",
    "tumour_annotations",
    "write_label_csvs",
    "write_lesion_xml",
]

LABEL_COLUMNS = ("image", "label", "metastasis", "lesions", "largest_lesion_um", "width", "height", "mpp", "flavour")
"""The columns of labels.csv / reference.csv common to both generators (a generator may append its own)."""
SPLIT_FILES = (("training", "labels.csv"), ("testing", "reference.csv"))


class _Lesion(Protocol):
    @property
    def diameter_um(self) -> float: ...


class LabelledSpec(Protocol):
    """What :func:`label_row` reads of a slide description."""

    width: int
    height: int
    mpp: float

    @property
    def lesions(self) -> Sequence[_Lesion]: ...

    @property
    def label(self) -> str: ...

    @property
    def metastasis(self) -> str: ...


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


def tumour_annotations(polygons: Iterable[np.ndarray]) -> Annotations:
    """Lesion outlines (level-0 px) as ASAP-style annotations: "Annotation i", group "Tumor"."""
    return Annotations(lesions=[Polygon(p, f"Annotation {i}", "Tumor") for i, p in enumerate(polygons)])


def write_lesion_xml(slide: Path, annotations: Annotations) -> Path | None:
    """``lesion_annotations/NAME.xml`` beside the slide's folder, written atomically; None (nothing written)
    for a slide without lesions."""
    if not annotations.lesions:
        return None
    xml = slide.parents[1] / "lesion_annotations" / f"{slide.stem}.xml"
    xml.parent.mkdir(parents=True, exist_ok=True)
    write_asap_xml(annotations, xml)
    return xml


def label_row(name: str, spec: LabelledSpec, flavour: str) -> list[Any]:
    """A slide's values for :data:`LABEL_COLUMNS`."""
    largest = max((lesion.diameter_um for lesion in spec.lesions), default=0.0)
    metastasis = spec.metastasis.capitalize() if spec.lesions else "None"
    size = [spec.width, spec.height, spec.mpp]
    return [name, spec.label, metastasis, len(spec.lesions), f"{largest:.1f}", *size, flavour]


def write_label_csvs(out: Path, columns: Sequence[str], rows: Iterable[tuple[str, Sequence[Any]]]) -> None:
    """training/labels.csv and testing/reference.csv from (split, row) pairs, atomically (labels.csv is a
    recipe's ``creates`` marker: a cut-off file would lose slides); a split without slides gets no file."""
    rows = list(rows)
    for split, filename in SPLIT_FILES:
        selected = [row for row_split, row in rows if row_split == split]
        if selected:
            (out / split).mkdir(parents=True, exist_ok=True)
            write_csv_atomic(out / split / filename, columns, selected)
