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
    "probes": "toy_induction_probes.yaml",
    "steering": "toy_induction_steering.yaml",
}
FAST = {("qwen2", "patching")}  # the rest: pytest -m slow
# Section entries changed for the tiny checkpoints: a 512-token vocabulary makes ~8x the
# previous-token classes of the toy, so one seed and fewer steps keep the probes quick.
OVERRIDES = {"probes": {"seeds": [0], "steps": 60, "lr": 0.1}}


def _cases():
    for arch in ARCHS:
        for kind in CONFIGS:
            marks = () if (arch, kind) in FAST else (pytest.mark.slow,)
            yield pytest.param(arch, kind, marks=marks, id=f"{arch}-{kind}")


def run_on_checkpoint(
    checkpoint: Path, kind: str, tmp_path: Path, dtype: str = "float32"
) -> tuple[dict, Path]:
    """The toy config of `kind` with the checkpoint as its model (40 induction prompts, in
    `dtype`), run in-process; returns the log's entry and the figures folder."""
    config = yaml.safe_load((ROOT / "configs" / CONFIGS[kind]).read_text(encoding="utf-8"))
    config["model"]["name"] = str(checkpoint)
    config["model"]["dtype"] = dtype
    config["data"]["n_samples"] = 40
    if kind in OVERRIDES:
        config[kind] |= OVERRIDES[kind]
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


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_cache_sae_and_features_on_a_pretrained_checkpoint(
    arch, tiny_checkpoints, pretrained_model, tiny_corpus, tmp_path, monkeypatch
):
    """On each architecture, from the local text file: the activation cache holds the
    model's own activations, an SAE trains on it and loads in SAELens, and the feature
    analysis of that SAE runs on the checkpoint."""
    pytest.importorskip("sae_lens", reason="needs SAELens")
    import torch

    from src.data.activation_cache import open_cache

    monkeypatch.chdir(tmp_path)
    scripts = {name: runpy.run_path(str(ROOT / "scripts" / f"{name}.py"))["main"]
               for name in ("cache_activations", "train_sae", "analyze_sae")}  # fmt: skip
    model = str(tiny_checkpoints[arch])
    common = ["--model", model, "--layer", "1", "--device", "cpu"]
    text = ["--dataset", "text", "--dataset-path", str(tiny_corpus), "--context-size", "32"]
    assert scripts["cache_activations"]([*common, *text, "--n-tokens", "1024"]) == 0
    (cache,) = Path("data/activations").iterdir()
    assert cache.name == f"tiny-{arch}_1_corpus_1024"  # short names, never a path
    store = open_cache(cache)
    with torch.no_grad():
        _, reference = pretrained_model(arch).run_with_cache(store.tokens())
    name = "blocks.1.hook_resid_pre"
    torch.testing.assert_close(store.load(name), reference[name], rtol=0, atol=1e-5)

    config = {
        "model": {"name": model, "device": "cpu"},
        "hook": {"layer": 1, "hook_point": "resid_pre"},
        "data": {"dataset": "text", "context_size": 32, "n_eval_tokens": 512},
        "sae": {"architecture": "topk", "expansion_factor": 2, "k": 4},
        "training": {"n_tokens": 4096, "batch_size": 512, "lr": 0.002},
        "output": {"results_dir": "results"},
    }
    Path("sae.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    assert scripts["train_sae"](["--config", "sae.yaml", "--dataset-path", str(tiny_corpus)]) == 0
    (log,) = Path("results").glob(f"sae_tiny-{arch}_*.json")
    results = json.loads(log.read_text(encoding="utf-8"))["results"]
    assert math.isfinite(results["explained_variance"]) and 0 < results["l0"] <= 4

    analysis = ["--sae", results["sae_path"], "--dataset-path", str(tiny_corpus)]
    analysis += ["--n-tokens", "1024", "--device", "cpu", "--results-dir", "analysis"]
    assert scripts["analyze_sae"]([*analysis, "--figures-dir", "figures"]) == 0
    (report,) = Path("analysis").glob("*/features.json")
    assert json.loads(report.read_text(encoding="utf-8"))["features"]
    assert list(Path("figures").glob("*.png"))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("kind", ["baseline", "patching", "attribution", "circuit_discovery"])
@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])
def test_half_precision_configs_run(
    arch, kind, dtype, tiny_checkpoints, pretrained_model, tmp_path
):
    """A config in bfloat16 or float16 runs each kind on the CPU; the baseline's clean logit
    difference is the float32 one to the format's precision."""
    entry, _ = run_on_checkpoint(tiny_checkpoints[arch], kind, tmp_path, dtype=dtype)
    results = entry["results"]
    assert entry["config"]["model"]["dtype"] == dtype
    assert math.isfinite(results[results["headline"]])
    if kind == "baseline":
        (tmp_path / "full").mkdir()
        full, _ = run_on_checkpoint(tiny_checkpoints[arch], kind, tmp_path / "full")
        expected = full["results"]["clean_logit_diff"]
        assert results["clean_logit_diff"] == pytest.approx(expected, abs=0.05)
