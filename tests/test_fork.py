"""Fork and edit: a fork whose only edits are new answers' defaults passes the template's tests."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # runs the template's tests again on a fork

FORK_DEFAULTS = {
    "project_name": "Gemma Feature Atlas",
    "research_goal": "Map the SAE features of a small model's middle layers.",
    "research_questions": "Which features are monosemantic?; How do they compose?",
    "author_name": "Ada Lovelace",
    "author_email": "ada@example.org",
    "compute": "A100 via Modal",
    "gpu_memory_gb": "80",
}
# Choice prompts: the first entry is the default, so a fork reorders them.
FORK_FIRST_CHOICES = {
    "model_name": "toy-induction",
    "python_version": "3.12",
    "multi_agent": "no",
    "experiment_tracking": "wandb",
    "license": "Apache-2.0",
    "ci": "none",
}


# The template's tests that do not run the generated suite (that one is the same code).
FORK_TESTS = [
    "tests/test_render.py",
    "tests/test_hooks.py",
    "tests/test_cruft.py",
    "tests/test_render_in_place.py",
]


def test_fork_with_new_defaults_passes_the_template_tests(template, tmp_path):
    fork = tmp_path / "fork"
    shutil.copytree(template, fork)
    subprocess.run(["git", "init", "-q"], cwd=fork, check=True)  # a fork is a clone
    config = fork / "cookiecutter.json"
    answers = json.loads(config.read_text(encoding="utf-8"))
    answers.update(FORK_DEFAULTS)
    for key, first in FORK_FIRST_CHOICES.items():
        assert first in answers[key] and answers[key][0] != first, key
        answers[key] = [first] + [choice for choice in answers[key] if choice != first]
    config.write_text(json.dumps(answers, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    # The fork's own copy of the tests, unchanged: they read its cookiecutter.json.
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *FORK_TESTS, "-q", "-p", "no:cacheprovider"]
        + ["-k", "not builds_as_a_package", "--basetemp", str(tmp_path / "runs")],
        cwd=fork,
        capture_output=True,
        text=True,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    print(f"fork's template tests: {summary}")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert int(re.search(r"(\d+) passed", summary).group(1)) >= 45
    # and the fork's defaults are what a plain render gets
    project = next((tmp_path / "runs").glob("out*/gemma-feature-atlas"))
    assert "Map the SAE features" in (project / "CLAUDE.md").read_text(encoding="utf-8")
    assert not (project / ".github").exists()
