"""The notebooks in notebooks/ are part of the product: each one is executed here, top to bottom, in a
fresh kernel of the interpreter running the tests, twice: on real tissue (PatchCamelyon in ../shared/data/pcam;
skipped with a reason when absent) and with that folder pointed at a missing one (the procedural fallback).
Any cell error fails the test. The committed notebooks carry their real-tissue outputs; a test checks that.

They need nbclient, nbformat and ipykernel (the ``dev`` extra): when those are missing the tests fail with
the install command instead of being skipped. Slides, scores and features are cached in notebooks/.cache
(git-ignored; ``WSI_MAMBA_NOTEBOOK_CACHE`` to put them elsewhere), so only the first run pays for them.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
EXPECTED = ("01-explore-a-slide", "02-cohort-auc", "03-heatmaps", "04-bring-your-own-encoder")
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
KERNEL = "python3"
TIMEOUT_S = 600  # per cell
PCAM = ROOT.parent / "shared" / "data" / "pcam"
CACHE = Path(os.environ.get("WSI_MAMBA_NOTEBOOK_CACHE", NOTEBOOK_DIR / ".cache")).absolute()
REAL_SOURCE = "data source: real tissue (PatchCamelyon valid)"
FALLBACK_SOURCE = "data source: procedural tissue"
# the model each notebook's saved outputs must name: the shipped real-tissue default, or the timm encoder
MODEL_NAMED = {"04-bring-your-own-encoder": "timm:resnet18"}
MAX_BYTES = 1_500_000
MODES = ("real", "fallback")
# Figures are drawn off-screen into the cell outputs, as in Jupyter. Not "Agg": under Agg plt.show() does
# nothing, figures are never drawn, and errors that only appear when drawing would pass unnoticed.
INLINE = "module://matplotlib_inline.backend_inline"


def _jupyter():
    """nbformat and nbclient, or a failure that says how to install them (never a silent skip)."""
    try:
        import ipykernel  # noqa: F401  (the kernel the notebooks run in)
        import nbformat
        from nbclient import NotebookClient
        from nbclient.exceptions import CellExecutionError
    except ImportError as exc:
        missing = str(exc)
    else:
        return nbformat, NotebookClient, CellExecutionError
    pytest.fail(
        f"executing the notebooks needs nbclient, nbformat and ipykernel ({missing}); "
        'install the dev extra: pip install -e ".[dev]"',
        pytrace=False,
    )


@pytest.fixture
def kernel_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Environment of the kernel the notebooks run in: the "python3" kernelspec points at this very
    interpreter (a kernelspec of that name elsewhere on the machine, e.g. in ~/.local/share/jupyter, would
    otherwise start another Python), matplotlib draws off-screen into the outputs, and the notebooks use
    their own slides (the data folder is set per test). Returns the working directory for the kernel."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"Python 3 ({sys.executable})",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))  # searched before every other location
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("MPLBACKEND", INLINE)
    monkeypatch.delenv("WSI_MAMBA_SLIDE", raising=False)
    monkeypatch.setenv("WSI_MAMBA_NOTEBOOK_CACHE", str(CACHE))
    workdir = tmp_path / "work"
    workdir.mkdir()
    return workdir


def _execute(nb, workdir: Path):
    _, NotebookClient, _ = _jupyter()
    client = NotebookClient(nb, timeout=TIMEOUT_S, kernel_name=KERNEL, resources={"metadata": {"path": str(workdir)}})
    return client.execute()


def test_all_notebooks_present() -> None:
    assert [p.stem for p in NOTEBOOKS] == list(EXPECTED), f"notebooks in {NOTEBOOK_DIR}"


def _texts(nb) -> str:
    """Everything the code cells printed or displayed as text."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            parts.append(out.get("text", ""))
            parts.append(out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_stored_with_real_tissue_outputs(path: Path) -> None:
    """Valid nbformat 4 for the python3 kernel, opening with a markdown cell that says what it costs, and stored
    with the outputs of a run on real tissue (every code cell run in order, no error, figures included)."""
    nbformat, _, _ = _jupyter()
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == KERNEL
    assert nb.cells and nb.cells[0].cell_type == "markdown", "a notebook opens with a markdown cell saying what it does"
    assert "on 2 cores" in nb.cells[0].source, f"{path.name}: the first cell says what it costs (N minutes on 2 cores)"
    assert path.stat().st_size < MAX_BYTES, f"{path.name}: {path.stat().st_size} bytes, keep it under {MAX_BYTES}"
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), (
        f"{path.name}: save it after one run top to bottom (Restart Kernel and Run All Cells)"
    )
    outputs = [out for cell in code for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"], f"{path.name}: saved with an error"
    assert any("image/png" in out.get("data", {}) for out in outputs), f"{path.name}: saved without its figures"
    text = _texts(nb)
    assert REAL_SOURCE in text, f"{path.name}: the saved outputs are not from real tissue ({REAL_SOURCE!r})"
    model = MODEL_NAMED.get(path.stem, "pcam-camelyon")
    assert model in text, f"{path.name}: the saved outputs do not name the model {model!r}"


def test_kernel_is_this_interpreter(kernel_env: Path) -> None:
    nbformat, _, _ = _jupyter()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import os, sys\nprint(sys.executable)\nprint(os.environ['MPLBACKEND'])")]
    _execute(nb, kernel_env)
    text = "".join(out.get("text", "") for out in nb.cells[0].outputs).split()
    assert text == [sys.executable, INLINE]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path, mode: str, kernel_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs without a cell error on real tissue and, with the PCam folder missing, on procedural tissue,
    saying which one it used and drawing figures."""
    if mode == "real" and not (PCAM / "valid").is_dir():
        pytest.skip(f"real-tissue run needs PatchCamelyon in {PCAM} (train/ and valid/)")
    monkeypatch.setenv("WSI_MAMBA_PCAM", str(PCAM if mode == "real" else kernel_env / "no-pcam-here"))
    nbformat, _, CellExecutionError = _jupyter()
    nb = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    try:
        _execute(nb, kernel_env)
    except CellExecutionError as exc:
        pytest.fail(f"{path.name} ({mode}): a cell failed\n{exc}", pytrace=False)
    seconds = time.perf_counter() - started
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    errors = [out for out in outputs if out.output_type == "error"]
    assert not errors, f"{path.name}: {errors[0].ename}: {errors[0].evalue}"
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert images, f"{path.name}: no figure was drawn"
    assert (REAL_SOURCE if mode == "real" else FALLBACK_SOURCE) in _texts(nb), f"{path.name}: data source not said"
    print(f"{path.name} ({mode}): {seconds:.1f} s")
