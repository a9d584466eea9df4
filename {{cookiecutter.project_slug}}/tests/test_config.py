"""Config loading: every shipped config loads; every mistake names its file and key."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import get_args

import pytest
import yaml
from pydantic import ValidationError

from src.experiments.registry import experiment_config, load_config
from src.utils.config import (
    Component,
    ConfigError,
    ExperimentConfig,
    HookPoint,
    MetricName,
    SAETrainingConfig,
    check_model_fit,
    config_to_dict,
)

# project.yaml describes the project (main model, compute), not an experiment.
CONFIGS = sorted(
    p
    for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")
    if p.name != "project.yaml"
)

VALID = {
    "experiment": {"name": "test_run"},
    "model": {"name": "toy-induction", "device": "cpu"},
    "data": {"dataset": "induction", "n_samples": 10, "seq_length": 31},
    "patching": {"layers": [0, 1], "heads": "all", "positions": [-1], "metric": "logit_diff"},
    "output": {"results_dir": "results"},
}


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "x.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def edited(section: str, key: str, value: object = ...) -> dict:
    """VALID with one key set to ``value`` (removed when ``value`` is omitted)."""
    data = copy.deepcopy(VALID)
    if value is ...:
        del data[section][key]
    else:
        data[section][key] = value
    return data


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path: Path, tmp_path: Path) -> None:
    cfg = load_config(path)
    expected = SAETrainingConfig if "sae_training" in path.stem else ExperimentConfig
    assert isinstance(cfg, expected)
    as_dict = config_to_dict(cfg)
    json.dumps(as_dict)  # loggable
    assert load_config(write(tmp_path, as_dict)) == cfg  # and round-trips


def test_shipped_configs_exist() -> None:
    names = {p.name for p in CONFIGS}
    assert {
        "experiment.yaml",
        "gpt2_small.yaml",
        "toy_induction.yaml",
        "sae_training.yaml",
    } <= names


def test_valid_config_is_typed_and_frozen(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, VALID))
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.kind == "patching"
    assert cfg.patching.layers == (0, 1) and cfg.patching.heads == "all"
    assert cfg.data.seed == 0 and cfg.data.path is None  # defaults
    assert cfg.model.dtype == "float32" and cfg.output.figures is True
    with pytest.raises(ValidationError, match="frozen"):
        cfg.data.n_samples = 5  # type: ignore[misc]
    assert config_to_dict(cfg)["patching"]["layers"] == [0, 1]


def test_no_analysis_section_is_a_baseline(tmp_path: Path) -> None:
    data = copy.deepcopy(VALID)
    del data["patching"]
    assert load_config(write(tmp_path, data)).kind == "baseline"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            edited("model", "n_layers", 2),
            "model.n_layers: unknown key (known: name, device, dtype, n_devices, memory_gb)",
        ),
        (edited("data", "n_sample", 2), "data.n_sample: unknown key, did you mean 'n_samples'?"),
        ({**VALID, "training": {}}, "training: unknown key"),
        (edited("data", "n_samples"), "data.n_samples: missing required key"),
        ({k: v for k, v in VALID.items() if k != "output"}, "output: missing required section"),
        (edited("data", "n_samples", "ten"), "data.n_samples: expected int, got 'ten'"),
        (edited("data", "n_samples", True), "data.n_samples: expected int, got true"),
        (edited("data", "n_samples", 2.5), "data.n_samples: expected int, got 2.5"),
        (edited("data", "n_samples", 0), "data.n_samples: must be > 0"),
        (edited("data", "seq_length", -3), "data.seq_length: must be > 0"),
        (edited("data", "path", 3), "data.path: expected string, got 3"),
        (edited("output", "figures", "yes"), "output.figures: expected true or false, got 'yes'"),
        (edited("model", "dtype", "float8"), "model.dtype: expected one of 'float32', 'float16'"),
        (edited("patching", "layers", [5, "x"]), "patching.layers: expected list of int or 'all'"),
        (edited("patching", "heads", "some"), "patching.heads: expected list of int or 'all'"),
        (edited("patching", "layers", []), "patching.layers: expected a non-empty list or 'all'"),
        (edited("patching", "layers", [-1]), "patching.layers: indices must be >= 0"),
        (edited("patching", "metric", "kl"), "patching.metric: expected one of 'logit_diff'"),
        (edited("patching", "components", ["heads"]), "patching.components[0]: expected one of"),
        (edited("patching", "components", []), "patching.components: expected a non-empty list"),
        (edited("patching", "positions", [31]), "patching.positions[0]: 31 is out of range"),
        (edited("patching", "positions", [-32]), "patching.positions[0]: -32 is out of range"),
        (
            {**VALID, "attribution": {}},
            "patching: one analysis section per config, got ['attribution', 'patching']",
        ),
        (
            {**VALID, "patching": None, "circuit_discovery": {"top_n": 5, "threshold": 0.1}},
            "circuit_discovery.top_n: set exactly one of top_n and threshold",
        ),
        (
            {**VALID, "patching": None, "circuit_discovery": {"ablation": "zero"}},
            "circuit_discovery.ablation: expected one of 'corrupted', 'mean'",
        ),
        (edited("experiment", "name", "a/b"), "experiment.name: must be usable in a file name"),
        ({**VALID, "model": "gpt2-small"}, "model: expected a section with keys (name, device"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path: Path, data: dict, message: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert text.startswith(f"{path}: {message}"), text
    assert "\n" not in text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model: [unclosed\n", "invalid YAML at line 2"),
        (
            "model:\n  name: a\n  name: b\n",
            "invalid YAML at line 3, column 3: duplicate key 'name'",
        ),
        ("- a\n- b\n", "expected a mapping of sections, got ['a', 'b']"),
        ("", "config file is empty"),
    ],
)
def test_unreadable_yaml_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: {message}"), str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")


SAE = {
    "model": {"name": "gpt2-small"},
    "hook": {"layer": 8},
    "data": {"dataset": "text", "context_size": 128, "path": "corpus.txt"},
    "sae": {"architecture": "topk", "k": 32},
    "training": {"n_tokens": 1_000_000, "lr": "3e-4", "batch_size": 4096},
    "output": {"results_dir": "results"},
}


def test_sae_config(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, SAE))
    assert isinstance(cfg, SAETrainingConfig)
    assert cfg.hook.name == "blocks.8.hook_resid_pre"
    assert cfg.training.lr == pytest.approx(3e-4)  # PyYAML reads 3e-4 as a string
    assert cfg.sae.expansion_factor == 16 and cfg.sae.k == 32


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        ("sae", {"architecture": "topk", "k": None}, "sae.k: required for architecture 'topk'"),
        ("sae", {"architecture": "standard", "k": 8}, "sae.k: not used by architecture"),
        ("sae", {"architecture": "gated"}, "sae.architecture: expected one of 'standard'"),
        ("training", {"n_tokens": 100}, "training.n_tokens: must be >= batch_size"),
        ("training", {"lr": 0}, "training.lr: must be > 0"),
        ("hook", {"hook_point": "resid"}, "hook.hook_point: expected one of 'resid_pre'"),
    ],
)
def test_bad_sae_config(tmp_path: Path, section: str, values: dict, message: str) -> None:
    data = copy.deepcopy(SAE)
    data[section].update(values)
    path = write(tmp_path, data)
    with pytest.raises(ConfigError, match=f"^{path}: {message}"):
        load_config(path)


@pytest.mark.parametrize(
    ("section", "kind"),
    [
        ("patching", "patching"),
        ("attribution", "attribution"),
        ("circuit_discovery", "circuit_discovery"),
    ],
)
def test_analysis_sections_set_the_kind(tmp_path: Path, section: str, kind: str) -> None:
    data = {k: v for k, v in VALID.items() if k != "patching"}
    cfg = load_config(write(tmp_path, {**data, section: {}}))
    assert cfg.kind == kind and cfg.analysis is getattr(cfg, section)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"layers": [0, 2]}, "patching.layers[1]: layer 2 is out of range for this model (0..1)"),
        ({"heads": [4]}, "patching.heads[0]: head 4 is out of range for this model (0..3)"),
        ({"components": ["head_out", "mlp_out"]}, "patching.components[1]: mlp_out: the model"),
    ],
)
def test_model_fit_is_checked_before_running(tmp_path: Path, values: dict, message: str) -> None:
    data = copy.deepcopy(VALID)
    data["patching"].update(values)
    path = write(tmp_path, data)
    cfg = load_config(path)
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: {re.escape(message)}"):
        check_model_fit(cfg, path, n_layers=2, n_heads=4, attn_only=True)
    check_model_fit(
        load_config(write(tmp_path, VALID)), path, n_layers=2, n_heads=4, attn_only=True
    )


def test_vocabulary_comes_from_hooks() -> None:
    from src.models.hooks import COMPONENTS, RESIDUAL_POINTS

    assert get_args(Component) == tuple(COMPONENTS)
    assert get_args(HookPoint) == RESIDUAL_POINTS


def test_metric_names_match_metrics() -> None:
    from src.analysis.metrics import METRICS

    assert set(get_args(MetricName)) == set(METRICS)


def test_floats_accept_ints_and_exponents_but_not_bools(tmp_path: Path) -> None:
    for lr, expected in ((1, 1.0), ("2e-3", 2e-3)):
        data = copy.deepcopy(SAE)
        data["training"]["lr"] = lr
        assert load_config(write(tmp_path, data)).training.lr == pytest.approx(expected)
    data = copy.deepcopy(SAE)
    data["training"]["lr"] = True
    with pytest.raises(ConfigError, match="training.lr: expected float, got true"):
        load_config(write(tmp_path, data))


def test_schemas_export_json_schema() -> None:
    schema = experiment_config().model_json_schema()
    assert schema["required"] == ["experiment", "model", "data", "output"]
    assert SAETrainingConfig.model_json_schema()["additionalProperties"] is False
