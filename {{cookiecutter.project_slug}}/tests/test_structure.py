"""The layering rule of src/, as the folders' docstrings state it, holds for every file.

Imports run one way: utils, models and data (foundation) <- analysis (methods) <- experiments
(runners) <- visualization (figures) <- scale (sweeps and launchers) <- scripts. A lower layer
never imports a higher one, not even inside a function; no experiment imports another;
visualization loads no model.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from src.experiments.registry import SHARED_MODULES

SRC = Path(__file__).resolve().parents[1] / "src"
LAYERS = {
    "utils": 0,
    "models": 0,
    "data": 0,
    "analysis": 1,
    "experiments": 2,
    "visualization": 3,
    "scale": 4,
}
# Modules of src/experiments that are not experiment kinds (the registry skips them): any
# kind may import them.
EXPERIMENT_SHARED = set(SHARED_MODULES)
MODULES = sorted(p for p in SRC.rglob("*.py") if p.parent != SRC)


def imported_modules(path: Path) -> set[str]:
    """Every ``src.*`` module a file imports, wherever the import statement stands."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.startswith("src.")}


def test_every_folder_has_a_layer():
    folders = {p.name for p in SRC.iterdir() if p.is_dir() and not p.name.startswith("__")}
    assert folders == set(LAYERS)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(SRC).as_posix())
def test_imports_run_one_way(path):
    folder = path.relative_to(SRC).parts[0]
    upward = [
        name
        for name in imported_modules(path)
        if name.split(".")[1] in LAYERS and LAYERS[name.split(".")[1]] > LAYERS[folder]
    ]
    assert upward == [], f"{folder} may not import a higher layer"


@pytest.mark.parametrize(
    "path",
    [p for p in MODULES if p.parent.name == "experiments" and p.stem not in EXPERIMENT_SHARED],
    ids=lambda p: p.stem,
)
def test_no_experiment_imports_another(path):
    others = {
        name.split(".")[2]
        for name in imported_modules(path)
        if name.startswith("src.experiments.") and len(name.split(".")) > 2
    }
    others -= EXPERIMENT_SHARED | {"__init__", path.stem}
    assert others == set()


@pytest.mark.parametrize(
    "path", [p for p in MODULES if p.parent.name == "visualization"], ids=lambda p: p.stem
)
def test_visualization_loads_no_model(path):
    assert not {n for n in imported_modules(path) if n.startswith("src.models.load")}
