"""Start-up: the ``predict`` path (CLI, workflows, the default model loaded) imports only what it uses.

scikit-learn, scipy.stats, matplotlib and dask.array belong to training, evaluation and the dask-array views;
``torch._dynamo`` (about a second) came in through building a model on the meta device. Checked in a fresh
interpreter, since this test process has imported everything already.
"""

from __future__ import annotations

import subprocess
import sys

NOT_ON_PREDICT_PATH = ("sklearn", "scipy.stats", "scipy.sparse", "matplotlib", "torch._dynamo", "dask.array")

SCRIPT = f"""
import sys
from wsi_mamba.cli import build_parser
from wsi_mamba.commands import workflows
from wsi_mamba.devices import resolve_device
from wsi_mamba.outputs import names
from wsi_mamba.workflows import bundle, inputs, predict
build_parser()
bundle.load_bundle(device=resolve_device("cpu"))
print(",".join(m for m in {NOT_ON_PREDICT_PATH!r} if m in sys.modules))
"""


def test_predict_path_imports_only_what_it_uses() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = done.stdout.strip()
    assert loaded == "", f"imported on the predict path: {loaded}"


def test_evaluation_names_still_import() -> None:
    """The lazy ``wsi_mamba.evaluation`` package still exports its names (loaded on first use)."""
    import wsi_mamba.evaluation as evaluation

    assert callable(evaluation.slide_auc) and callable(evaluation.write_roc_png)
    assert "tile_colour_stats" in dir(evaluation) and len(evaluation.COLOUR_STATS) == 10
