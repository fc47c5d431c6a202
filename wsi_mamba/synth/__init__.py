"""Writing synthetic slides and CAMELYON16-style cohorts (``wsi_mamba.slide`` reads them).

``procedural`` (H&E-like pixels from a seed) and ``cohort`` (its cohort planner and writer); ``from_patches``
(real-tissue slides mosaicked from labelled patches: planned by ``patch_plan`` from a ``CohortSpec``, with
``geometry``, ``lesions`` and ``appearance``, drawn by ``patch_pixels``); ``writer`` (pyramidal TIFF/SVS, tile
by tile) and ``layout`` (folders, lesion XML, labels CSVs) serve both. Each cohort's ``lesion_annotations``
reads its own slide description.
"""

from .cohort import plan_cohort, write_cohort
from .from_patches import MANIFEST, write_patch_cohort
from .lesions import CLASSES
from .patch_plan import CohortSpec, plan_patch_cohort
from .procedural import make_spec
from .writer import write_slide

__all__ = [
    "CLASSES",
    "MANIFEST",
    "CohortSpec",
    "make_spec",
    "plan_cohort",
    "plan_patch_cohort",
    "write_cohort",
    "write_patch_cohort",
    "write_slide",
]
