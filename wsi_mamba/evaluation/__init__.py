"""Evaluation: slide-level AUC (bootstrap interval, Youden threshold), ROC plots, the CAMELYON16
lesion-level FROC, and the colour-statistics baseline. Pure numpy / scikit-learn / matplotlib.

The names below are imported from their submodules on first use (PEP 562), so that importing one submodule
(``predict`` needs only ``colour.tile_colour_stats``) does not bring in scikit-learn, scipy and matplotlib.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .colour import (
        COLOUR_STATS,
        baseline_predict,
        baseline_to_json,
        fit_colour_baseline,
        slide_colour_vector,
        tile_colour_stats,
    )
    from .delong import DeLongResult, delong_covariance, delong_test, paired_permutation_p
    from .lesion_froc import (
        TARGET_FP_RATES,
        DetectionMatch,
        FrocResult,
        SlideDetections,
        froc,
        match_detections,
        sensitivity_at,
        tile_detections,
    )
    from .metrics import accuracy_at, bootstrap_auc_ci, slide_auc, summarize, youden_threshold
    from .roc_plot import write_roc_panels, write_roc_png

_SOURCES = {
    "colour": (
        "COLOUR_STATS",
        "fit_colour_baseline",
        "baseline_predict",
        "baseline_to_json",
        "slide_colour_vector",
        "tile_colour_stats",
    ),
    "lesion_froc": (
        "TARGET_FP_RATES",
        "DetectionMatch",
        "FrocResult",
        "SlideDetections",
        "froc",
        "match_detections",
        "paired_permutation_p",
        "sensitivity_at",
        "tile_detections",
    ),
    "metrics": ("accuracy_at", "bootstrap_auc_ci", "slide_auc", "summarize", "youden_threshold"),
    "delong": ("DeLongResult", "delong_covariance", "delong_test", "paired_permutation_p"),
    "roc_plot": ("write_roc_png", "write_roc_panels"),
}
_MODULE_OF = {name: module for module, names in _SOURCES.items() for name in names}


# No submodule may share a name with a function it exports: importing the submodule would bind the package
# attribute to the module (hence ``lesion_froc`` for ``froc``).


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "COLOUR_STATS",
    "TARGET_FP_RATES",
    "DeLongResult",
    "DetectionMatch",
    "FrocResult",
    "SlideDetections",
    "accuracy_at",
    "baseline_predict",
    "baseline_to_json",
    "bootstrap_auc_ci",
    "delong_covariance",
    "delong_test",
    "fit_colour_baseline",
    "froc",
    "match_detections",
    "paired_permutation_p",
    "sensitivity_at",
    "slide_auc",
    "slide_colour_vector",
    "summarize",
    "tile_colour_stats",
    "tile_detections",
    "write_roc_panels",
    "write_roc_png",
    "youden_threshold",
]
