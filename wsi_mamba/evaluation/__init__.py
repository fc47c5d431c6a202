"""Evaluation: slide-level AUC (bootstrap interval, Youden threshold), ROC plots, the CAMELYON16
lesion-level FROC, and the colour-statistics baseline. Pure numpy / scikit-learn / matplotlib."""

from .colour import (
    COLOUR_STATS,
    fit_colour_baseline,
    predict_colour_baseline,
    slide_colour_vector,
    tile_colour_stats,
)
from .froc import (
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
from .roc_plot import write_roc_png

__all__ = [
    "COLOUR_STATS",
    "TARGET_FP_RATES",
    "DetectionMatch",
    "FrocResult",
    "SlideDetections",
    "accuracy_at",
    "bootstrap_auc_ci",
    "fit_colour_baseline",
    "froc",
    "match_detections",
    "predict_colour_baseline",
    "sensitivity_at",
    "slide_auc",
    "slide_colour_vector",
    "summarize",
    "tile_colour_stats",
    "tile_detections",
    "write_roc_png",
    "youden_threshold",
]
