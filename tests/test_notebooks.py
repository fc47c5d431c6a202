"""The notebooks in notebooks/ are part of the product: each one is executed here, top to bottom, in a
fresh kernel of the interpreter running the tests, and any cell error fails the test.

They need nbclient, nbformat and ipykernel (the ``dev`` extra): when those are missing the tests fail with
the install command instead of being skipped. Each notebook writes its data into a temporary folder of its
own and runs in well under a minute on two CPU cores.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
EXPECTED = ("01-explore-a-slide", "02-cohort-auc", "03-heatmaps")
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
KERNEL = "python3"
TIMEOUT_S = 600  # per cell
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
    their synthetic slides. Returns the working directory for the kernel."""
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
    workdir = tmp_path / "work"
    workdir.mkdir()
    return workdir


def _execute(nb, workdir: Path):
    _, NotebookClient, _ = _jupyter()
    client = NotebookClient(nb, timeout=TIMEOUT_S, kernel_name=KERNEL, resources={"metadata": {"path": str(workdir)}})
    return client.execute()


def test_all_notebooks_present() -> None:
    assert [p.stem for p in NOTEBOOKS] == list(EXPECTED), f"notebooks in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_stored_clean(path: Path) -> None:
    """Stored without outputs (small diffs), valid nbformat 4, for the python3 kernel."""
    nbformat, _, _ = _jupyter()
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == KERNEL
    assert nb.cells and nb.cells[0].cell_type == "markdown", "a notebook opens with a markdown cell saying what it does"
    dirty = [
        i for i, cell in enumerate(nb.cells) if cell.cell_type == "code" and (cell.outputs or cell.execution_count)
    ]
    assert not dirty, f"{path.name}: clear the outputs of cells {dirty} before committing"


def test_kernel_is_this_interpreter(kernel_env: Path) -> None:
    nbformat, _, _ = _jupyter()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import os, sys\nprint(sys.executable)\nprint(os.environ['MPLBACKEND'])")]
    _execute(nb, kernel_env)
    text = "".join(out.get("text", "") for out in nb.cells[0].outputs).split()
    assert text == [sys.executable, INLINE]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path, kernel_env: Path) -> None:
    nbformat, _, CellExecutionError = _jupyter()
    nb = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    try:
        _execute(nb, kernel_env)
    except CellExecutionError as exc:
        pytest.fail(f"{path.name}: a cell failed\n{exc}", pytrace=False)
    seconds = time.perf_counter() - started
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    errors = [out for out in outputs if out.output_type == "error"]
    assert not errors, f"{path.name}: {errors[0].ename}: {errors[0].evalue}"
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert images, f"{path.name}: no figure was drawn"
    print(f"{path.name}: {seconds:.1f} s")
