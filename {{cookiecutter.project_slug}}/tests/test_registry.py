"""The registry of experiment kinds: found from the modules, read by configs and the docs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from src.experiments.registry import experiment_config, get_kind, kinds, load_config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import update_docs  # noqa: E402


def test_every_kind_is_found():
    assert {"baseline", "patching", "attribution", "circuit_discovery"} <= set(kinds())
    assert get_kind("patching").label == "activation patching"
    with pytest.raises(ValueError, match="no experiment kind 'nope'; known: "):
        get_kind("nope")


def test_each_section_is_a_config_section(tmp_path):
    sections = experiment_config().sections()
    assert set(sections) == {k.name for k in kinds().values() if k.section is not None}
    path = tmp_path / "x.yaml"
    path.write_text(
        "experiment: {name: x}\nmodel: {name: toy-induction}\n"
        "data: {dataset: induction, n_samples: 2, seq_length: 9}\n"
        "circuit_discovery: {top_n: 3}\noutput: {results_dir: r}\n"
    )
    cfg = load_config(path)
    assert cfg.kind == "circuit_discovery" and get_kind(cfg.kind).section is type(cfg.analysis)


def test_figures_and_headlines_are_named():
    for kind in kinds().values():
        assert all(isinstance(name, str) for name in kind.figures), kind.name
    # update_docs.py stays stdlib-only: its fallback for logs without a named headline
    # lists the registry's headlines.
    headlines = {k.headline for k in kinds().values() if k.headline}
    assert headlines <= set(update_docs.HEADLINE_KEYS)


def test_a_log_names_its_headline():
    results = {"a": 1.0, "b": 2.0, "headline": "b"}
    assert update_docs._headline(results) == "b=2"


def test_loading_configs_imports_no_torch():
    """The registry imports every kind to validate a config: kinds import methods lazily."""
    code = (
        "import pathlib, sys\n"
        "from src.experiments.registry import load_config\n"
        "for path in sorted(pathlib.Path('configs').glob('*.yaml')):\n"
        "    if path.name != 'project.yaml':\n"
        "        load_config(path)\n"
        "print(sorted(m for m in ('torch', 'transformer_lens', 'sae_lens') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
