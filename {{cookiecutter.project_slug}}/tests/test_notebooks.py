"""Every notebook runs top to bottom without error (headless, outputs never saved)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


MODELS = ["toy-induction", "gpt2", "gpt-neox", "gemma-2", "qwen2"]  # toy, tiny checkpoints


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, model, tiny_checkpoints, tmp_path, monkeypatch):
    # Run in notebooks/ so relative paths resolve as for a user; the executed copy stays in
    # memory and figures go to tmp_path (the kernel inherits FIGURES_DIR and MODEL_NAME), so
    # nothing is written into the project. Pretrained models are the tiny local checkpoints.
    monkeypatch.setenv("FIGURES_DIR", str(tmp_path / "figures"))
    monkeypatch.setenv("MODEL_NAME", str(tiny_checkpoints.get(model, model)))
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
