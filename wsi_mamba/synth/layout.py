"""The CAMELYON16 cohort layout both generators write: slide paths, lesion XML, labels.csv / reference.csv."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..outputs.artefact import ArtefactFormat
from ..outputs.atomic import write_csv_atomic
from ..slide.annotations import Annotations, Polygon, write_asap_xml

__all__ = [
    "LABEL_COLUMNS",
    "RECORD",
    "LabelledSpec",
    "check_cohort_output",
    "claim_cohort_output",
    "cohort_files",
    "label_row",
    "slide_layout",
    "tumor_annotations",
    "write_label_csvs",
    "write_lesion_xml",
]

LABEL_COLUMNS = ("image", "label", "metastasis", "lesions", "largest_lesion_um", "width", "height", "mpp", "flavour")
"""The columns of labels.csv / reference.csv common to both generators (a generator may append its own)."""
SPLIT_FILES = (("training", "labels.csv"), ("testing", "reference.csv"))
RECORD = "synth.json"
"""The generating parameters of the cohort in a folder: a rerun with others is refused unless it overwrites."""
RECORD_FORMAT = ArtefactFormat("wsi-mamba/synthetic-cohort", 1, kind="record")
COHORT_FILES = ("training/labels.csv", "testing/reference.csv", "patches_used.txt", RECORD)
NAMED_FILES = (  # folders of the layout and the names the generators give their files there
    ("training/normal", re.compile(r"normal_\d{3,}\.tif")),
    ("training/tumor", re.compile(r"tumor_\d{3,}\.tif")),
    ("testing/images", re.compile(r"test_\d{3,}\.tif")),
    ("training/lesion_annotations", re.compile(r"(normal|tumor)_\d{3,}\.xml")),
    ("testing/lesion_annotations", re.compile(r"test_\d{3,}\.xml")),
)


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


def tumor_annotations(polygons: Iterable[np.ndarray]) -> Annotations:
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


# ---- one cohort per folder -----------------------------------------------------------------------------


def cohort_files(out: str | os.PathLike[str]) -> list[Path]:
    """The files of a synthetic cohort under ``out`` (any seed, any size): slides and lesion XML named as the
    generators name them in the layout's folders, the labels CSVs, ``patches_used.txt`` and :data:`RECORD`."""
    out = Path(out)
    found = [out / name for name in COHORT_FILES if os.path.lexists(out / name)]
    for folder, pattern in NAMED_FILES:
        if (out / folder).is_dir():
            found += sorted(p for p in (out / folder).iterdir() if pattern.fullmatch(p.name) and not p.is_dir())
    return found


def _recorded(out: Path) -> dict[str, Any] | None:
    """The parameters :data:`RECORD` holds (None when it is missing or unreadable)."""
    try:
        meta = RECORD_FORMAT.read(out / RECORD)
    except ValueError:
        return None
    return {key: value for key, value in meta.items() if key not in RECORD_FORMAT.header()}


def check_cohort_output(out: str | os.PathLike[str], parameters: dict[str, Any], overwrite: bool = False) -> bool:
    """Whether ``out`` holds a cohort to replace before writing one of ``parameters`` (True only with
    ``overwrite``). A cohort of the same recorded parameters is resumed (False); one of other parameters, or
    whose parameters are not recorded, is refused (``ValueError``, one line, nothing changed) unless
    ``overwrite``: its slides would be kept beside the new labels, CSVs and annotations."""
    out = Path(out)
    files = cohort_files(out) if out.is_dir() else []
    if not files:
        return False
    if overwrite:
        return True
    recorded = _recorded(out)
    if recorded == parameters:
        return False
    if recorded is None:
        problem = f"holds a synthetic cohort ({len(files)} files) whose parameters are not recorded in {RECORD}"
    else:
        keys = sorted(set(recorded) | set(parameters))
        differ = [
            f"{key} {recorded.get(key)!r} -> {parameters.get(key)!r}"
            for key in keys
            if recorded.get(key) != parameters.get(key)
        ]
        problem = f"holds a synthetic cohort of other parameters ({', '.join(differ)})"
    raise ValueError(
        f"{out}: {problem}; writing into it would mix its slides with new labels: pass --overwrite to replace "
        "that cohort, or choose another folder (nothing was changed)"
    )


def claim_cohort_output(out: str | os.PathLike[str], parameters: dict[str, Any], overwrite: bool = False) -> None:
    """Make ``out`` the folder of a cohort of ``parameters``: refuse as :func:`check_cohort_output` does, remove
    the previous cohort's files when ``overwrite``, and record ``parameters`` (:data:`RECORD`, before any
    slide is written, so that an interrupted run resumes)."""
    out = Path(out)
    if check_cohort_output(out, parameters, overwrite):
        for path in cohort_files(out):
            path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    if _recorded(out) != parameters:
        RECORD_FORMAT.write(out / RECORD, parameters)
