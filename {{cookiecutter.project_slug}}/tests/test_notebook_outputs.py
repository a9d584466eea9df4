"""Committed notebooks carry no outputs. The commit hook strips them (nbstripout); this catches a
notebook committed without it: from a clone before `make setup`, or with `--no-verify`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def committed_notebooks(root: Path = ROOT) -> dict[str, dict]:
    """Each notebook git holds (as staged or committed, not your unsaved work), by path."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--", "*.ipynb"], cwd=root, capture_output=True, text=True
    )
    if listed.returncode != 0:
        pytest.skip("not a git repository: no committed notebooks to check")
    notebooks = {}
    for name in filter(None, listed.stdout.split("\0")):
        shown = subprocess.run(["git", "show", f":{name}"], cwd=root, capture_output=True)
        if shown.returncode == 0:
            notebooks[name] = json.loads(shown.stdout)
    return notebooks


def with_outputs(notebook: dict) -> list[int]:
    """Indices of the code cells that keep outputs or an execution count."""
    return [
        i
        for i, cell in enumerate(notebook.get("cells", []))
        if cell.get("cell_type") == "code"
        and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]


def test_committed_notebooks_have_no_outputs() -> None:
    dirty = {
        name: cells for name, nb in committed_notebooks().items() if (cells := with_outputs(nb))
    }
    assert dirty == {}, (
        f"notebooks committed with outputs (cells by index): {dirty}; strip them with "
        "`nbstripout FILE` (or `make lint`), commit, and run `make setup` so the hook does it"
    )


def test_with_outputs_finds_them() -> None:
    clean = {"cell_type": "code", "outputs": [], "execution_count": None, "source": "1"}
    ran = {**clean, "outputs": [{"output_type": "stream", "text": "1"}], "execution_count": 1}
    counted = {**clean, "execution_count": 2}
    markdown = {"cell_type": "markdown", "source": "# Title"}
    assert with_outputs({"cells": [clean, ran, markdown, counted]}) == [1, 3]
