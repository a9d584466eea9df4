"""Sweeps (src/scale/sweeps.py, scripts/sweep.py): points, validation, skipping what is done,
failures listed, and the summary; the slow tests run real points on submitit's executors."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from src.experiments.registry import load_config
from src.scale.launchers import LauncherConfig
from src.scale.sweeps import load_sweep, point_log, summary_csv, summary_rows
from src.utils.validation import ConfigError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import sweep as sweep_script  # noqa: E402  (scripts/sweep.py)


def write_config(tmp_path: Path, name: str, **changes) -> Path:
    """configs/<name>.yaml with its results in tmp_path and ``changes`` (top-level sections)."""
    raw = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
    raw["output"]["results_dir"] = str(tmp_path / "results")
    for key, value in changes.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_points_are_the_product_each_with_its_own_folder(tmp_path):
    path = write_config(
        tmp_path, "toy_induction_sweep", sweep={"seed": [0, 1, 2], "patching.layers": [[0], [1]]}
    )
    sweep = load_sweep(path)
    assert sweep.keys == ("data.seed", "patching.layers")  # "seed" alone is data.seed
    assert len(sweep.points) == 6
    assert [p.id for p in sweep.points[:2]] == ["seed-0_layers-0", "seed-0_layers-1"]
    point = sweep.points[3]
    assert point.values == {"data.seed": 1, "patching.layers": [1]}
    assert point.config["data"]["seed"] == 1 and point.config["patching"]["layers"] == [1]
    assert point.config["output"]["results_dir"] == str(tmp_path / "results" / "sweep" / point.id)
    assert len({p.dir for p in sweep.points}) == 6
    assert sweep.launcher == {"array_parallelism": 2, "timeout_min": 30}
    launcher = sweep_script.base_launcher(sweep)  # over configs/project.yaml's
    assert (launcher.array_parallelism, launcher.timeout_min) == (2, 30)
    project = yaml.safe_load((ROOT / "configs" / "project.yaml").read_text())["launcher"]
    assert launcher.name == project["name"]


def test_a_single_run_of_a_sweep_config_runs_its_own_values(tmp_path):
    cfg = load_config(write_config(tmp_path, "toy_induction_sweep"))
    assert cfg.data.seed == 0 and cfg.patching.layers == (0,)


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ({"data.sed": [0, 1]}, r"sweep\.data\.sed: not a config field"),
        ({"learning_rate": [1]}, r"sweep\.learning_rate: not a config field"),
        ({"data.seed": []}, r"sweep\.data\.seed: expected a non-empty list of values"),
        ({"data.seed": 3}, r"sweep\.data\.seed: expected a non-empty list of values"),
        ({"data.seed": [1, 1]}, r"sweep\.data\.seed: duplicate values"),
        ({}, r"sweep: expected keys with lists of values, got none"),
        ({"data.n_samples": [8, -1]}, r"sweep point n_samples--1: data\.n_samples: must be > 0"),
    ],
)
def test_bad_sweeps_are_one_line(tmp_path, sweep, message):
    path = write_config(tmp_path, "toy_induction_sweep", sweep=sweep)
    with pytest.raises(ConfigError, match=message) as info:
        load_sweep(path)
    assert "\n" not in str(info.value) and str(info.value).startswith(str(path))


def test_sae_sweep_keys(tmp_path):
    path = write_config(
        tmp_path,
        "toy_sae_training_sweep",
        sweep={"sae.expansion_factor": [2, 4], "training.lr": [1e-3]},
    )
    sweep = load_sweep(path)
    assert sweep.kind == "sae" and [p.config["sae"]["expansion_factor"] for p in sweep.points] == [
        2,
        4,
    ]
    with pytest.raises(ConfigError, match=r"sweep\.patching\.layers: not a config field"):
        load_sweep(
            write_config(tmp_path, "toy_sae_training_sweep", sweep={"patching.layers": [[0]]})
        )


def fake_point(task):
    """A stand-in for run_point: a log with one number, or a failure for seed 1."""
    if task.config["data"]["seed"] == 1:
        raise RuntimeError("seed 1 is cursed")
    folder = Path(task.config["output"]["results_dir"])
    folder.mkdir(parents=True, exist_ok=True)
    layers = task.config["patching"]["layers"]
    log = folder / "run.json"
    log.write_text(json.dumps({"results": {"score": layers[0] + 0.5, "tokens_per_s": 1.0}}))
    return {"log": str(log), "log_text": log.read_text()}


def test_done_points_are_skipped_and_failures_listed(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweep_script, "run_point", fake_point)
    path = write_config(
        tmp_path, "toy_induction_sweep", sweep={"seed": [0, 1], "patching.layers": [[0], [1]]}
    )
    sweep = load_sweep(path)
    launcher = LauncherConfig(name="debug", folder=str(tmp_path / "logs"))
    failed = sweep_script.run_sweep(sweep, launcher, 8, "test")
    assert sorted(failed) == ["seed-1_layers-0", "seed-1_layers-1"]
    assert failed["seed-1_layers-0"].startswith("RuntimeError: seed 1 is cursed (log: ")
    rows = summary_rows(sweep, failed)
    assert [r["status"] for r in rows][:2] == ["done", "done"]
    assert rows[2]["status"].startswith("failed: RuntimeError: seed 1 is cursed")
    assert [r.get("score") for r in rows] == [0.5, 1.5, None, None]
    assert "tokens_per_s" not in rows[0]  # timings differ run to run: not summarized
    first = summary_csv(rows[:2])

    calls = []
    monkeypatch.setattr(
        sweep_script, "run_point", lambda task: calls.append(task) or fake_point(task)
    )
    (sweep.points[1].dir / "run.json").unlink()  # a point lost (scancel, node lost)
    sweep_script.run_sweep(sweep, launcher, 8, "test")
    assert [t.point_id for t in calls] == ["seed-0_layers-1", "seed-1_layers-0", "seed-1_layers-1"]
    assert summary_csv(summary_rows(sweep)[:2]) == first


def test_summary_csv_rounds_to_six_digits():
    rows = [{"point": "a", "x": 1 / 3, "n": 3}]
    assert list(csv.DictReader(summary_csv(rows).splitlines())) == [
        {"point": "a", "x": "0.333333", "n": "3"}
    ]


def test_errors_exit_2_before_anything_runs(tmp_path, capsys):
    path = write_config(tmp_path, "toy_induction_sweep", sweep={"data.sed": [1]})
    assert sweep_script.main(["--config", str(path)]) == 2
    assert "sweep.data.sed: not a config field" in capsys.readouterr().err
    good = write_config(tmp_path, "toy_induction_sweep")
    assert sweep_script.main(["--config", str(good), "--launcher", "pbs"]) == 2
    assert "unknown launcher 'pbs'" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_real_sweep_resumes_to_the_same_summary(tmp_path, capsys):
    """Toy patching, 2 seeds x 2 layers on the debug executor (the code of a single run); a
    point whose model does not exist fails with its error while the others finish."""
    sweep = {"seed": [0, 1], "patching.layers": [[0], [1]]}
    path = write_config(tmp_path, "toy_induction_sweep", sweep=sweep)
    argv = [
        "--config",
        str(path),
        "--launcher",
        "debug",
        "--launcher-folder",
        str(tmp_path / "logs"),
    ]
    assert sweep_script.main(argv) == 0
    summary = tmp_path / "results" / "sweep" / "summary.csv"
    first = summary.read_text()
    rows = list(csv.DictReader(first.splitlines()))
    assert [r["status"] for r in rows] == ["done"] * 4
    assert all(0 < float(r["head_out_top_effect"]) <= 1.5 for r in rows)
    assert rows[0]["clean_metric"] != rows[2]["clean_metric"]  # seeds: other prompts
    assert (tmp_path / "results" / "sweep" / "summary.png").stat().st_size > 1000
    log = json.loads(point_log(tmp_path / "results" / "sweep" / "seed-1_layers-0").read_text())
    assert log["config"]["data"]["seed"] == 1 and log["results"]["kind"] == "patching"

    shutil.rmtree(tmp_path / "results" / "sweep" / "seed-0_layers-1")
    capsys.readouterr()
    assert sweep_script.main(argv) == 0
    assert "3 done, 1 to run" in capsys.readouterr().err
    assert summary.read_text() == first

    bad = write_config(
        tmp_path, "toy_induction_sweep", sweep={"model.name": ["toy-induction", "no-such-model"]}
    )
    assert sweep_script.main(["--config", str(bad), *argv[2:]]) == 1
    out = capsys.readouterr().out
    assert "failed: name-no-such-model: " in out and "no-such-model" in out.split("failed:")[1]
    rows = list(
        csv.DictReader((tmp_path / "results" / "sweep" / "summary.csv").read_text().splitlines())
    )
    assert [r["status"][:6] for r in rows] == ["done", "failed"]


def test_values_with_one_folder_name_get_distinct_folders(tmp_path):
    path = write_config(
        tmp_path, "toy_induction_sweep", sweep={"experiment.description": ["a b", "a_b"]}
    )
    assert len({p.dir for p in load_sweep(path).points}) == 2


@pytest.mark.slow
def test_sae_array_trains_one_loadable_sae_per_point(tmp_path, capsys, monkeypatch):
    """Two k at one layer (one shared activation cache, made by the first point) on the debug
    executor: SAELens loads each saved SAE, the summary has L0 = k."""
    from sae_lens import SAE

    monkeypatch.chdir(tmp_path)  # the activation cache (data/activations/...) goes here

    path = write_config(tmp_path, "toy_sae_training_sweep", sweep={"sae.k": [2, 4]})
    argv = ["--config", str(path), "--launcher", "debug", "--launcher-folder", str(tmp_path / "l")]
    assert sweep_script.main(argv) == 0
    sweep = load_sweep(path)
    rows = list(csv.DictReader((sweep.root / "summary.csv").read_text().splitlines()))
    assert [float(r["l0"]) for r in rows] == [2.0, 4.0]
    variance = [float(r["explained_variance"]) for r in rows]
    assert 0.3 < variance[0] < variance[1] <= 1  # more latents per token explain more
    assert {"dead_fraction", "mse"} <= set(rows[0])
    for point in sweep.points:
        sae = SAE.load_from_disk(point.dir / "sae", device="cpu")
        assert sae.cfg.d_sae == 256


def test_logs_of_points_run_elsewhere_are_copied_here(tmp_path, monkeypatch):
    """Modal's tasks write into its Volume: the driver writes each point's returned log."""
    from src.scale.launchers import TaskOutcome

    path = write_config(tmp_path, "toy_induction_sweep", sweep={"seed": [0]})
    sweep = load_sweep(path)
    log = sweep.points[0].dir / "run.json"
    text = json.dumps({"results": {"score": 1.0}})

    def remote(fn, tasks, launcher, name, progress=True):
        return [TaskOutcome(t, True, {"log": str(log), "log_text": text}) for t in tasks]

    monkeypatch.setattr("src.scale.launchers.map_tasks", remote)
    assert sweep_script.run_sweep(sweep, LauncherConfig(name="debug"), 8, "test") == {}
    assert log.read_text() == text and summary_rows(sweep)[0]["score"] == 1.0


def test_sae_points_sharing_a_cache_wait_for_the_one_that_makes_it(tmp_path, monkeypatch):
    """Layer 0's first point fails: its group's other point does not race for the cache."""
    ran: list[list[str]] = []

    def fake_map(fn, tasks, launcher, name, progress=True):
        from src.scale.launchers import TaskOutcome

        ran.append([t.point_id for t in tasks])
        # an existing file as the log: nothing to copy back
        return [
            TaskOutcome(t, t.point_id != "layer-0_k-2", {"log": t.config_path}, "boom")
            for t in tasks
        ]

    monkeypatch.setattr("src.scale.launchers.map_tasks", fake_map)
    path = write_config(
        tmp_path, "toy_sae_training_sweep", sweep={"hook.layer": [0, 1], "sae.k": [2, 4]}
    )
    failed = sweep_script.run_sweep(load_sweep(path), LauncherConfig(name="debug"), 8, "test")
    assert ran == [["layer-0_k-2", "layer-1_k-2"], ["layer-1_k-4"]]  # cache makers first
    assert failed["layer-0_k-4"] == "not run: layer-0_k-2, which makes its cache, failed"
    assert failed["layer-0_k-2"].startswith("boom")
