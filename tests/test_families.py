"""The model families offered at generation are the rows of the project's family table."""

from __future__ import annotations

import ast
import importlib.util
import sys

from conftest import DEFAULTS, TEMPLATE

MODELS = TEMPLATE / "{{cookiecutter.project_slug}}" / "src" / "models"


def _families_module():
    """The project's table reader (stdlib and pyyaml, no Jinja), imported from the template."""
    spec = importlib.util.spec_from_file_location("template_families", MODELS / "families.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


FAMILIES = _families_module().load_families(MODELS / "families.yaml")


def _toy_spec_defaults() -> dict[str, object]:
    """ToyModelSpec's field defaults, read from src/models/toy.py without importing torch."""
    tree = ast.parse((MODELS / "toy.py").read_text(encoding="utf-8"))
    spec = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ToyModelSpec")
    return {
        node.target.id: ast.literal_eval(node.value)
        for node in spec.body
        if isinstance(node, ast.AnnAssign)
        and isinstance(node.target, ast.Name)
        and isinstance(node.value, ast.Constant)
    }


def test_model_choices_are_the_table_rows():
    assert sorted(DEFAULTS["model_name"]) == sorted(FAMILIES)  # a fork may reorder the choices


def test_toy_row_matches_the_toy_model_spec():
    row, spec = FAMILIES["toy-induction"], _toy_spec_defaults()
    assert row.hf_id is None
    for key in ("n_layers", "d_model", "n_heads", "d_head", "d_vocab", "n_ctx"):
        assert getattr(row, key) == spec[key], key
    assert row.normalization == spec["normalization_type"]
    assert row.d_mlp == 0 and row.n_kv_heads == row.n_heads  # attention-only, plain attention
