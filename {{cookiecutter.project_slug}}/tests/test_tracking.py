"""Experiment logs: complete JSON with provenance, written atomically."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from src.utils import files
from src.utils.tracking import git_state, log_experiment

CONFIG = {"model": {"name": "toy-induction"}, "data": {"n_samples": 10, "layers": (1, 2)}}
RESULTS = {"clean_logit_diff": 3.5, "nested": {"accuracy": 1.0}}


def test_log_experiment_writes_json(tmp_path: Path) -> None:
    path = log_experiment(
        "run", CONFIG, RESULTS, "a note", results_dir=tmp_path / "r", wall_time_s=1.5
    )
    assert path.parent == tmp_path / "r" and re.fullmatch(r"run_\d{8}_\d{6}\.json", path.name)
    entry = json.loads(path.read_text())
    assert entry["name"] == "run" and entry["notes"] == "a note" and entry["wall_time_s"] == 1.5
    assert entry["config"]["data"]["layers"] == [1, 2] and entry["results"] == RESULTS
    assert entry["timestamp"].startswith(path.name[4:8])  # the year
    assert entry["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", entry["git_commit"])
    assert entry["git_dirty"] in (None, True, False)
    versions = entry["versions"]
    assert versions["torch"] and versions["transformer-lens"] and versions["numpy"]
    assert re.fullmatch(r"3\.\d+\.\d+.*", versions["python"])
    assert os.listdir(tmp_path / "r") == [path.name]  # no temp files left


def test_same_second_runs_do_not_overwrite(tmp_path: Path) -> None:
    paths = {log_experiment("run", CONFIG, {"i": i}, results_dir=tmp_path) for i in range(3)}
    assert len(paths) == 3 and len(list(tmp_path.iterdir())) == 3


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        log_experiment("run", CONFIG, RESULTS, results_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_bad_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="plain file name"):
        log_experiment("../escape", CONFIG, RESULTS, results_dir=tmp_path)


def test_git_state(tmp_path: Path) -> None:
    assert git_state(tmp_path) == (None, None)  # not a repository
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "a.txt").write_text("a")
    subprocess.run([*git, "add", "a.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True)
    assert git_state(tmp_path) == (head.stdout.strip(), False)
    (tmp_path / "a.txt").write_text("b")
    assert git_state(tmp_path) == (head.stdout.strip(), True)
{%- if cookiecutter.experiment_tracking == "wandb" %}


def test_log_to_wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    path = log_experiment("run", CONFIG, RESULTS, results_dir=tmp_path / "r", use_wandb=True)
    assert path.exists()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_wandb_not_logged_in_keeps_the_json_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Online mode with no key anywhere: the JSON log is written, one line says what to do."""
    pytest.importorskip("wandb")
    from src.utils import tracking

    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    path = log_experiment("run", CONFIG, RESULTS, results_dir=tmp_path / "r", use_wandb=True)
    assert json.loads(path.read_text())["results"] == RESULTS
    assert [r.getMessage() for r in caplog.records] == [tracking.WANDB_NOT_LOGGED_IN]
    assert "wandb login" in tracking.WANDB_NOT_LOGGED_IN
    assert "WANDB_MODE=offline" in tracking.WANDB_NOT_LOGGED_IN
    assert not (tmp_path / "wandb").exists()  # wandb was never started
    (tmp_path / "netrc").write_text("machine api.wandb.ai login user password " + "k" * 40 + "\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert tracking.wandb_ready()  # `wandb login` saved a key: it logs
{%- endif %}
