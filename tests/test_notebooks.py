"""The tutorial notebooks run end to end (nbclient, kernel "python3" on this interpreter) and are stored clean."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
EXPECTED = ["01_quickstart", "02_attacks_from_explanations", "03_fooling_explanations",
            "04_detecting_adversarial_inputs", "05_paper_figures", "06_your_own_models",
            "07_evaluating_explanations"]


def test_all_notebooks_present_and_stored_without_outputs():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED
    for p in NOTEBOOKS:
        nb = nbformat.read(p, as_version=4)
        nbformat.validate(nb)
        for c in nb.cells:
            if c.cell_type == "code":
                assert c.execution_count is None and c.outputs == [], f"{p.name} is stored with outputs"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    # the kernel must run this interpreter (jupyter_client maps the spec's "python" to sys.executable)
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    env_backend = os.environ.get("MPLBACKEND")
    os.environ["MPLBACKEND"] = "Agg"
    try:
        t = time.perf_counter()
        nbclient.NotebookClient(nb, kernel_name="python3", timeout=240,
                                resources={"metadata": {"path": str(tmp_path)}}).execute()
        seconds = time.perf_counter() - t
    finally:
        if env_backend is None:
            os.environ.pop("MPLBACKEND", None)
        else:
            os.environ["MPLBACKEND"] = env_backend
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    exe = nb.cells[-1].outputs[0]["text"].strip()
    assert os.path.realpath(exe) == os.path.realpath(sys.executable)
    assert seconds < 180, f"{path.name} took {seconds:.0f} s (budget: under 3 minutes)"
