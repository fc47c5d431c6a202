"""Writing synthetic slides and CAMELYON16-style cohorts (``wsi_mamba.slide`` reads them).

``procedural`` (H&E-like pixels from a seed) and ``cohort`` (its cohort planner and writer); ``from_patches``
(real-tissue slides mosaicked from labelled patches); ``writer`` (pyramidal TIFF/SVS, tile by tile) and
``layout`` (folders, lesion XML, labels CSVs) serve both. Each module's ``lesion_annotations`` reads its own
slide description.
"""

from .cohort import plan_cohort, write_cohort
from .from_patches import CLASSES, MANIFEST, plan_patch_cohort, write_patch_cohort
from .procedural import make_spec
from .writer import write_slide

__all__ = [
    "CLASSES",
    "MANIFEST",
    "make_spec",
    "plan_cohort",
    "plan_patch_cohort",
    "write_cohort",
    "write_patch_cohort",
    "write_slide",
]
