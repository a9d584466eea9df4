"""Launchers: run ``fn(item)`` for many items on this machine, a SLURM job array or Modal.

submitit does the distribution (``AutoExecutor``: ``cluster="slurm"`` submits ONE job array
with ``slurm_array_parallelism`` tasks at a time, ``"local"`` runs subprocesses here,
``"debug"`` runs in this process); ``"modal"`` maps the items over a Modal function
(``src.scale.modal_app``). ``map_tasks`` waits for every task and returns one outcome per
item, in item order: a failed task is an outcome with ``ok=False``, its error's last line and
its log file, never an exception, so the others still finish.

``fn`` must be picklable by reference or by value (a module-level function; the project root
and ``scripts/`` are put on the tasks' ``PYTHONPATH``, so a script's function works too). A
launcher that cannot run here is one line of ``LauncherError`` before anything is submitted:
an unknown name, ``slurm`` without ``sbatch``, ``modal`` without the package or credentials.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, StrictInt, StrictStr

from src.utils.config import Section
from src.utils.files import PROJECT_ROOT
from src.utils.validation import Float

LAUNCHERS = ("local", "slurm", "modal", "debug")


class LauncherError(ValueError):
    """A launcher that cannot run here; the message is one line saying what to do."""


class LauncherConfig(Section):
    """Where and how tasks run: the ``launcher:`` section of a config (flags override it).

    ``name``: ``local`` (processes on this machine, ``array_parallelism`` at a time),
    ``slurm`` (one submitit job array), ``modal`` or ``debug`` (in this process, one after
    another). The resources are per task; ``modal_gpu`` is Modal's GPU type ("A100", "H100",
    ...; null: CPU only), its timeout ``timeout_min``."""

    name: StrictStr = "local"
    partition: StrictStr | None = None
    gpus_per_task: Annotated[StrictInt, Field(ge=0)] = 0
    cpus_per_task: Annotated[StrictInt, Field(gt=0)] = 1
    mem_gb: Annotated[Float, Field(gt=0)] | None = None
    timeout_min: Annotated[StrictInt, Field(gt=0)] = 60
    array_parallelism: Annotated[StrictInt, Field(gt=0)] = 8
    folder: StrictStr = "data/launcher_logs"
    modal_gpu: StrictStr | None = None


@dataclass
class TaskOutcome:
    """What one task did: its result, or its error's last line and its log file."""

    item: Any
    ok: bool
    result: Any = None
    error: str | None = None
    log_path: Path | None = None


def check_launcher(launcher: LauncherConfig) -> None:
    """Raise LauncherError (one line) unless ``launcher`` can run from this machine."""
    if launcher.name not in LAUNCHERS:
        raise LauncherError(f"unknown launcher {launcher.name!r}; known: {', '.join(LAUNCHERS)}")
    if launcher.name == "slurm" and shutil.which("sbatch") is None:
        raise LauncherError(
            "launcher 'slurm' needs SLURM's sbatch on PATH (run on a cluster's login node, or "
            "use --launcher local)"
        )
    if launcher.name == "modal":
        from src.scale.modal_app import check_modal

        check_modal()


def map_tasks(
    fn: Callable[[Any], Any],
    items: list[Any],
    launcher: LauncherConfig,
    name: str,
    progress: bool = True,
) -> list[TaskOutcome]:
    """Run ``fn(item)`` for each item on ``launcher`` (one SLURM job array for slurm), wait,
    and return the outcomes in item order; a failed task is an outcome with ``ok=False``.
    Task logs go to ``{launcher.folder}/{name}/``. LauncherError before anything runs when
    the launcher cannot run here."""
    check_launcher(launcher)
    if not items:
        return []
    if launcher.name == "modal":
        from src.scale.modal_app import map_on_modal

        return map_on_modal(fn, items, launcher, name, progress=progress)
    import submitit

    folder = Path(launcher.folder) / name
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=launcher.name)
    parameters: dict[str, Any] = {
        "name": name,
        "timeout_min": launcher.timeout_min,
        "cpus_per_task": launcher.cpus_per_task,
        "gpus_per_node": launcher.gpus_per_task,
    }
    if launcher.mem_gb is not None:
        parameters["mem_gb"] = launcher.mem_gb
    if launcher.name == "slurm":
        parameters["slurm_array_parallelism"] = launcher.array_parallelism
        if launcher.partition is not None:
            parameters["slurm_partition"] = launcher.partition
    if launcher.name != "debug":
        executor.update_parameters(**parameters)
    # the local executor starts every job at once: submit in waves of array_parallelism
    wave = launcher.array_parallelism if launcher.name == "local" else len(items)
    outcomes: list[TaskOutcome] = []
    with _task_pythonpath():
        for start in range(0, len(items), wave):
            chunk = items[start : start + wave]
            jobs = executor.map_array(fn, chunk)
            lost = _wait_in_queue(jobs) if launcher.name == "slurm" else set()
            outcomes += [
                _lost(job, item) if i in lost else _outcome(job, item)
                for i, (job, item) in enumerate(zip(jobs, chunk, strict=True))
            ]
            if progress:
                done = sum(o.ok for o in outcomes)
                print(f"{name}: {done}/{len(outcomes)} tasks ok", file=sys.stderr)
    return outcomes


def _outcome(job: Any, item: Any) -> TaskOutcome:
    """Wait for ``job`` and say what it did (a debug job runs now, without its debugger)."""
    stderr = Path(job.paths.stderr)
    try:
        error = job.exception()  # waits; for a debug job, runs it
    except Exception as e:  # killed, cancelled, timed out, lost
        error = e
    if error is None:
        return TaskOutcome(item, True, job.result(), log_path=stderr)
    return TaskOutcome(item, False, error=_last_line(error), log_path=stderr)


def _wait_in_queue(jobs: list[Any], poll_s: float = 1.0, grace_s: float = 5.0) -> set[int]:
    """Wait until every SLURM job has its result file or has left the queue; return the
    indices of those that left without one (scancel, time limit, node lost). submitit alone
    asks ``sacct``, which clusters without accounting lack, and would wait for them forever."""
    import subprocess

    pending, gone_since, lost = set(range(len(jobs))), {}, set()
    while pending:
        listed = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True)
        queued = set(listed.stdout.split()) if listed.returncode == 0 else None
        now = time.monotonic()
        for i in sorted(pending):
            if Path(jobs[i].paths.result_pickle).exists():
                pending.discard(i)
            elif (
                queued is not None
                and jobs[i].job_id not in queued
                and now - gone_since.setdefault(i, now) > grace_s  # its result may be on the way
            ):
                pending.discard(i)
                lost.add(i)
        if pending:
            time.sleep(poll_s)
    return lost


def _lost(job: Any, item: Any) -> TaskOutcome:
    error = (
        f"job {job.job_id} left the queue without a result (cancelled, out of time or its "
        "node lost)"
    )
    return TaskOutcome(item, False, error=error, log_path=Path(job.paths.stderr))


def _last_line(error: BaseException) -> str:
    """An error's last meaningful line: for a failed submitit job, the last line of the
    task's traceback (between the ``-----`` rules of its message)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    rules = [i for i, line in enumerate(lines) if set(line) == {"-"}]
    if len(rules) >= 2 and rules[-1] > rules[-2] + 1:
        lines = lines[rules[-2] + 1 : rules[-1]]
    text = lines[-1] if lines else type(error).__name__
    return text if ":" in text else f"{type(error).__name__}: {text}"


@contextmanager
def _task_pythonpath() -> Iterator[None]:
    """The project root and ``scripts/`` on ``PYTHONPATH`` while submitting: tasks (local
    subprocesses, SLURM jobs, which inherit the environment) import what ``fn`` needs."""
    old = os.environ.get("PYTHONPATH")
    parts = [str(PROJECT_ROOT), str(PROJECT_ROOT / "scripts"), *([old] if old else [])]
    os.environ["PYTHONPATH"] = os.pathsep.join(parts)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


# --- command line ------------------------------------------------------------------------


def add_launcher_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags that override the config's ``launcher:`` section."""
    group = parser.add_argument_group("launcher (override the config's launcher: section)")
    group.add_argument("--launcher", help=f"where tasks run: {', '.join(LAUNCHERS)}")
    group.add_argument("--partition", help="SLURM partition")
    group.add_argument("--gpus", type=int, dest="gpus_per_task", help="GPUs per task")
    group.add_argument("--cpus", type=int, dest="cpus_per_task", help="CPUs per task")
    group.add_argument("--mem-gb", type=float, dest="mem_gb", help="memory per task (GB)")
    group.add_argument("--time-min", type=int, dest="timeout_min", help="time limit per task")
    group.add_argument(
        "--parallelism", type=int, dest="array_parallelism", help="tasks running at once"
    )
    group.add_argument("--modal-gpu", help="Modal GPU type, e.g. A100 (modal only)")
    group.add_argument("--launcher-folder", dest="folder", help="where task logs go")


def launcher_from_args(
    args: argparse.Namespace, base: LauncherConfig | None = None
) -> LauncherConfig:
    """``base`` (default: LauncherConfig()) with the flags that were given; LauncherError
    (one line) for an unknown launcher or a bad value."""
    from src.utils.validation import ConfigError, validate

    base = base or LauncherConfig()
    flags = {
        "name": getattr(args, "launcher", None),
        **{
            key: getattr(args, key, None)
            for key in (
                "partition",
                "gpus_per_task",
                "cpus_per_task",
                "mem_gb",
                "timeout_min",
                "array_parallelism",
                "modal_gpu",
                "folder",
            )
        },
    }
    changes = {key: value for key, value in flags.items() if value is not None}
    try:
        launcher = validate(LauncherConfig, base.model_dump() | changes)
    except ConfigError as e:
        raise LauncherError(f"launcher: {e}") from None
    if launcher.name not in LAUNCHERS:
        raise LauncherError(f"unknown launcher {launcher.name!r}; known: {', '.join(LAUNCHERS)}")
    return launcher
