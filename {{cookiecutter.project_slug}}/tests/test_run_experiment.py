"""scripts/run_experiment.py: fast --help, clean config errors, and a real run on the toy."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "run_experiment.py"


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def test_help_imports_nothing_heavy() -> None:
    harness = (
        "import runpy, sys\n"
        f"sys.argv = [{str(SCRIPT)!r}, '--help']\n"
        "try:\n"
        f"    runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "print(sorted(m for m in ('torch', 'transformer_lens', 'numpy') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", harness],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout and "--results-dir" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_config_error_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    toy = yaml.safe_load((ROOT / "configs" / "toy_induction.yaml").read_text())
    toy["data"]["n_samples"] = "ten"
    bad.write_text(yaml.safe_dump(toy))
    result = run_script("--config", str(bad), "--results-dir", str(tmp_path / "r"))
    assert result.returncode == 2
    assert result.stderr == f"error: {bad}: data.n_samples: expected int, got 'ten'\n"
    assert not (tmp_path / "r").exists()


def test_sae_config_is_refused(tmp_path: Path) -> None:
    result = run_script("--config", "configs/sae_training.yaml", "--results-dir", str(tmp_path))
    assert result.returncode == 2 and "train_sae.py" in result.stderr


def test_toy_induction_end_to_end(
    tmp_path: Path, toy_model: object, capsys: pytest.CaptureFixture[str]
) -> None:
    # In-process (the subprocess tests above cover the command line itself): toy_model
    # (conftest) has trained and cached the toy, and transformer-lens is imported once.
    main = runpy.run_path(str(SCRIPT))["main"]
    args = ["--config", "configs/toy_induction.yaml", "--device", "cpu"]
    assert main([*args, "--results-dir", str(tmp_path)]) == 0
    (log,) = tmp_path.glob("toy_induction_baseline_*.json")
    assert f"log: {log}" in capsys.readouterr().out
    entry = json.loads(log.read_text())
    assert entry["config"]["model"]["device"] == "cpu"
    assert entry["config"]["output"]["results_dir"] == str(tmp_path)
    assert entry["wall_time_s"] > 0
    results = entry["results"]
    assert results["n_samples"] == 200
    assert results["clean_logit_diff"] > 2 and results["corrupted_logit_diff"] < -2
    assert results["clean_accuracy"] > 0.9 and results["corrupted_accuracy"] < 0.1


def refused(tmp_path: Path, config: dict, capsys: pytest.CaptureFixture[str]) -> tuple[Path, str]:
    """Run the script on ``config`` (written to a file): it exits with 2 and writes no
    results. Returns the file and the last line of stderr."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    main = runpy.run_path(str(SCRIPT))["main"]
    assert (
        main(["--config", str(bad), "--device", "cpu", "--results-dir", str(tmp_path / "r")]) == 2
    )
    assert not (tmp_path / "r").exists()
    return bad, capsys.readouterr().err.strip().splitlines()[-1]


def test_dataset_error_is_one_line(
    tmp_path: Path, toy_model: object, capsys: pytest.CaptureFixture[str]
) -> None:
    toy = yaml.safe_load((ROOT / "configs" / "toy_induction.yaml").read_text())
    toy["data"]["seq_length"] = 40
    bad, err = refused(tmp_path, toy, capsys)
    assert err == f"error: {bad}: seq_length 40 exceeds the model's context n_ctx=32"


def run_config(main, config: str, tmp_path: Path) -> dict:
    """Run ``config`` in-process with results and figures under tmp_path; the log's results."""
    args = ["--config", config, "--device", "cpu", "--results-dir", str(tmp_path / "r")]
    assert main([*args, "--figures-dir", str(tmp_path / "f")]) == 0
    (log,) = (tmp_path / "r").glob("*_2*.json")
    return json.loads(log.read_text())["results"]


def test_patching_config_finds_the_induction_heads(tmp_path: Path, toy_model: object) -> None:
    main = runpy.run_path(str(SCRIPT))["main"]
    results = run_config(main, "configs/toy_induction_patching.yaml", tmp_path)
    head_out = results["components"]["head_out"]
    assert head_out["axes"] == ["layer", "head"]
    top = [entry["entry"] for entry in head_out["top"][:3]]
    assert all(name.startswith("a1.") for name in top)  # the layer-1 induction heads
    first = head_out["top"][0]
    assert first["low"] <= first["mean"] <= first["high"] and first["low"] > 0.1
    pngs = {path.name for path in (tmp_path / "f").glob("*.png")}
    drawn = ("head_out", "q", "k", "v", "attention")  # heatmaps; the strongest heads' patterns
    assert pngs == {f"toy_induction_patching_{what}.png" for what in drawn}
    attention = results["attention"]  # stored for the figure: the strongest heads first
    assert attention["heads"][0] == top[0] and len(attention["heads"]) == 4


def test_attribution_config_agrees_with_patching(tmp_path: Path, toy_model: object) -> None:
    main = runpy.run_path(str(SCRIPT))["main"]
    results = run_config(main, "configs/toy_induction_attribution.yaml", tmp_path)
    assert results["head_out_pearson_r"] >= 0.8
    dla = results["dla"]
    assert abs(sum(dla["terms"]["mean"]) + dla["remainder_mean"] - dla["logit_diff_mean"]) < 1e-3


def test_circuit_config_saves_a_faithful_circuit(tmp_path: Path, toy_model: object) -> None:
    main = runpy.run_path(str(SCRIPT))["main"]
    results = run_config(main, "configs/toy_induction_circuit.yaml", tmp_path)
    assert {"a0.h2", "a1.h0", "a1.h1"} <= set(results["nodes"])
    assert results["recovered"] >= 0.8
    circuit = json.loads(Path(results["circuit_file"]).read_text())
    assert {"nodes", "edges", "faithfulness"} <= set(circuit)
    assert (tmp_path / "f" / "toy_induction_circuit_circuit.png").exists()
    assert (tmp_path / "f" / "toy_induction_circuit_attention.png").exists()
    assert set(results["attention"]["heads"]) <= set(results["nodes"])


def test_head_out_of_range_fails_before_running(
    tmp_path: Path, toy_model: object, capsys: pytest.CaptureFixture[str]
) -> None:
    config = yaml.safe_load((ROOT / "configs" / "toy_induction_patching.yaml").read_text())
    config["patching"]["heads"] = [0, 7]
    bad, err = refused(tmp_path, config, capsys)
    assert err == f"error: {bad}: patching.heads[1]: head 7 is out of range for this model (0..3)"
