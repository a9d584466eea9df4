"""Sweeps and SAE arrays of a generated project on a real SLURM cluster (submitit job arrays):
every point's result and the summary, and a sweep whose task is cancelled (scancel) finishes
when rerun with the summary of an uninterrupted one. Skips where SLURM cannot run."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

SWEEP = "configs/toy_induction_sweep.yaml"
RESULTS = Path("data/results/toy_induction_sweep/sweep")


@pytest.fixture(scope="module")
def project(bake):
    return bake()


def sweep_command(config: str, *flags: str) -> list[str]:
    return [sys.executable, "scripts/sweep.py", "--config", config, "--launcher", "slurm", *flags]


def rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text().splitlines()))


def test_sweep_on_slurm_then_resume_after_scancel(project, slurm_cluster, tmp_path):
    flags = ("--parallelism", "2", "--launcher-folder", str(tmp_path / "logs"))
    first = project.run(*sweep_command(SWEEP, *flags), env=slurm_cluster, timeout=600)
    summary = project.path / RESULTS / "summary.csv"
    table = rows(summary)
    assert [r["status"] for r in table] == ["done"] * 4, first.stdout
    assert all(0 < float(r["head_out_top_effect"]) < 1.5 for r in table)
    assert "toy_induction_sweep (slurm): 4/4 points done" in first.stdout
    assert (project.path / RESULTS / "summary.png").stat().st_size > 1000
    tasks = (tmp_path / "logs" / "sweep_toy_induction_sweep").glob("[0-9]*_[0-9]*")
    assert len({task.name.split("_")[0] for task in tasks}) == 1  # one job array: <job>_<task>
    uninterrupted = summary.read_text()

    # Lose two points and run again, cancelling one array task while it waits or runs.
    for point in ("seed-0_layers-1", "seed-1_layers-1"):
        shutil.rmtree(project.path / RESULTS / point)
    env = {k: v for k, v in slurm_cluster.items() if k != "VIRTUAL_ENV"}
    flags = ("--parallelism", "1", "--launcher-folder", str(tmp_path / "logs2"))
    driver = subprocess.Popen(
        sweep_command(SWEEP, *flags),
        cwd=project.path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    cancelled = None
    deadline = time.monotonic() + 300
    while cancelled is None and time.monotonic() < deadline and driver.poll() is None:
        pending = subprocess.run(
            ["squeue", "-h", "-r", "-t", "PENDING", "-o", "%i"],
            env=env,
            capture_output=True,
            text=True,
        ).stdout.split()
        second = [task for task in pending if task.endswith("_1")]  # waits for parallelism 1
        if second:
            cancelled = max(second, key=lambda task: int(task.split("_")[0]))
            subprocess.run(["scancel", cancelled], env=env, check=True)
        time.sleep(0.2)
    out, err = driver.communicate(timeout=600)
    assert cancelled is not None, f"never saw the array in squeue\n{out}\n{err}"
    assert driver.returncode == 1, out + err
    assert "2 done, 2 to run" in err
    assert f"failed: seed-1_layers-1: job {cancelled} left the queue without a result" in out
    assert [r["status"][:6] for r in rows(summary)] == ["done", "done", "done", "failed"]

    rerun = project.run(*sweep_command(SWEEP, *flags), env=slurm_cluster, timeout=600)
    assert "3 done, 1 to run" in rerun.stderr
    assert summary.read_text() == uninterrupted


def test_sae_array_on_slurm(project, slurm_cluster, tmp_path):
    """One SAE per layer (two caches, one task each), k from the config."""
    raw = yaml.safe_load(project.read("configs/toy_sae_training_sweep.yaml"))
    raw["sweep"] = {"hook.layer": [0, 1]}
    (project.path / "configs/sae_layers.yaml").write_text(yaml.safe_dump(raw))
    config = "configs/sae_layers.yaml"
    flags = ("--parallelism", "2", "--launcher-folder", str(tmp_path / "logs"))
    result = project.run(*sweep_command(config, *flags), env=slurm_cluster, timeout=900)
    folder = project.path / "data/results/sae_toy_sweep/sweep"
    table = rows(folder / "summary.csv")
    assert [(r["hook.layer"], r["status"]) for r in table] == [("0", "done"), ("1", "done")], (
        result.stdout
    )
    assert [float(r["l0"]) for r in table] == [4.0, 4.0]  # topk, k 4
    for r in table:
        assert float(r["explained_variance"]) > 0.3
        sae = folder / r["point"] / "sae"
        assert (sae / "sae_weights.safetensors").is_file() and (sae / "cfg.json").is_file()
    load = (
        "import sys; from sae_lens import SAE; "
        "print(SAE.load_from_disk(sys.argv[1], device='cpu').cfg.d_sae)"
    )
    loaded = project.run(sys.executable, "-c", load, str(folder / table[0]["point"] / "sae"))
    assert loaded.stdout.strip() == "256"
    assert os.environ.get("SLURM_CONF") is None  # the fixture's cluster leaves ours alone
