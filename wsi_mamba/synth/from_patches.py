"""Real-tissue slides: CAMELYON16-style cohorts whose every tissue cell is a real labelled patch.

A slide is a grid of ``px`` × ``px`` cells aligned to its origin (so a tile grid at the patches' mpp with
tile = px lands exactly on the cells). A lymph-node-shaped section (one or two irregular ovals with a smooth
random outline, soft-edged) lies on a light-grey glass background with mild noise; each tissue cell holds a
normal patch of the source under a random dihedral transform (boundary cells are cut by the outline). Tumour
slides carry 1–3 lesions made of tumour patches, in CAMELYON16's size classes by longest diameter: macro
(≥ 2 mm), micro (0.2–2 mm) and isolated tumour cells (ITC, < 0.2 mm: one or two patches); the slide's class
is its largest lesion's, and classes are balanced (seeded) over each split's tumour slides. One ASAP XML
polygon per lesion traces its cells (convex corners cut by a quarter cell). A per-slide stain shift in HED
space (a centre effect) applies to all the slide's tissue.

Slides differ in tissue composition as real nodes do (fatty, sparse or densely cellular): the normal patches
are sorted into appearance bins by their mean optical density, and each slide draws its normal tissue from a
slide-specific Dirichlet mix of the bins (``composition`` is the concentration: smaller, more varied slides;
0 draws every slide uniformly from the pool, which makes every normal slide's mean colour nearly the same and
lets a colour-statistics baseline read tumour area off the mean colour).

Everything but the pixels is planned first from the seed and the source's labels (cheap), so an
interrupted cohort resumes with the same plan; files are written by the procedural generator's writer
(``wsi_mamba.synth.writer.write_slide``: pyramidal TIFF/SVS, atomic) at the patches' mpp.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..data.patches import PatchSource, open_patches
from ..outputs.atomic import write_text_atomic
from ..slide.annotations import Annotations, write_asap_xml
from .appearance import DEFAULT_COMPOSITION, normal_tissue
from .layout import (
    LABEL_COLUMNS,
    check_cohort_output,
    claim_cohort_output,
    label_row,
    tumor_annotations,
    write_label_csvs,
    write_lesion_xml,
)
from .level_pyramid import LevelPyramid
from .patch_pixels import render_patch_slide
from .patch_plan import CohortSpec, PatchCohortPlan, PatchCohortSlide, PatchSlideSpec, plan_patch_cohort, plan_slide
from .patch_tiles import IN_MEMORY_PIXELS, PatchTileRenderer
from .writer import Renderer, write_slide

__all__ = [
    "CAMELYON_CELLS",
    "MANIFEST",
    "lesion_annotations",
    "write_patch_cohort",
    "write_patch_slide",
    "write_planned_cohort",
]

MANIFEST = "patches_used.txt"
CAMELYON_CELLS = (240, 520)  # rows, cols of 96 px cells: 49,920 x 23,040 px at 10x (0.972 µm/px), CAMELYON16's size


def lesion_annotations(spec: PatchSlideSpec) -> Annotations:
    """The lesions of a real-tissue slide as ASAP-style annotations (group "Tumor")."""
    return tumor_annotations(lesion.polygon for lesion in spec.lesions)


def _relative_id(patch_id: str, root: Path | None) -> str:
    if root is not None:
        try:
            return Path(patch_id).resolve().relative_to(root).as_posix()
        except ValueError:
            pass
    return patch_id


def _write_manifest(out: Path, source: PatchSource, plan: list[PatchCohortSlide], root: Path | None) -> None:
    """``patches_used.txt``: every patch the cohort shows, as id (relative to the source folder), label and
    the SHA-1 of its pixels (so cohorts from different folders can be checked for shared patches)."""
    used = np.unique(np.concatenate([item.spec.patches for item in plan]))
    lines = [f"# patches of {root or source.description} used by this cohort: id, label, SHA-1 of the RGB pixels"]
    rows = []
    for start in range(0, len(used), 512):
        block = used[start : start + 512]
        for index, pixels in zip(block, source.read(block), strict=True):
            digest = hashlib.sha1(np.ascontiguousarray(pixels).tobytes()).hexdigest()
            rows.append(f"{_relative_id(source.patch_id(int(index)), root)}\t{int(source.labels[index])}\t{digest}")
    write_text_atomic(out / MANIFEST, "\n".join(lines + sorted(rows)) + "\n")


def _write_csvs(out: Path, plan: list[PatchCohortSlide]) -> None:
    """labels.csv / reference.csv: the procedural cohort's columns plus lesion_class and tile counts."""
    columns = (*LABEL_COLUMNS, "lesion_class", "tissue_tiles", "tumor_tiles")
    rows = []
    for item in plan:
        s = item.spec
        extra = [s.metastasis, len(s.cells), int(s.tumor.sum())]
        rows.append((item.split, [*label_row(item.name, s, item.flavour), *extra]))
    write_label_csvs(out, columns, rows)


def slide_renderer(spec: PatchSlideSpec, source: PatchSource, factor: int) -> tuple[Renderer, str]:
    """The pixels of a planned slide for ``write_slide`` (``factor``: the flavour's level factor) and its
    ``pyramid`` argument: drawn whole in memory when level 0 is small and at the patches' resolution (as cohorts
    always were), else tile by tile (:class:`~wsi_mamba.synth.patch_tiles.PatchTileRenderer`: large or upsampled
    slides, bounded memory), the levels down to the patches' own resolution drawn (so they keep its pixels) and
    the coarser ones averaged from them (drawing each would read and stain every patch again)."""
    if spec.upsample == 1 and spec.width * spec.height <= IN_MEMORY_PIXELS:
        return LevelPyramid(render_patch_slide(spec, source), factor, spec.background), "render"
    return PatchTileRenderer(spec, source, factor), "downsample"


def _write(
    spec: PatchSlideSpec,
    source: PatchSource,
    path: Path,
    flavour: str,
    compression: str = "jpeg",
    tick: Callable[[], None] | None = None,
) -> None:
    """``write_slide`` with :func:`slide_renderer`'s pixels."""
    renderer, pyramid = slide_renderer(spec, source, 4 if flavour == "svs" else 2)
    write_slide(
        spec, path, flavour, tick=tick, renderer=renderer, compression=compression, pyramid=pyramid, drawn=spec.upsample
    )


def write_patch_slide(
    path: str | os.PathLike[str],
    patches: str | os.PathLike[str] | PatchSource,
    shape: tuple[int, int] = CAMELYON_CELLS,
    lesion: str = "micro",
    seed: int = 0,
    upsample: int = 1,
    flavour: str = "tiff",
    tick: Callable[[], None] | None = None,
) -> PatchSlideSpec:
    """Write one real-tissue slide of ``shape`` (rows, cols of cells; default CAMELYON16's size) to ``path``,
    its lesions' ASAP XML beside it (same name, ``.xml``; none for a normal slide): tumour slide 1 of cohort
    seed ``seed`` whose largest lesion is ``lesion`` (macro | micro | itc | none), level 0 at ``upsample``
    times the patches' magnification. Memory stays bounded whatever the size; ``tick`` is called once per
    tile written. Returns the slide's plan."""
    source = patches if isinstance(patches, PatchSource) else open_patches(Path(patches))
    labels = np.asarray(source.labels)
    normal = normal_tissue(source, np.flatnonzero(labels == 0), DEFAULT_COMPOSITION, seed)
    geometry = source.geometry
    tumor = np.flatnonzero(labels == 1)
    spec = plan_slide(seed, 1, lesion, normal, tumor, geometry.px, geometry.mpp, upsample=upsample, shape=shape)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write(spec, source, path, flavour, tick=tick)
    annotations = lesion_annotations(spec)
    if annotations.lesions:
        write_asap_xml(annotations, path.with_suffix(".xml"))
    return spec


def write_patch_cohort(
    out: str | os.PathLike[str],
    patches: str | os.PathLike[str] | PatchSource,
    spec: CohortSpec = CohortSpec(),  # noqa: B008 (frozen)
    tick: Callable[[], None] | None = None,
    overwrite: bool = False,
) -> PatchCohortPlan:
    """Write a real-tissue cohort of ``spec`` under ``out`` from the labelled patches ``patches`` (a folder or
    anything ``open_patches`` takes): slides (CAMELYON16 layout), lesion XML, labels.csv / reference.csv and
    ``patches_used.txt``. Resumable: slides already there are kept (same seed, same plan, same pixels). A
    cohort of another spec (:meth:`CohortSpec.record`, in ``synth.json``) already in ``out`` is refused
    (``ValueError``, before the patches are read), or with ``overwrite`` replaced whole. ``tick`` is called
    once per slide. Plan first with :func:`plan_patch_cohort` and :func:`write_planned_cohort` to see input
    errors before writing."""
    if isinstance(patches, PatchSource):
        source, root = patches, Path(patches.description)
    else:
        source, root = open_patches(Path(patches)), Path(patches)
    check_cohort_output(Path(out), spec.record(source), overwrite)  # a refusal comes before the patches are read
    return write_planned_cohort(plan_patch_cohort(out, source, spec), tick, overwrite, root)


def write_planned_cohort(
    plan: PatchCohortPlan,
    tick: Callable[[], None] | None = None,
    overwrite: bool = False,
    root: Path | None = None,
) -> PatchCohortPlan:
    """Write the cohort ``plan`` describes (as :func:`write_patch_cohort`); ``root`` is the folder the manifest's
    patch ids are relative to (default: the source's folder)."""
    source, out = plan.source, plan.out
    root = Path(source.description) if root is None else root
    root = root.resolve() if root.is_dir() else None
    claim_cohort_output(out, plan.spec.record(source), overwrite)
    for item in plan:
        item.path.parent.mkdir(parents=True, exist_ok=True)
        if not item.path.exists():
            _write(item.spec, source, item.path, item.flavour, compression=plan.spec.compression)
        write_lesion_xml(item.path, lesion_annotations(item.spec))
        if tick is not None:
            tick()
    out.mkdir(parents=True, exist_ok=True)
    _write_csvs(out, plan.slides)
    _write_manifest(out, source, plan.slides, root)
    return plan
