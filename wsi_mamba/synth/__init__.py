"""Cohort generators built from real data: real-tissue slides mosaicked from labelled patches."""

from .from_patches import CLASSES, MANIFEST, lesion_annotations, plan_patch_cohort, write_patch_cohort

__all__ = ["CLASSES", "MANIFEST", "lesion_annotations", "plan_patch_cohort", "write_patch_cohort"]
