"""Every notebook in notebooks/ runs top to bottom, and none is committed with outputs.

The notebooks execute with ``CSR_JAX_SMALL=1`` (each shrinks its sizes and steps under it) in a
kernel started from *this* interpreter: a kernel spec is written to a temporary directory with
``sys.executable`` as its command, so the test works on a fresh machine with no Jupyter kernel
installed, and never picks up a ``python3`` kernel that points at another environment.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[test]' installs nbformat")
nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[test]' installs nbclient")
pytest.importorskip("ipykernel", reason="pip install -e '.[test]' installs ipykernel")
from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402  (after the importorskips)
from jupyter_client.manager import KernelManager  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
KERNEL_NAME = "csr_jax_test_python"
CELL_TIMEOUT_S = 240


def test_the_notebooks_exist():
    names = [p.name for p in NOTEBOOKS]
    for expected in (
        "01_csrconv_quickstart.ipynb",
        "02_backbones.ipynb",
        "03_train_digits.ipynb",
        "04_csr_in_your_model.ipynb",
    ):
        assert expected in names


@pytest.fixture(scope="session")
def kernel_dir(tmp_path_factory) -> Path:
    """A kernel spec that runs ipykernel under the interpreter running the tests."""
    root = tmp_path_factory.mktemp("kernels")
    spec_dir = root / KERNEL_NAME
    spec_dir.mkdir()
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "csr_jax tests",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return root


@pytest.mark.slow  # Trains and plots in a kernel: skipped by `pytest -m 'not slow'`.
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path: Path, kernel_dir: Path, monkeypatch):
    monkeypatch.setenv("CSR_JAX_SMALL", "1")  # The kernel inherits this process's environment.
    # The repository (csr_jax and experiments/) importable whether or not it is pip-installed.
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    )
    monkeypatch.delenv(
        "MPLBACKEND", raising=False
    )  # The kernel's inline backend renders the figures.
    nb = nbformat.read(path, as_version=4)
    km = KernelManager(
        kernel_name=KERNEL_NAME,
        kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_dir)]),
    )
    client = nbclient.NotebookClient(
        nb,
        km=km,
        timeout=CELL_TIMEOUT_S,
        allow_errors=False,
        resources={"metadata": {"path": str(path.parent)}},  # Run where a user would: notebooks/.
    )
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:
        pytest.fail(f"{path.name} failed:\n{str(e)[-4000:]}")
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert code_cells and all(c.execution_count for c in code_cells), "not every code cell ran"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_without_outputs(path: Path):
    """Outputs (plots, tables) would bloat git and go stale; the suite regenerates them."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not cell.outputs, (
                f"{path.name} cell {i} has outputs; clear them before committing"
            )
            assert cell.execution_count is None, (
                f"{path.name} cell {i} has an execution count; clear outputs"
            )
