"""Every experiment kind, end to end through scripts/run_experiment.py, on a tiny local
checkpoint of each tested architecture: `model.name` is the checkpoint's directory, as a
user's would be. Then the figure rebuild redraws every figure from the logs alone."""

from __future__ import annotations

import json
import math
import runpy
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ARCHS = ["gpt2", "gpt-neox", "gemma-2", "qwen2"]
CONFIGS = {  # kind -> the toy config it starts from
    "baseline": "toy_induction.yaml",
    "patching": "toy_induction_patching.yaml",
    "attribution": "toy_induction_attribution.yaml",
    "circuit_discovery": "toy_induction_circuit.yaml",
}
FAST = {("gpt2", "patching"), ("qwen2", "patching")}  # the rest: pytest -m slow


def _cases():
    for arch in ARCHS:
        for kind in CONFIGS:
            marks = () if (arch, kind) in FAST else (pytest.mark.slow,)
            yield pytest.param(arch, kind, marks=marks, id=f"{arch}-{kind}")


def run_on_checkpoint(checkpoint: Path, kind: str, tmp_path: Path) -> tuple[dict, Path]:
    """The toy config of `kind` with the checkpoint as its model (40 induction prompts),
    run in-process; returns the log's entry and the figures folder."""
    config = yaml.safe_load((ROOT / "configs" / CONFIGS[kind]).read_text(encoding="utf-8"))
    config["model"]["name"] = str(checkpoint)
    config["data"]["n_samples"] = 40
    path = tmp_path / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    main = runpy.run_path(str(ROOT / "scripts" / "run_experiment.py"))["main"]
    results, figures = tmp_path / "results", tmp_path / "figures"
    args = ["--config", str(path), "--device", "cpu", "--results-dir", str(results)]
    assert main([*args, "--figures-dir", str(figures)]) == 0
    (log,) = results.glob("*_2*.json")  # the run log (a circuit file lies beside it)
    return json.loads(log.read_text(encoding="utf-8")), figures


@pytest.mark.parametrize(("arch", "kind"), list(_cases()))
def test_kind_runs_on_a_pretrained_checkpoint(arch, kind, tiny_checkpoints, tmp_path):
    entry, figures = run_on_checkpoint(tiny_checkpoints[arch], kind, tmp_path)
    results = entry["results"]
    assert results["kind"] == kind and entry["config"]["model"]["name"] == str(
        tiny_checkpoints[arch]
    )
    headline = results[results["headline"]]
    assert isinstance(headline, int | float) and math.isfinite(headline)
    drawn = sorted(p.name for p in figures.glob("*.png"))
    assert (kind == "baseline") != bool(drawn), drawn  # every kind but the baseline draws
    if drawn:  # the rebuild redraws the same figures from the log alone
        from src.visualization.generate_all import main as generate_all

        rebuilt = tmp_path / "rebuilt"
        args = ["--results-dir", str(tmp_path / "results"), "--figures-dir", str(rebuilt)]
        assert generate_all(args) == 0
        assert sorted(p.name for p in rebuilt.glob("*.png")) == drawn
