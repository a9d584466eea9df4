"""CI: the template's workflow and a generated project's (schema, zizmor, what they run), the `ci`
prompt, and Scientific Python's repo-review on a fresh project."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import DEFAULTS, TEMPLATE, Baked

TEMPLATE_WORKFLOWS = sorted((TEMPLATE / ".github" / "workflows").glob("*.yml"))


def tool(*cmd: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True)


def steps(workflow: dict, job: str) -> list[dict]:
    return workflow["jobs"][job]["steps"]


def run_lines(workflow: dict, job: str) -> list[str]:
    return [
        line.strip() for step in steps(workflow, job) for line in step.get("run", "").split("\n")
    ]


@pytest.fixture(scope="module")
def projects(bake, default_project) -> dict[str, Baked]:
    """A fresh project for each answer to the `ci` prompt."""
    other = "none" if DEFAULTS["ci"][0] == "github" else "github"
    made = {DEFAULTS["ci"][0]: default_project, other: bake(ci=other)}
    # the options that leave files out: no LICENSE, no AGENTS.md, the offline toy model
    made["minimal"] = bake(license="none", multi_agent="no", model_name="toy-induction")
    return made


def test_workflows_validate_against_the_schema(projects):
    github = projects["github"].path / ".github"
    assert sorted(p.relative_to(github).as_posix() for p in github.rglob("*")) == [
        "dependabot.yml",
        "workflows",
        "workflows/ci.yml",
    ]
    workflows = [*TEMPLATE_WORKFLOWS, github / "workflows" / "ci.yml"]
    assert TEMPLATE / ".github" / "workflows" / "tests.yml" in workflows
    result = tool("check-jsonschema", "--builtin-schema", "vendor.github-workflows", *workflows)
    assert result.returncode == 0, result.stdout + result.stderr
    result = tool(
        "check-jsonschema", "--builtin-schema", "vendor.dependabot", github / "dependabot.yml"
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_none_leaves_no_github_folder(projects):
    project = projects["none"]
    assert not (project.path / ".github").exists()
    assert project.git("status", "--porcelain") == ""


def test_zizmor_finds_nothing_high(projects):
    """zizmor (offline audits) on the template's workflows and the project's whole .github/."""
    for target in [*TEMPLATE_WORKFLOWS, projects["github"].path / ".github"]:
        result = tool("zizmor", "--offline", "--format", "json", target)
        assert result.returncode in (0, *range(10, 15)), result.stderr  # 1x: findings, by severity
        findings = json.loads(result.stdout)
        counts = Counter(f["determinations"]["severity"] for f in findings)
        print(f"zizmor {target.name}: {dict(counts) or 'no findings'}")
        assert counts["High"] == 0, [f["ident"] for f in findings]


def test_template_workflow_runs_what_ci_run_runs():
    """Same installs and test command as .ci/run, on the oldest and newest Python offered."""
    workflow = yaml.safe_load((TEMPLATE / ".github" / "workflows" / "tests.yml").read_text())
    ci_run = (TEMPLATE / ".ci" / "run").read_text()
    lines = run_lines(workflow, "tests")
    torch_pin = re.search(r"torch==[\d.]+", ci_run).group()
    assert any(torch_pin in line and "whl/cpu" in line for line in lines)
    assert "python -m pip install -r requirements-test.txt" in lines
    assert "python -m pytest tests" in ci_run and lines[-1] == "python -m pytest tests"
    offered = sorted(DEFAULTS["python_version"], key=lambda v: tuple(map(int, v.split("."))))
    matrix = workflow["jobs"]["tests"]["strategy"]["matrix"]["python-version"]
    assert set(matrix) <= set(offered) and {offered[0], offered[-1]} <= set(matrix)
    assert workflow["permissions"] == {"contents": "read"}


@pytest.mark.slow
def test_project_workflow_lints_tests_and_runs_slow_tests_weekly(projects):
    project = projects["github"]
    workflow = yaml.safe_load(project.read(".github/workflows/ci.yml"))
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as True
    assert {"push", "pull_request", "schedule", "workflow_dispatch"} <= set(triggers)
    assert "pre-commit run --all-files --show-diff-on-failure" in run_lines(workflow, "pre-commit")
    tests = steps(workflow, "tests")
    install = next(s["run"] for s in tests if "torch" in s.get("run", ""))
    assert "--index-url https://download.pytorch.org/whl/cpu" in install
    assert install.index("torch") < install.index('-e ".[dev]"')  # CPU torch before the project
    fast, slow = (s for s in tests if "pytest" in s.get("run", ""))
    assert fast["run"] == "python -m pytest" and "if" not in fast
    assert slow["run"] == "python -m pytest -m slow"
    assert slow["if"] == (
        "github.event_name == 'schedule' || github.event_name == 'workflow_dispatch'"
    )
    for job in ("pre-commit", "tests"):
        setup = next(s for s in steps(workflow, job) if "setup-python" in s["uses"])
        assert setup["with"]["python-version"] == DEFAULTS["python_version"][0]
        assert setup["with"]["cache"] == "pip"
        checkout = steps(workflow, job)[0]
        assert checkout["with"]["persist-credentials"] is False
    # the project's own commit hooks accept its .github/ files
    project.run("pre-commit", "run", "check-yaml", "--files", *project.files())
    project.run("pre-commit", "run", "zizmor", "--all-files")


def repo_review(project: Baked, *args: str, exit_code: int = 0) -> dict[str, dict]:
    """sp-repo-review's results by check; it exits 0 when none fails, 3 when some do."""
    result = project.run("sp-repo-review", ".", "--format", "json", *args, check=False)
    assert result.returncode == exit_code, result.stdout[-2000:] + result.stderr
    return json.loads(result.stdout)["checks"]


@pytest.mark.parametrize("ci", ["github", "none", "minimal"])
def test_repo_review_passes(ci, projects):
    """Every applicable check passes; each skipped one has a reason in pyproject.toml, and
    would fail without it (no stale entries)."""
    project = projects[ci]
    if ci != "minimal":
        assert (".github/workflows/ci.yml" in project.files()) == (ci == "github")
    ignored = tomllib.loads(project.read("pyproject.toml"))["tool"]["repo-review"]["ignore"]
    assert all(reason.strip() and "\n" not in reason for reason in ignored.values())
    checks = repo_review(project)
    counts = Counter(
        {True: "passed", False: "failed", None: "skipped"}[c["result"]] for c in checks.values()
    )
    print(
        f"repo-review ({ci}): {counts['passed']} passed, {counts['failed']} failed, "
        f"{counts['skipped']} skipped ({len(ignored)} listed with a reason in pyproject.toml, "
        "the rest need one of those)"
    )
    assert [name for name, c in checks.items() if c["result"] is False] == []
    assert {name for name, c in checks.items() if c.get("skip_reason")} == set(ignored)
    # --ignore on the command line replaces pyproject's list: every listed check must then fail
    unignored = repo_review(project, "--ignore", "NONE000", exit_code=3)
    assert {name for name in ignored if unignored[name]["result"] is False} == set(ignored)
