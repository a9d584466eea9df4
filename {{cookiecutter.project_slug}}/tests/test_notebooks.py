"""Every notebook runs top to bottom without error (headless, outputs never saved)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    # Run in notebooks/ so relative paths resolve as for a user; the executed copy stays in
    # memory and figures go to tmp_path (the kernel inherits FIGURES_DIR), so nothing is written
    # into the project.
    monkeypatch.setenv("FIGURES_DIR", str(tmp_path / "figures"))
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()  # raises CellExecutionError, naming the cell, on the first error
    errors = [
        output
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors
    assert list((tmp_path / "figures").glob("*.png")), "the notebook saved no figure"
