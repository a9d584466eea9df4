"""Launchers (src/scale/launchers.py): submitit's debug and local executors run the tasks,
failures become outcomes, and a launcher that cannot run here is one line before anything."""

from __future__ import annotations

import argparse
import math
import os

import pytest

from src.scale.launchers import (
    LauncherConfig,
    LauncherError,
    add_launcher_arguments,
    launcher_from_args,
    map_tasks,
)


def test_debug_runs_in_order_and_reports_failures(tmp_path):
    launcher = LauncherConfig(name="debug", folder=str(tmp_path))
    outcomes = map_tasks(math.sqrt, [9.0, -1.0, 16.0], launcher, "t", progress=False)
    assert [o.item for o in outcomes] == [9.0, -1.0, 16.0]
    assert [o.ok for o in outcomes] == [True, False, True]
    assert [o.result for o in outcomes] == [3.0, None, 4.0]
    assert outcomes[1].error == "ValueError: math domain error"
    assert outcomes[1].log_path is not None and outcomes[1].log_path.is_relative_to(tmp_path)


def test_local_runs_subprocesses_with_their_logs(tmp_path):
    launcher = LauncherConfig(name="local", folder=str(tmp_path), array_parallelism=2)
    outcomes = map_tasks(math.sqrt, [4.0, -4.0], launcher, "t", progress=False)
    assert [o.result for o in outcomes] == [2.0, None]
    assert outcomes[1].error == "ValueError: math domain error"
    assert "math domain error" in outcomes[1].log_path.read_text()  # the task's traceback


def test_no_items_no_tasks(tmp_path):
    assert map_tasks(math.sqrt, [], LauncherConfig(name="debug", folder=str(tmp_path)), "t") == []


def test_unknown_launcher_is_one_line(tmp_path):
    with pytest.raises(LauncherError, match=r"^unknown launcher 'lsf'; known: local, slurm"):
        map_tasks(math.sqrt, [1.0], LauncherConfig(name="lsf", folder=str(tmp_path)), "t")
    assert not any(tmp_path.iterdir())  # nothing written


def test_slurm_without_sbatch_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(LauncherError, match="needs SLURM's sbatch on PATH") as info:
        map_tasks(math.sqrt, [1.0], LauncherConfig(name="slurm", folder=str(tmp_path)), "t")
    assert "\n" not in str(info.value) and not any(tmp_path.iterdir())


def test_modal_without_credentials_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("MODAL_TOKEN_ID", raising=False)
    with pytest.raises(LauncherError, match=r"needs Modal credentials: run `modal token new`"):
        map_tasks(math.sqrt, [1.0], LauncherConfig(name="modal", folder=str(tmp_path)), "t")


def test_modal_not_installed_is_one_line(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "modal", None)  # import modal -> ImportError
    with pytest.raises(LauncherError, match=r"needs the modal package: pip install"):
        map_tasks(math.sqrt, [1.0], LauncherConfig(name="modal", folder=str(tmp_path)), "t")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_launcher_arguments(parser)
    return parser.parse_args(argv)


def test_flags_override_the_config_section():
    base = LauncherConfig(name="slurm", partition="gpu", gpus_per_task=1, timeout_min=30)
    args = parse(["--partition", "debug", "--mem-gb", "4", "--parallelism", "2"])
    launcher = launcher_from_args(args, base)
    assert (launcher.name, launcher.partition, launcher.gpus_per_task) == ("slurm", "debug", 1)
    assert (launcher.mem_gb, launcher.array_parallelism, launcher.timeout_min) == (4.0, 2, 30)
    assert launcher_from_args(parse([])) == LauncherConfig()


def test_bad_flags_are_one_line():
    with pytest.raises(LauncherError, match=r"^unknown launcher 'k8s'"):
        launcher_from_args(parse(["--launcher", "k8s"]))
    with pytest.raises(LauncherError, match=r"^launcher: array_parallelism: must be > 0, got 0"):
        launcher_from_args(parse(["--parallelism", "0"]))


def test_tasks_get_the_project_on_their_path(tmp_path):
    launcher = LauncherConfig(name="debug", folder=str(tmp_path))
    (outcome,) = map_tasks(os.getenv, ["PYTHONPATH"], launcher, "t", progress=False)
    assert outcome.result.split(os.pathsep)[1].endswith("scripts")


def test_slurm_tasks_that_leave_the_queue_without_a_result_are_lost(tmp_path, monkeypatch):
    """Without SLURM accounting (sacct) submitit would wait forever for a cancelled task:
    a task gone from squeue without its result file is lost, one with its result is done."""
    from types import SimpleNamespace

    from src.scale.launchers import _wait_in_queue

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text("#!/bin/sh\necho 7_9\n")  # another task still queued
    (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    (tmp_path / "7_0.pkl").write_bytes(b"done")
    jobs = [
        SimpleNamespace(
            job_id=job_id, paths=SimpleNamespace(result_pickle=tmp_path / f"{job_id}.pkl")
        )
        for job_id in ("7_0", "7_1")
    ]
    assert _wait_in_queue(jobs, poll_s=0.01, grace_s=0.05) == {1}
