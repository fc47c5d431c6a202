"""Labelled patch data (folders, PCam HDF5, CSV) and histology augmentations; knows nothing of slides."""

from .patches import PCAM_GEOMETRY, PatchGeometry, PatchReadError, PatchSource, open_patches

__all__ = ["PCAM_GEOMETRY", "PatchGeometry", "PatchReadError", "PatchSource", "open_patches"]
