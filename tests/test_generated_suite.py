"""The generated project's own test suite passes, run as its user would run it."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.slow  # runs the generated project's own test suites


def summary(output: str) -> dict[str, int]:
    """Counts from pytest's closing line, e.g. {'passed': 30, 'deselected': 2}."""
    return {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", output.splitlines()[-1])}


def test_default_project_suite_passes(default_project):
    result = default_project.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider")
    counts = summary(result.stdout)
    assert counts.get("passed", 0) >= 10 and "failed" not in counts and "error" not in counts


def test_default_project_slow_suite_passes(default_project):
    result = default_project.run(
        "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "slow", check=False
    )
    if result.returncode == 5:
        pytest.skip("the generated project has no slow tests")
    assert result.returncode == 0, result.stdout[-4000:]


@pytest.mark.parametrize("options", [{"experiment_tracking": "wandb", "multi_agent": "no"}])
def test_option_variant_suite_passes(bake, options):
    project = bake(**options)
    result = project.run(
        "python",
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests/test_tracking.py",
        "tests/test_run_experiment.py",
    )
    assert "failed" not in summary(result.stdout)
