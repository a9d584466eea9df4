"""Fixtures for the template's tests: a clean snapshot of the template and a `bake()` helper."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from cookiecutter.main import cookiecutter
from slurm_cluster import slurm_cluster  # noqa: F401  (a fixture: a real single-node SLURM)

TEMPLATE = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Caches shared by every baked project and kept between local runs: the toy model trains once
# and pre-commit installs its hook environments once. Override with the same variables.
SHARED = Path(tempfile.gettempdir()) / "mech-interp-template-tests"
CACHES = {".git", "__pycache__", ".pytest_cache", ".ruff_cache", "wandb"}
DEFAULTS = json.loads((TEMPLATE / "cookiecutter.json").read_text(encoding="utf-8"))
# The default answers' name and slug (the slug derived as cookiecutter.json does), so that a
# fork which changes the defaults runs these tests unchanged.
DEFAULT_NAME = DEFAULTS["project_name"]
DEFAULT_SLUG = DEFAULT_NAME.lower().replace(" ", "-").replace("_", "-").replace(".", "-")


@dataclass
class Baked:
    """A generated project with helpers to inspect and run things in it."""

    path: Path

    def files(self) -> set[str]:
        """Every file, relative, outside .git and the caches that running tools leave."""
        return {
            p.relative_to(self.path).as_posix()
            for p in self.path.rglob("*")
            if p.is_file()
            and not CACHES & set(p.relative_to(self.path).parts)
            and not p.relative_to(self.path).as_posix().startswith("data/models/")
        }

    def read(self, name: str) -> str:
        return (self.path / name).read_text(encoding="utf-8")

    def run(self, *cmd: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        """Run a command in the project, with VIRTUAL_ENV dropped so the project's tools resolve."""
        env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
        env.update(kwargs.pop("env", {}))
        result = subprocess.run(
            cmd, cwd=self.path, capture_output=True, text=True, env=env, **kwargs
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} exited {result.returncode}\n{result.stdout[-4000:]}\n"
                f"{result.stderr[-4000:]}"
            )
        return result

    def git(self, *args: str) -> str:
        return self.run("git", *args).stdout.strip()


def snapshot(dest: Path) -> Path:
    """Copy the template as a clone would hold it: tracked and untracked-but-not-ignored files."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=TEMPLATE,
        capture_output=True,
        text=True,
    )
    if listed.returncode == 0:
        for name in filter(None, listed.stdout.split("\0")):
            source = TEMPLATE / name
            if source.is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, dest / name)
    else:  # not a git checkout (a downloaded archive): copy all but caches
        caches = shutil.ignore_patterns(
            ".git", ".venv", "venv", "__pycache__", ".pytest_cache", ".ruff_cache"
        )

        def ignore(folder: str, names: list[str]) -> set[str]:
            # the toy-model cache data/models/, not src/models/
            toy_cache = {"models"} if Path(folder).name == "data" else set()
            return set(caches(folder, names)) | (toy_cache & set(names))

        shutil.copytree(TEMPLATE, dest, dirs_exist_ok=True, ignore=ignore)
    return dest


@pytest.fixture(scope="session", autouse=True)
def test_env(tmp_path_factory):
    """Environment every bake and subprocess sees: tools on PATH, shared caches, no replay in ~."""
    config = tmp_path_factory.mktemp("cookiecutter") / "config.yaml"
    config.write_text(
        f"cookiecutters_dir: {config.parent / 'templates'}\n"
        f"replay_dir: {config.parent / 'replay'}\n"
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")
        mp.setenv("COOKIECUTTER_CONFIG", str(config))
        mp.setenv(
            "MECH_INTERP_TOY_CACHE", os.environ.get("MECH_INTERP_TOY_CACHE", str(SHARED / "toy"))
        )
        mp.setenv("PRE_COMMIT_HOME", os.environ.get("PRE_COMMIT_HOME", str(SHARED / "pre-commit")))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("WANDB_MODE", "offline")
        yield


@pytest.fixture(scope="session")
def template(tmp_path_factory) -> Path:
    return snapshot(tmp_path_factory.mktemp("template"))


@pytest.fixture(scope="session")
def bake(template, tmp_path_factory):
    """`bake(**answers)` renders the template with the hooks and returns a `Baked` project."""

    def _bake(**answers: str) -> Baked:
        out = tmp_path_factory.mktemp("out")
        path = cookiecutter(
            str(template), no_input=True, extra_context=answers, output_dir=str(out)
        )
        return Baked(Path(path))

    return _bake


@pytest.fixture(scope="session")
def default_project(bake) -> Baked:
    """The project `cookiecutter --no-input` makes; read-only for the tests that share it."""
    return bake()


def cli(template: Path, out: Path, *args: str, env: dict[str, str] | None = None):
    """Run the cookiecutter command line as a user would, answers given as key=value."""
    return subprocess.run(
        [sys.executable, "-m", "cookiecutter", "--no-input", "-o", str(out), str(template), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
