"""The slide model's operating threshold, chosen on validation slides for a target specificity, and the
sensitivity / specificity at a model's threshold on any labelled scores.

The rule (:func:`specificity_threshold`): with the validation normal slides' probabilities sorted,
``s₁ ≤ … ≤ sₙ``, at most ``m = ⌊(1 − target) · n⌋`` of them may score ``≥ t`` (a slide is called tumour
when its probability is ``≥ t``). The lowest such ``t`` lies just above ``s₍ₙ₋ₘ₎``; the threshold is
midway between ``s₍ₙ₋ₘ₎`` and the next higher distinct normal score (1.0 when there is none), so ties
never straddle it and it keeps a margin above the highest normal score it must clear. Only validation
slides are ever used (never the evaluation cohort). Without validation slides, or without a normal one
among them, the threshold falls back to 0.5 with a warning, and ``model.json`` says so.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "FALLBACK_THRESHOLD",
    "OperatingPoint",
    "choose_operating_point",
    "rates_at",
    "specificity_threshold",
    "threshold_line",
    "threshold_report",
]

FALLBACK_THRESHOLD = 0.5


def specificity_threshold(normal_scores: Sequence[float], target_specificity: float) -> float:
    """The threshold of the module's rule for the probabilities of the normal slides (at least one) and a
    target specificity in (0, 1]; clipped to 1.0 (a normal slide scored 1.0 cannot be cleared)."""
    scores = np.sort(np.asarray(normal_scores, dtype=np.float64))
    if scores.ndim != 1 or not len(scores) or not np.isfinite(scores).all():
        raise ValueError("specificity_threshold needs at least one finite normal-slide score")
    if not 0.0 < target_specificity <= 1.0:
        raise ValueError(f"target specificity must be in (0, 1], got {target_specificity}")
    count = len(scores)
    allowed = math.floor((1.0 - target_specificity) * count + 1e-9)  # normal slides that may score >= t
    below = scores[count - allowed - 1]  # t must be above this one
    higher = scores[scores > below]
    upper = float(higher[0]) if len(higher) else 1.0
    threshold = (below + upper) / 2
    if not threshold > below:  # adjacent floats, or below == 1.0
        threshold = float(np.nextafter(below, np.inf))
    return float(min(threshold, 1.0))


def rates_at(labels: Sequence[int], scores: Sequence[float], threshold: float) -> tuple[float | None, float | None]:
    """(sensitivity, specificity) of ``score >= threshold`` meaning tumour; None for a class with no slide."""
    y = np.asarray(labels, dtype=np.int64)
    called = np.asarray(scores, dtype=np.float64) >= threshold
    sensitivity = float(called[y == 1].mean()) if (y == 1).any() else None
    specificity = float((~called[y == 0]).mean()) if (y == 0).any() else None
    return sensitivity, specificity


@dataclass(frozen=True)
class OperatingPoint:
    """A model's threshold and how it was chosen (``model.json``'s ``threshold`` and ``threshold_rule``)."""

    threshold: float
    target_specificity: float
    chosen_on: str
    validation_specificity: float | None
    validation_sensitivity: float | None

    def to_meta(self) -> dict:
        """``{"threshold": t, "threshold_rule": {...}}`` for ``model.json``."""
        return {
            "threshold": self.threshold,
            "threshold_rule": {
                "target_specificity": self.target_specificity,
                "chosen_on": self.chosen_on,
                "validation_specificity": self.validation_specificity,
                "validation_sensitivity": self.validation_sensitivity,
            },
        }


def choose_operating_point(
    scores: Sequence[float],
    labels: Sequence[int],
    target_specificity: float = 0.95,
    slides: str = "validation slides",
) -> OperatingPoint:
    """The threshold of :func:`specificity_threshold` on the normal slides among ``scores`` / ``labels``
    (slide probabilities of ``slides``, a description used in ``chosen_on``), with the sensitivity and
    specificity it gives there; 0.5 with a warning when there is no normal slide to choose on."""
    labels = [int(v) for v in labels]
    normals = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    if normals:
        threshold = specificity_threshold(normals, target_specificity)
        chosen_on = f"{len(labels)} {slides} ({len(normals)} normal)"
    else:
        reason = f"no {slides}" if not labels else f"no normal slide among the {len(labels)} {slides}"
        warnings.warn(
            f"{reason}: the threshold cannot be chosen for specificity {target_specificity:g}; "
            f"using {FALLBACK_THRESHOLD}",
            stacklevel=2,
        )
        threshold, chosen_on = FALLBACK_THRESHOLD, f"fallback {FALLBACK_THRESHOLD}: {reason}"
    sensitivity, specificity = rates_at(labels, scores, threshold) if labels else (None, None)
    return OperatingPoint(threshold, target_specificity, chosen_on, specificity, sensitivity)


def threshold_report(labels: Sequence[int], scores: Sequence[float], threshold: float, rule: dict | None) -> dict:
    """Sensitivity and specificity at a model's ``threshold`` on labelled slide scores (an evaluation cohort),
    the counts behind them, and where the threshold comes from (``rule``: its ``threshold_rule``)."""
    y = np.asarray(labels, dtype=np.int64)
    called = np.asarray(scores, dtype=np.float64) >= threshold
    sensitivity, specificity = rates_at(labels, scores, threshold)
    return {
        "threshold": float(threshold),
        "sensitivity": sensitivity,
        "specificity": specificity,
        "tumour_called_tumour": f"{int(called[y == 1].sum())} of {int((y == 1).sum())}",
        "normal_called_tumour": f"{int(called[y == 0].sum())} of {int((y == 0).sum())}",
        "provenance": rule if rule else "not recorded in model.json (the default 0.5, not chosen on validation)",
    }


def threshold_line(report: dict) -> str:
    """One line for :func:`threshold_report`'s dict: the rates at the model's threshold and its provenance."""

    def rate(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    rule = report["provenance"]
    where = (
        f"chosen on {rule.get('chosen_on')} for specificity {rule.get('target_specificity')}"
        if isinstance(rule, dict)
        else rule
    )
    return (
        f"at the model's threshold {report['threshold']:.4f}: sensitivity {rate(report['sensitivity'])} "
        f"({report['tumour_called_tumour']} tumour slides called tumour), specificity "
        f"{rate(report['specificity'])} ({report['normal_called_tumour']} normal slides called tumour); "
        f"threshold {where}"
    )
