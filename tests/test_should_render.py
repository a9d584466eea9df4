"""The setup workflow renders only a repository generated from the template: the decision of
.github/scripts/should_render.py on recorded GitHub API answers (tests/github_api/)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TEMPLATE

SCRIPT = TEMPLATE / ".github" / "scripts" / "should_render.py"
ANSWERS = Path(__file__).parent / "github_api"
WORKFLOW = TEMPLATE / ".github" / "workflows" / "setup-from-template.yml"


def decide(answer: str, root: Path, tmp_path: Path) -> tuple[subprocess.CompletedProcess, str]:
    """Run the script as the workflow does; return its result and what it wrote for the step."""
    output = tmp_path / "github_output"
    output.write_text("")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(ANSWERS / answer), "--root", str(root)],
        capture_output=True,
        text=True,
        env={"GITHUB_OUTPUT": str(output), "PATH": ""},
    )
    return result, output.read_text()


@pytest.mark.parametrize(
    ("answer", "render", "why"),
    [
        ("generated.json", True, "was generated from org/mech-interp-template"),
        ("template.json", False, "is a template repository"),
        ("fork.json", False, "is a fork"),
        ("private-copy.json", False, "was not generated from a template"),
        ("lab-copy.json", False, "was not generated from a template"),
    ],
)
def test_only_a_generated_repository_renders(answer, render, why, template, tmp_path):
    result, output = decide(answer, template, tmp_path)
    assert result.returncode == 0, result.stderr
    assert why in result.stdout and result.stdout.count("\n") == 1
    url = "template_url=https://github.com/org/mech-interp-template.git\n"
    assert output == (f"render=true\n{url}" if render else "render=false\n")


def test_an_already_rendered_repository_is_left_alone(bake, tmp_path):
    result, output = decide("generated.json", bake().path, tmp_path)
    assert result.returncode == 0 and "already rendered" in result.stdout
    assert output == "render=false\n"


def test_an_api_error_fails_the_step(template, tmp_path):
    result, output = decide("not-found.json", template, tmp_path)
    assert result.returncode == 1 and result.stderr.startswith("ERROR: ")
    assert output == ""


def test_the_workflow_renders_on_the_scripts_decision():
    job = yaml.safe_load(WORKFLOW.read_text())["jobs"]["render"]
    decide_step = next(s for s in job["steps"] if s.get("id") == "decide")
    assert 'gh api "repos/$GITHUB_REPOSITORY"' in decide_step["run"]
    assert ".github/scripts/should_render.py" in decide_step["run"]
    later = job["steps"][job["steps"].index(decide_step) + 1 :]
    assert later and all(s["if"] == "steps.decide.outputs.render == 'true'" for s in later)
