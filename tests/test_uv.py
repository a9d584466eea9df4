"""uv as well as pip: the generated project's PEP 735 `dev` group equals its `dev` extra, uv
resolves the project against PyPI, and `--extra cpu` / `--extra cuda` take torch from PyTorch's
index (checked where that index is reachable)."""

from __future__ import annotations

import shutil
import socket
import tomllib

import pytest
from conftest import BIN, SHARED, Baked

UV = shutil.which("uv") or (str(BIN / "uv") if (BIN / "uv").exists() else None)
needs_uv = pytest.mark.skipif(UV is None, reason="uv is not installed (pip install uv)")


def reachable(host: str) -> bool:
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError:
        return False
    return True


def test_dev_group_is_the_dev_extra(default_project):
    pyproject = tomllib.loads(default_project.read("pyproject.toml"))
    dev_extra = pyproject["project"]["optional-dependencies"]["dev"]
    assert pyproject["dependency-groups"]["dev"] == dev_extra  # uv sync == pip install .[dev]
    uv = pyproject["tool"]["uv"]
    indexes = {index["name"]: index for index in uv["index"]}
    assert {source["extra"]: source["index"] for source in uv["sources"]["torch"]} == {
        "cpu": "pytorch-cpu",
        "cuda": "pytorch-cuda",
    }
    assert indexes["pytorch-cpu"]["url"] == "https://download.pytorch.org/whl/cpu"
    assert all(index["explicit"] for index in indexes.values())  # torch only, nothing else
    assert uv["conflicts"] == [[{"extra": "cpu"}, {"extra": "cuda"}]]
    readme = default_project.read("README.md")
    assert "uv sync --extra cpu" in readme and "uv sync --extra cuda" in readme


def locked(project: Baked, *args: str) -> dict:
    project.run(UV, "lock", *args, env={"UV_CACHE_DIR": str(SHARED / "uv")})
    return tomllib.loads(project.read("uv.lock"))


@pytest.mark.slow
@needs_uv
def test_uv_resolves_the_project_against_pypi(bake):
    project = bake()
    lock = locked(project, "--no-sources")  # PyPI only: the torch index is left out
    packages = {package["name"] for package in lock["package"]}
    assert {"torch", "transformer-lens", "sae-lens", "pytest", "pre-commit"} <= packages
    (me,) = (p for p in lock["package"] if p["name"] == project.path.name)
    assert {d["name"] for d in me["dev-dependencies"]["dev"]} >= {"pytest", "ruff", "nbstripout"}


@pytest.mark.slow
@needs_uv
def test_uv_extra_picks_the_torch_build(bake):
    if not reachable("download.pytorch.org"):
        pytest.skip(
            "the PyTorch index (download.pytorch.org) is not reachable from this machine: "
            "uv's --extra cpu/cuda resolution is checked where it is (CI)"
        )
    lock = locked(bake())
    sources = {p["source"].get("registry", "") for p in lock["package"] if p["name"] == "torch"}
    assert any("whl/cpu" in s for s in sources) and any("whl/cu" in s for s in sources)
