"""ROC curves as a PNG, drawn with matplotlib's object API (``Figure`` + Agg canvas).

pyplot is never imported and the global backend is never switched, so calling this from a notebook
leaves its inline/widget backend alone. The file is written under a temporary name in the same folder
and renamed into place, so a reader never sees a half-written PNG.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score, roc_curve

from .metrics import _check

Curve = tuple[np.ndarray | Sequence[float], np.ndarray | Sequence[float]]


def _draw_curves(axes, curves: Mapping[str, Curve], title: str) -> None:
    """One ROC curve per entry (legend "name (AUC 0.xxx)") and the chance diagonal on ``axes``."""
    for name, (labels, scores) in curves.items():
        y, s = _check(labels, scores)
        fpr, tpr, _ = roc_curve(y, s)
        auc = float(roc_auc_score(y, s))
        axes.plot(fpr, tpr, linewidth=1.8, label=f"{name} (AUC {auc:.3f})")
    axes.plot([0, 1], [0, 1], linestyle="--", linewidth=1.0, color="0.6", label="chance")
    axes.set_xlim(0.0, 1.0)
    axes.set_ylim(0.0, 1.0)
    axes.set_aspect("equal")
    axes.set_xlabel("False positive rate (1 - specificity)")
    axes.set_ylabel("True positive rate (sensitivity)")
    if title:
        axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize="small")


def _save_atomic(figure: Figure, path: Path) -> Path:
    """Write ``figure`` as a PNG under a temporary name beside ``path``, then rename it into place."""
    from ..outputs.atomic import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temp, open(temp, "wb") as stream:
        figure.savefig(stream, format="png")
    return path


def write_roc_png(curves: Mapping[str, Curve], path: str | PathLike[str], title: str = "") -> Path:
    """Draw one ROC curve per ``name -> (labels, scores)`` entry (legend "name (AUC 0.xxx)") and the
    chance diagonal; write the PNG atomically to ``path`` (parent folders are created). Returns ``path``."""
    if not curves:
        raise ValueError("no curves to draw")
    figure = Figure(figsize=(5.0, 5.0), dpi=120)
    FigureCanvasAgg(figure)
    _draw_curves(figure.add_subplot(), curves, title)
    figure.tight_layout()
    return _save_atomic(figure, Path(path))


def write_roc_panels(panels: Mapping[str, Mapping[str, Curve]], path: str | PathLike[str], title: str = "") -> Path:
    """One figure, one panel per ``panel title -> {name: (labels, scores)}`` side by side, the curves of a panel
    overlaid; written atomically to ``path``. Empty panels are left out. Returns ``path``."""
    panels = {k: v for k, v in panels.items() if v}
    if not panels:
        raise ValueError("no curves to draw")
    figure = Figure(figsize=(5.0 * len(panels), 5.4 if title else 5.0), dpi=120)
    FigureCanvasAgg(figure)
    for index, (panel_title, curves) in enumerate(panels.items(), start=1):
        _draw_curves(figure.add_subplot(1, len(panels), index), curves, panel_title)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return _save_atomic(figure, Path(path))
