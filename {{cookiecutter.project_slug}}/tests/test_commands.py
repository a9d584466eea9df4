"""Every command under Common Commands in CLAUDE.md runs, offline, on the toy model.

The commands run one after another in a copy of the project (results, caches and figures
land there, not here), in the order CLAUDE.md lists them.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SEED_COMMANDS = ("scripts/run_experiment.py", "scripts/train_sae.py", "generate_all", "pytest")


def common_commands(text: str) -> list[str]:
    """The command lines (not comments) of CLAUDE.md's generated commands section."""
    start, end = "<!-- generated:commands -->", "<!-- /generated:commands -->"
    if start not in text or end not in text:
        raise AssertionError("CLAUDE.md has no generated commands section")
    block = text.split(start, 1)[1].split(end, 1)[0]
    lines = [line.strip() for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith(("#", "```"))]


COMMANDS = common_commands((ROOT / "CLAUDE.md").read_text(encoding="utf-8"))


def test_the_seed_commands_are_listed():
    listed = " ".join(COMMANDS)
    assert all(command in listed for command in SEED_COMMANDS), COMMANDS


def test_commands_parsed_from_markdown():
    text = (
        "x\n<!-- generated:commands -->\n```bash\n# a comment\npython a.py --x 1\n\npytest\n```\n"
        "<!-- /generated:commands -->\npython not_this.py\n"
    )
    assert common_commands(text) == ["python a.py --x 1", "pytest"]


@pytest.fixture(scope="module")
def project_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This project without its caches, outputs and local data (git history kept)."""
    copy = tmp_path_factory.mktemp("commands") / ROOT.name
    skip = shutil.ignore_patterns(
        "__pycache__", ".pytest_cache", ".ruff_cache", "wandb", ".venv", "*.safetensors"
    )
    shutil.copytree(ROOT, copy, ignore=skip, symlinks=True)
    for folder in ("data/activations", "data/results", "notebooks/figures"):
        for path in (copy / folder).glob("*"):
            if path.name != ".gitkeep":
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    return copy


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_command_runs(project_copy: Path, command: str):
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env.update(HF_HUB_OFFLINE="1", MPLBACKEND="Agg", WANDB_MODE="disabled")
    # the toy model trained once, here, is reused by the copy (it retrains when missing)
    env.setdefault("MECH_INTERP_TOY_CACHE", str(ROOT / "data" / "models"))
    argv = shlex.split(command)
    if argv[0] == "python":
        argv[0] = sys.executable
    elif shutil.which(argv[0], path=str(Path(sys.executable).parent)):
        argv[0] = str(Path(sys.executable).parent / argv[0])
    result = subprocess.run(
        argv, cwd=project_copy, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, (
        f"{command} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
