"""GitHub "Use this template": the setup script renders a repository made from the template into
the project in place, equal to a plain `cookiecutter --no-input` render, and the setup workflow
that runs it is valid, pinned and injection-free."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import BIN, CACHES, TEMPLATE

SCRIPT = ".github/scripts/render_in_place.py"
WORKFLOW = TEMPLATE / ".github" / "workflows" / "setup-from-template.yml"
TEMPLATE_ONLY = [
    "cookiecutter.json",
    "hooks",
    "{{cookiecutter.project_slug}}",
    ".ci",
    "requirements-test.txt",
    "CHANGELOG.md",
    "pytest.ini",
    "tests/github_api",
    ".ruff.toml",
    ".github/scripts",
    ".github/workflows/setup-from-template.yml",
    ".github/workflows/tests.yml",
    "tests/test_render_in_place.py",
    "tests/test_hooks.py",
]
# Jinja-like text a description may hold: it renders literally, never as Jinja.
DESCRIPTION = 'Find the induction circuit: "which heads", {{ not Jinja }}, {{ x, {# and ' + (
    "{% endraw %} and unicode (é)."
)
# name, description, --keep-workflows, the answers a plain render needs for the same project
CASES = {
    "name-and-description": (
        "induction-heads-study",
        DESCRIPTION,
        False,
        {
            "project_name": "Induction Heads Study",
            "project_slug": "induction-heads-study",
            "research_goal": "{% raw %}Find the induction circuit: "
            '"which heads", {{ not Jinja }}, {{ x, {# and {% endraw %}{{ "{% endraw %}" }}'
            "{% raw %} and unicode (é).{% endraw %}",
        },
    ),
    "capitals-dots-keep-workflows": (
        "IOI.Circuit_v2",
        None,
        True,
        {"project_name": "IOI Circuit V2", "project_slug": "ioi-circuit_v2"},
    ),
}


def git(repo: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True)
    return result.stdout


def contents(root: Path) -> dict[str, bytes]:
    """Every file's bytes by relative path, outside .git and tool caches."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not (CACHES | {".git"}) & set(p.relative_to(root).parts)
    }


def from_template(template: Path, dest: Path) -> Path:
    """A repository as "Use this template" makes it: the template's files in one commit."""
    shutil.copytree(template, dest)
    git(dest, "init", "-q", "-b", "main")
    git(dest, "add", "--all")
    git(dest, "-c", "user.name=GitHub", "-c", "user.email=noreply@github.com", "commit", "-qm",
        "Initial commit")  # fmt: skip
    return dest


def render_in_place(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=repo, capture_output=True, text=True)


@pytest.mark.parametrize("case", CASES)
def test_render_in_place_equals_a_plain_render(case, template, bake, tmp_path):
    name, description, keep, answers = CASES[case]
    repo = from_template(template, tmp_path / name)
    first = git(repo, "rev-parse", "HEAD").strip()
    options = ["--name", name]
    options += ["--description", description] if description else []
    options += ["--keep-workflows"] if keep else []

    result = render_in_place(repo, *options)
    assert result.returncode == 0, result.stderr
    assert f"({answers['project_slug']}) in place" in result.stdout
    if description:  # the description is the research goal, verbatim
        pyproject = tomllib.loads((repo / "pyproject.toml").read_text(encoding="utf-8"))
        assert pyproject["project"]["description"] == description

    expected = contents(bake(**answers).path)
    workflows = sorted(n for n in expected if n.startswith(".github/workflows/"))
    if not keep:  # the default token cannot add workflows: they wait in workflows-pending/
        for moved in workflows:
            expected[moved.replace("workflows/", "workflows-pending/")] = expected.pop(moved)
    got = contents(repo)
    pending = got.pop(".github/workflows-pending/README.md", None)
    assert sorted(got) == sorted(expected)
    assert [n for n in got if got[n] != expected[n]] == []
    assert (pending is not None) == bool(workflows and not keep)
    for gone in TEMPLATE_ONLY:
        assert not (repo / gone).exists(), gone

    # History continued: the template's commit is still HEAD, nothing committed, no re-init,
    # and the post-generation hook installed no commit hook in this repository.
    assert git(repo, "rev-list", "HEAD").split() == [first]
    assert [p for p in repo.rglob(".git") if p != repo / ".git"] == []
    assert not (repo / ".git" / "hooks" / "pre-commit").exists()
    # The replacement is one `git add -A` away from the workflow's commit, and that commit
    # deletes the setup workflow but adds no workflow file unless asked to.
    assert git(repo, "status", "--porcelain")
    git(repo, "add", "-A")
    changes = dict(
        reversed(line.split("\t", 1))
        for line in git(repo, "diff", "--cached", "--name-status", "--no-renames").splitlines()
    )
    assert changes["cookiecutter.json"] == "D"
    assert changes[".github/workflows/setup-from-template.yml"] == "D"
    assert changes["CLAUDE.md"] == "A"
    added = [n for n, s in changes.items() if n.startswith(".github/workflows/") and s != "D"]
    assert added == (workflows if keep else [])
    assert git(repo, "status", "--porcelain", "--untracked-files=all").count("??") == 0


def test_pending_readme_commands_enable_the_workflows(template, bake, tmp_path):
    """Running the commands that README.md in workflows-pending/ gives yields the plain render."""
    repo = from_template(template, tmp_path / "induction-heads-study")
    assert render_in_place(repo, "--name", "induction-heads-study").returncode == 0
    readme = repo / ".github" / "workflows-pending" / "README.md"
    if not readme.exists():  # a fork whose default is ci=none: nothing to enable
        assert not (repo / ".github" / "workflows").exists()
        return
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=bot", "-c", "user.email=bot@example.org", "commit", "-qm", "Render")
    block = re.search(r"```bash\n(.*?)```", readme.read_text(), re.S).group(1)
    for line in block.splitlines():
        line = line.replace(" && git push", "")  # no remote here
        if line.startswith("git commit"):
            line = line.replace("git commit", "git -c user.name=me -c user.email=me@x.org commit")
        subprocess.run(line, shell=True, cwd=repo, check=True, capture_output=True)
    assert contents(repo) == contents(bake(project_name="Induction Heads Study").path)
    assert git(repo, "status", "--porcelain") == ""
    assert len(git(repo, "rev-list", "HEAD").split()) == 3


@pytest.mark.parametrize(
    ("name", "wanted"),
    [("2nd-study", "no valid project slug"), ("bad name!", "not a GitHub repository name")],
)
def test_invalid_name_fails_with_one_line_and_changes_nothing(name, wanted, template, tmp_path):
    repo = from_template(template, tmp_path / "repo")
    before = contents(repo)
    result = render_in_place(repo, "--name", name, "--description", "A goal.")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("ERROR: --name:")
    assert wanted in result.stderr and repr(name) in result.stderr
    assert contents(repo) == before
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""


def test_refuses_a_rendered_or_dirty_repository(template, tmp_path):
    repo = from_template(template, tmp_path / "repo")
    (repo / "README.md").write_text("edited\n")
    result = render_in_place(repo, "--name", "study")
    assert result.returncode == 1 and "uncommitted changes" in result.stderr
    assert (repo / "README.md").read_text() == "edited\n" and (repo / "cookiecutter.json").exists()
    git(repo, "checkout", "--", "README.md")
    shutil.copy(repo / SCRIPT, tmp_path / "render_in_place.py")  # the render deletes it
    assert render_in_place(repo, "--name", "study").returncode == 0
    result = subprocess.run(
        [sys.executable, str(tmp_path / "render_in_place.py"), "--name", "study"],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "holds no template" in result.stderr


def test_setup_workflow_is_valid_pinned_and_runs_the_script():
    result = subprocess.run(
        [BIN / "check-jsonschema", "--builtin-schema", "vendor.github-workflows", WORKFLOW],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    result = subprocess.run(
        [BIN / "zizmor", "--offline", "--format", "json", WORKFLOW], capture_output=True, text=True
    )
    assert result.returncode in (0, *range(10, 15)), result.stderr  # 1x: findings, by severity
    counts = Counter(f["determinations"]["severity"] for f in json.loads(result.stdout))
    print(f"zizmor {WORKFLOW.name}: {dict(counts) or 'no findings'}")
    assert counts["High"] == 0 and counts["Medium"] == 0

    text = WORKFLOW.read_text()
    workflow = yaml.safe_load(text)
    job = workflow["jobs"]["render"]
    assert "!github.event.repository.is_template" in job["if"]
    assert "!github.event.repository.fork" in job["if"]
    assert workflow["permissions"] == {} and job["permissions"] == {"contents": "write"}
    uses = [step["uses"] for step in job["steps"] if "uses" in step]
    assert uses and all(re.fullmatch(r"[\w-]+/[\w-]+@[0-9a-f]{40}", u) for u in uses)
    runs = [step["run"] for step in job["steps"] if "run" in step]
    assert not [r for r in runs if "${{" in r]  # event values reach the shell through env only
    render = next(s for s in job["steps"] if SCRIPT in s.get("run", ""))
    assert render["env"]["REPO_NAME"] == "${{ github.event.repository.name }}"
    assert render["env"]["REPO_DESCRIPTION"] == "${{ github.event.repository.description }}"
    assert "--keep-workflows" in render["run"] and "TEMPLATE_SETUP_TOKEN" in str(render["env"])
    assert 'git commit -q -m "Render the template"' in runs[-1] and "git add -A" in runs[-1]
    assert all(s["if"] == "steps.decide.outputs.render == 'true'" for s in job["steps"][2:])
