"""The template repository's own files agree with each other."""

from __future__ import annotations

import json
import re
import tomllib

from conftest import DEFAULTS, TEMPLATE


def requirement_names(lines: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", line.strip())[0].lower() for line in lines if line.strip()}


def test_test_requirements_cover_the_generated_project(bake):
    project = bake(experiment_tracking="wandb")
    pyproject = tomllib.loads(project.read("pyproject.toml"))["project"]
    needed = requirement_names(
        pyproject["dependencies"] + pyproject["optional-dependencies"]["dev"]
    )
    listed = requirement_names(
        line
        for line in (TEMPLATE / "requirements-test.txt").read_text().splitlines()
        if not line.lstrip().startswith("#")
    )
    assert needed - listed == set()


def test_readme_documents_every_prompt():
    readme = (TEMPLATE / "README.md").read_text()
    prompts = [key for key in DEFAULTS if not key.startswith("_")]
    assert [key for key in prompts if f"| `{key}` |" not in readme] == []
    help_text = DEFAULTS["__prompts__"]
    assert sorted(help_text) == sorted(prompts)


def test_ci_runs_the_readme_test_command():
    readme = (TEMPLATE / "README.md").read_text()
    ci = (TEMPLATE / ".ci" / "run").read_text()
    command = "python -m pytest tests"
    assert command in readme and command in ci
    assert ci.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in ci


def test_fast_mode_is_documented_and_registered():
    readme = (TEMPLATE / "README.md").read_text()
    assert 'python -m pytest tests -m "not slow"' in readme
    assert "slow:" in (TEMPLATE / "pytest.ini").read_text()  # --strict-markers would need it


def test_updating_is_documented_with_releases():
    """README's "Updating a project" names the commands, a release tag and .rej resolution; the
    CHANGELOG has release headings; every skipped path has its reason in the README."""
    readme = (TEMPLATE / "README.md").read_text()
    section = readme.split("## Updating a project")[1].split("\n## ")[0]
    for needed in ("cruft update ", "cruft update --checkout v", "cruft diff", ".rej"):
        assert needed in section, needed
    changelog = (TEMPLATE / "CHANGELOG.md").read_text()
    assert re.search(r"^## \d+\.\d+\.\d+ - \d{4}-\d{2}-\d{2}$", changelog, re.M)
    pyproject = (TEMPLATE / "{{cookiecutter.project_slug}}" / "pyproject.toml").read_text()
    skip = re.search(r"^\[tool\.cruft\]\nskip = (\[.*\])$", pyproject, re.M).group(1)
    for path in json.loads(skip):
        assert f"`{path}" in section, path
