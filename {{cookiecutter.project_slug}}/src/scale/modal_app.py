"""The Modal app: the same tasks as on SLURM, on Modal's GPUs (``launcher.name: modal``).

``build_app(launcher)`` makes a ``modal.App`` whose image installs this project's own
dependencies (``pyproject.toml``) and holds its code, with a ``modal.Volume`` mounted as
``data/`` (models, caches, results persist between runs), the GPU type ``launcher.modal_gpu``
and the timeout ``launcher.timeout_min``. Its one function runs a pickled ``(fn, item)`` and
returns the pickled result or the error's last line, so ``map_on_modal`` returns the same
outcomes as ``src.scale.launchers.map_tasks`` on SLURM. Volumes are last-write-wins: every task
must write only its own files (sweep points and cache shards do).

Nothing here contacts Modal until ``map_on_modal`` runs the app; the tests build the app and
call the function's body with ``.local()``. Real runs need ``pip install -e .[modal]`` and
credentials (``modal token new``, which writes ``~/.modal.toml``; or ``MODAL_TOKEN_ID`` and
``MODAL_TOKEN_SECRET``); Modal bills the GPU time.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from src.scale.launchers import LauncherConfig, LauncherError, TaskOutcome
from src.utils.files import PROJECT_ROOT

REMOTE_ROOT = "/root/project"  # where the image holds the project's code
PROJECT_NAME = re.sub(r"[^A-Za-z0-9._-]+", "-", PROJECT_ROOT.name).strip("-")[:40] or "project"
VOLUME_NAME = f"{PROJECT_NAME}-data"  # the Volume mounted as data/
LOCAL_ONLY = ("data", ".git", ".venv", "**/__pycache__", "**/.pytest_cache", "**/.ruff_cache")


def check_modal() -> None:
    """LauncherError (one line) unless the ``modal`` package and credentials are here."""
    try:
        import modal  # noqa: F401
    except ImportError:
        raise LauncherError(
            "launcher 'modal' needs the modal package: pip install -e '.[modal]'"
        ) from None
    if not (Path.home() / ".modal.toml").is_file() and not os.environ.get("MODAL_TOKEN_ID"):
        raise LauncherError(
            "launcher 'modal' needs Modal credentials: run `modal token new` (writes "
            "~/.modal.toml) or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET"
        )


def run_payload(payload: bytes) -> bytes:
    """The Modal function's body: unpickle ``(fn, item)``, run it in the project's folder and
    return the pickled ``(ok, result, error line)``; the Volume is committed after."""
    import cloudpickle

    if Path(REMOTE_ROOT).is_dir():  # in the container (``.local()`` runs where it is)
        os.chdir(REMOTE_ROOT)
        for folder in (REMOTE_ROOT, f"{REMOTE_ROOT}/scripts"):
            if folder not in sys.path:
                sys.path.insert(0, folder)
    fn, item = cloudpickle.loads(payload)
    try:
        answer = (True, fn(item), None)
    except Exception as e:
        traceback.print_exc()
        answer = (False, None, f"{type(e).__name__}: {e}".splitlines()[0])
    if Path(REMOTE_ROOT).is_dir():
        import modal

        modal.Volume.from_name(VOLUME_NAME).commit()
    return cloudpickle.dumps(answer)


def function_options(launcher: LauncherConfig) -> dict[str, Any]:
    """The Modal function's resources from the ``launcher:`` section."""
    return {
        "gpu": launcher.modal_gpu,
        "timeout": launcher.timeout_min * 60,
        "cpu": float(launcher.cpus_per_task),
        "memory": None if launcher.mem_gb is None else int(launcher.mem_gb * 1024),
        "max_containers": launcher.array_parallelism,
    }


def build_app(launcher: LauncherConfig, name: str = "tasks") -> tuple[Any, Any]:
    """(app, function): a ``modal.App`` named after the project and ``name``, and its
    function running ``run_payload`` with ``function_options(launcher)``. Builds
    descriptions only: no network."""
    import modal

    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    image = (
        modal.Image.debian_slim(python_version=python)
        .pip_install_from_pyproject(str(PROJECT_ROOT / "pyproject.toml"))
        .env({"PYTHONPATH": f"{REMOTE_ROOT}:{REMOTE_ROOT}/scripts"})
        .add_local_dir(PROJECT_ROOT, REMOTE_ROOT, ignore=list(LOCAL_ONLY))
    )
    volume = modal.Volume.from_name(VOLUME_NAME, create_if_missing=True)
    app = modal.App(f"{PROJECT_NAME}-{name}")
    function = app.function(
        image=image,
        volumes={f"{REMOTE_ROOT}/data": volume},
        serialized=True,
        name="run_payload",
        **function_options(launcher),
    )(run_payload)
    return app, function


def map_on_modal(
    fn: Callable[[Any], Any],
    items: list[Any],
    launcher: LauncherConfig,
    name: str,
    progress: bool = True,
) -> list[TaskOutcome]:
    """Run ``fn(item)`` for every item as Modal function calls; outcomes in item order."""
    import cloudpickle
    import modal

    check_modal()
    app, function = build_app(launcher, name)
    payloads = [cloudpickle.dumps((fn, item)) for item in items]
    if progress:
        print(f"{name}: {len(items)} tasks on Modal (gpu={launcher.modal_gpu})", file=sys.stderr)
    with modal.enable_output(), app.run():
        answers = list(function.map(payloads, order_outputs=True, return_exceptions=True))
    outcomes = []
    for item, answer in zip(items, answers, strict=True):
        if isinstance(answer, BaseException):
            outcomes.append(TaskOutcome(item, False, error=_line(answer)))
        else:
            ok, result, error = cloudpickle.loads(answer)
            outcomes.append(TaskOutcome(item, ok, result, error))
    return outcomes


def _line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1] if text else ''}"


def sweep_command(config: str, gpu: str = "") -> list[str]:
    """The sweep that ``modal run src/scale/modal_app.py --config X`` starts."""
    command = [sys.executable, "scripts/sweep.py", "--config", config, "--launcher", "modal"]
    return command + (["--modal-gpu", gpu] if gpu else [])


try:  # `modal run src/scale/modal_app.py --config configs/x.yaml [--gpu A100]`
    import modal as _modal
except ImportError:  # the modal extra is not installed: the launcher says so when used
    _modal = None
if _modal is not None:
    app = _modal.App(f"{PROJECT_NAME}-sweep")

    @app.local_entrypoint()
    def main(config: str, gpu: str = "") -> None:
        """Run a config's sweep on Modal (as ``scripts/sweep.py --launcher modal`` does)."""
        import subprocess

        subprocess.run(sweep_command(config, gpu), cwd=PROJECT_ROOT, check=True)
