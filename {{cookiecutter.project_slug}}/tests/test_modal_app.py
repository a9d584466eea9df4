"""The Modal app (src/scale/modal_app.py), built and run locally: no call to Modal's servers."""

from __future__ import annotations

import math

import cloudpickle
import pytest

pytest.importorskip("modal")

from src.scale.launchers import LauncherConfig  # noqa: E402
from src.scale.modal_app import (  # noqa: E402
    VOLUME_NAME,
    build_app,
    function_options,
    run_payload,
)


def test_app_builds_offline_with_the_configs_gpu_and_timeout():
    launcher = LauncherConfig(name="modal", modal_gpu="A100", timeout_min=90)
    app, function = build_app(launcher, "sweep")
    assert app.name.endswith("-sweep")
    spec = function._spec_  # what `modal shell` reads: the function's resources
    assert spec.gpus == "A100" and function_options(launcher)["timeout"] == 90 * 60
    assert [str(path) for path in spec.volumes] == ["/root/project/data"]
    assert VOLUME_NAME.endswith("-data")


@pytest.mark.filterwarnings("ignore:The run_payload function is executing locally")
def test_function_body_runs_locally():
    _, function = build_app(LauncherConfig(name="modal"), "sweep")
    assert cloudpickle.loads(function.local(cloudpickle.dumps((math.sqrt, 9.0)))) == (
        True,
        3.0,
        None,
    )


def test_a_failing_task_is_an_answer_not_an_exception():
    ok, result, error = cloudpickle.loads(run_payload(cloudpickle.dumps((math.sqrt, -1.0))))
    assert (ok, result, error) == (False, None, "ValueError: math domain error")


def test_modal_run_entrypoint_runs_the_sweep_script():
    import modal

    from src.scale import modal_app

    assert isinstance(modal_app.main, modal.app.LocalEntrypoint)  # `modal run` finds it
    command = modal_app.sweep_command("configs/toy_induction_sweep.yaml", "H100")
    assert command[1:] == [
        "scripts/sweep.py",
        "--config",
        "configs/toy_induction_sweep.yaml",
        "--launcher",
        "modal",
        "--modal-gpu",
        "H100",
    ]
