"""The family table (src/models/families.yaml): its rows, its reader and who reads it."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from src.models.families import FAMILIES_FILE, family, load_families
from src.models.load import PRETRAINED_MODELS
from src.models.toy import TOY_MODELS

FAMILIES = load_families()


def test_pretrained_names_come_from_the_table():
    expected = {n: f.hf_id for n, f in FAMILIES.items() if f.hf_id is not None}
    assert expected == PRETRAINED_MODELS
    assert PRETRAINED_MODELS["gpt2-small"] == "gpt2"


@pytest.mark.parametrize("name", [n for n, f in FAMILIES.items() if f.hf_id is None])
def test_toy_rows_match_their_spec(name):
    """A row without a Hugging Face id is a toy model: its dimensions are those it is built with."""
    row, spec = FAMILIES[name], TOY_MODELS[name]
    cfg = spec.bridge_config()
    assert cfg.attn_only and row.d_mlp == 0 and row.act_fn is None
    for key, value in row.bridge_config_kwargs().items():
        if key not in ("d_mlp", "act_fn"):  # TransformerLens fills both even without an MLP
            assert getattr(cfg, key) == value, key
    assert row.n_kv_heads == row.n_heads


@pytest.mark.parametrize("name", list(FAMILIES))
def test_patching_defaults_fit_the_model(name):
    row = FAMILIES[name]
    assert row.patching_defaults.layers
    assert all(0 <= layer < row.n_layers for layer in row.patching_defaults.layers)
    assert row.patching_defaults.seq_length <= row.n_ctx
    assert row.n_kv_heads <= row.n_heads and row.n_heads % row.n_kv_heads == 0


def test_unknown_family_is_one_line_listing_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown model family 'gpt5'; known: \[") as caught:
        family("gpt5")
    assert "\n" not in str(caught.value) and "'gpt2-small'" in str(caught.value)


def test_a_row_with_a_missing_or_unknown_key_is_an_error(tmp_path: Path):
    table = yaml.safe_load(FAMILIES_FILE.read_text(encoding="utf-8"))
    row = table["gpt2-small"]
    row["d_ff"] = row.pop("d_mlp")
    path = tmp_path / "families.yaml"
    path.write_text(yaml.safe_dump({"gpt2-small": row}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"'gpt2-small'.*missing \['d_mlp'\], unknown \['d_ff'\]"):
        load_families(path)


def test_rows_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        FAMILIES["gpt2-small"].n_layers = 1  # type: ignore[misc]


def test_reader_needs_no_torch():
    """scripts/update_docs.py and the generator's hook read the table before any install."""
    code = "import sys, src.models.families; assert 'torch' not in sys.modules"
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)
