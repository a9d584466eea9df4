"""The hooks: invalid answers fail cleanly, missing tools only warn, re-runs change nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import BIN, DEFAULT_SLUG, DEFAULTS, Baked, cli
from cookiecutter.generate import generate_context
from cookiecutter.hooks import run_hook_from_repo_dir
from cookiecutter.prompt import prompt_for_config


@pytest.mark.parametrize(
    ("answer", "key"),
    [
        ("project_slug=Has Spaces", "project_slug"),
        ("project_slug=../escape", "project_slug"),
        ("author_email=not-an-email", "author_email"),
        ("gpu_memory_gb=-4", "gpu_memory_gb"),
        ("gpu_memory_gb=lots", "gpu_memory_gb"),
        ("research_questions= ; ", "research_questions"),
        ("project_name=\U0001f680 \U0001f52d", "project_slug"),  # slugifies to nothing
        ("project_slug=torch", "project_slug"),
        ("project_slug=src", "project_slug"),
        ("project_slug=transformer-lens", "project_slug"),
        ("project_slug=sae_lens", "project_slug"),
        ("project_slug=json", "project_slug"),  # the standard library's
        ("date_created=next week", "date_created"),
    ],
)
def test_invalid_answer_fails_with_one_line_and_no_folder(template, tmp_path, answer, key):
    result = cli(template, tmp_path, answer)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1 and errors[0].startswith(f"ERROR: {key}: "), result.stderr
    assert list(tmp_path.iterdir()) == []
    assert not (tmp_path.parent / "escape").exists()


# Names people type, and the slug cookiecutter's `slugify` filter gives each.
REAL_NAMES = {
    "IOI: Name Movers": "ioi-name-movers",
    "GPT-2 Induction (replication)": "gpt-2-induction-replication",
    "Études d'induction": "etudes-d-induction",
    "Heads & Tails": "heads-tails",
    "Attention sinks \U0001f50d": "attention-sinks",
}


def test_real_names_give_a_valid_default_slug(bake, template):
    context = generate_context(str(template / "cookiecutter.json"))
    for name, slug in REAL_NAMES.items():
        context["cookiecutter"]["project_name"] = name
        assert prompt_for_config(context, no_input=True)["project_slug"] == slug
    name = "IOI: Name Movers & Études d'induction (replication)"
    project = bake(project_name=name)  # and a project is made under such a name
    assert project.path.name == "ioi-name-movers-etudes-d-induction-replication"
    assert f'name = "{project.path.name}"' in project.read("pyproject.toml")
    assert project.read("CLAUDE.md").startswith(f"# Project: {name}\n")


def test_shadowing_slug_names_the_module(template, tmp_path):
    result = cli(template, tmp_path, "project_slug=torch")
    assert "'torch' would shadow the module `torch`" in result.stderr
    assert "e.g. 'torch-study'" in result.stderr


def tools_dir(tmp_path, *names: str) -> str:
    """A PATH holding only python and the named tools."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python", "python3", *names):
        found = shutil.which(name) or str(BIN / name)
        (bin_dir / name).symlink_to(found if name not in ("python", "python3") else sys.executable)
    return str(bin_dir)


def test_no_git_warns_and_still_generates(template, tmp_path):
    out = tmp_path / "out"
    result = cli(template, out, env={"PATH": tools_dir(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert "WARNING: git is not on PATH" in result.stderr and "git init -b main" in result.stderr
    project = out / DEFAULT_SLUG
    assert not (project / ".git").exists()
    first_question = DEFAULTS["research_questions"].split(";")[0].strip()
    assert f"1. {first_question}" in (project / "CLAUDE.md").read_text()


def test_no_pre_commit_warns_and_commits(template, tmp_path):
    out = tmp_path / "out"
    result = cli(template, out, env={"PATH": tools_dir(tmp_path, "git")})
    assert result.returncode == 0, result.stderr
    assert "WARNING: pre-commit is not on PATH" in result.stderr
    assert "pre-commit install" in result.stderr
    project = Baked(out / DEFAULT_SLUG)
    assert project.git("rev-list", "--count", "HEAD") == "1"
    assert not (project.path / ".git" / "hooks" / "pre-commit").exists()


def test_git_identity_falls_back_to_the_answers(template, tmp_path):
    env = {"HOME": str(tmp_path), "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    for var in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"):
        env[var] = ""
    clean_env = {k: v for k, v in {**os.environ, **env}.items() if v != ""}
    out = tmp_path / "out"
    result = cli(
        template, out, "author_name=Ada Lovelace", "author_email=ada@example.org", env=clean_env
    )
    assert result.returncode == 0, result.stderr
    project = Baked(out / DEFAULT_SLUG)
    assert project.git("log", "-1", "--format=%an <%ae>") == "Ada Lovelace <ada@example.org>"


def test_post_gen_hook_is_idempotent(bake, template):
    project = bake()
    before = {name: project.read(name) for name in project.files()}
    head = project.git("rev-parse", "HEAD")
    context = generate_context(str(template / "cookiecutter.json"))
    context = {"cookiecutter": prompt_for_config(context, no_input=True)}
    run_hook_from_repo_dir(str(template), "post_gen_project", str(project.path), context, False)
    assert {name: project.read(name) for name in project.files()} == before
    assert project.git("rev-parse", "HEAD") == head
    assert project.git("status", "--porcelain") == ""


@pytest.mark.slow
def test_commit_hook_strips_notebook_outputs(bake):
    project = bake()
    notebook = {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": 3,
                "id": "a1",
                "metadata": {},
                "outputs": [
                    {"name": "stdout", "output_type": "stream", "text": ["SECRET_OUTPUT\n"]}
                ],
                "source": ["print('SECRET_OUTPUT')\n"],
            }
        ],
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path = project.path / "notebooks" / "02_scratch.ipynb"
    path.write_text(json.dumps(notebook, indent=1) + "\n")
    project.git("add", "notebooks/02_scratch.ipynb")
    first = project.run("git", "commit", "-m", "Add scratch notebook", check=False)
    if first.returncode != 0:  # the hook rewrote the file: stage its result and commit again
        assert "nbstripout" in first.stdout + first.stderr
        project.git("add", "notebooks/02_scratch.ipynb")
        second = project.run("git", "commit", "-m", "Add scratch notebook")
        assert "Failed" not in second.stdout + second.stderr  # the post-commit refresh passes
    committed = json.loads(project.git("show", "HEAD:notebooks/02_scratch.ipynb"))
    assert committed["cells"][0]["outputs"] == []
    assert committed["cells"][0]["execution_count"] is None
    assert project.git("rev-list", "--count", "HEAD") == "2"
    # after the commit, the post-commit hook lists the new notebook in CLAUDE.md's key files
    assert "`notebooks/02_scratch.ipynb`" in project.read("CLAUDE.md")
    assert project.git("status", "--porcelain", "CLAUDE.md") == "M  CLAUDE.md"  # staged


@pytest.mark.slow
def test_unparsable_work_in_progress_breaks_no_run_and_no_commit(bake):
    """A file that does not parse in scripts/: the commit's post-commit refresh passes, and a
    run saves its log, warns once naming the file, and exits 0."""
    project = bake()
    (project.path / "scripts" / "wip.py").write_text("def half_written(:\n")
    project.git("add", "scripts/wip.py")
    commit = project.run("git", "commit", "--no-verify", "-m", "WIP")  # ruff would refuse it
    assert "Failed" not in commit.stdout + commit.stderr
    assert "`scripts/wip.py`" in project.read("CLAUDE.md")
    run = project.run(
        "python", "scripts/run_experiment.py", "--config", "configs/toy_induction.yaml",
        "--device", "cpu",
    )  # fmt: skip
    assert run.returncode == 0
    assert [line for line in run.stderr.splitlines() if "wip.py" in line] == [
        "warning: scripts/wip.py: could not read its description (SyntaxError line 1); "
        "CLAUDE.md lists it without one until it parses"
    ]
    assert list((project.path / "data" / "results").rglob("*.json"))


@pytest.mark.slow
def test_commit_hooks_catch_conflicts_keys_and_typos(bake):
    """The day-one hooks pass on a fresh project and each catches what it is for."""
    project = bake()
    hooks = ("check-merge-conflict", "detect-private-key", "codespell")
    for hook in hooks:
        project.run("pre-commit", "run", hook, "--all-files")
    bad = {
        "notes/merge.md": "# Notes\n<<<<<<< HEAD\nmine\n=======\ntheirs\n>>>>>>> other\n",
        "notes/key.txt": "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\n",
        "notes/typo.md": "The attention heads recieve their input from the residual stream.\n",
    }
    for name, text in bad.items():
        (project.path / name).parent.mkdir(exist_ok=True)
        (project.path / name).write_text(text)
    project.git("add", "notes")
    # check-merge-conflict looks during a merge (as git records one), when markers get committed
    (project.path / ".git" / "MERGE_MSG").write_text("Merge branch 'other'\n")
    (project.path / ".git" / "MERGE_HEAD").write_text(project.git("rev-parse", "HEAD") + "\n")
    for hook, name in zip(hooks, bad, strict=True):
        result = project.run("pre-commit", "run", hook, "--files", name, check=False)
        assert result.returncode == 1 and name in result.stdout, (hook, result.stdout)


NOTEBOOK_WITH_OUTPUT = {
    "cells": [
        {
            "cell_type": "code",
            "execution_count": 1,
            "id": "c1",
            "metadata": {},
            "outputs": [{"name": "stdout", "output_type": "stream", "text": ["42\n"]}],
            "source": ["print(42)\n"],
        }
    ],
    "metadata": {},
    "nbformat": 4,
    "nbformat_minor": 5,
}


@pytest.mark.slow
def test_a_clone_gets_the_hooks_from_make_setup(bake, tmp_path):
    """A clone has no hooks; `make setup` installs the project, then them (`make hooks`); a
    notebook committed with outputs fails the project's test and its CI check until stripped."""
    project = bake(ci="github", project_name="Clone Study")  # a fork may default to ci=none
    clone = Baked(tmp_path / "clone")
    subprocess.run(["git", "clone", "-q", str(project.path), str(clone.path)], check=True)
    assert not (clone.path / ".git" / "hooks" / "pre-commit").exists()
    planned = clone.run("make", "-n", "setup").stdout.splitlines()
    assert planned[0] == 'python -m pip install -e ".[dev]"' and "hooks" in planned[1]
    clone.run("make", "hooks")
    for hook in ("pre-commit", "post-commit"):
        assert (clone.path / ".git" / "hooks" / hook).is_file(), hook

    notebook = clone.path / "notebooks" / "03_results.ipynb"
    notebook.write_text(json.dumps(NOTEBOOK_WITH_OUTPUT, indent=1) + "\n")
    clone.git("add", "notebooks/03_results.ipynb")
    clone.run("git", "commit", "-q", "--no-verify", "-m", "Results, outputs and all")
    check = ["python", "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    failed = clone.run(*check, "tests/test_notebook_outputs.py", check=False)
    assert failed.returncode == 1 and "notebooks/03_results.ipynb" in failed.stdout
    workflow = yaml.safe_load(clone.read(".github/workflows/ci.yml"))
    step = next(s for s in workflow["jobs"]["tests"]["steps"] if "nbstripout" in s.get("run", ""))
    assert clone.run("bash", "-c", step["run"], check=False).returncode != 0
    clone.run("nbstripout", "notebooks/03_results.ipynb")
    clone.git("add", "notebooks/03_results.ipynb")
    clone.run(*check, "tests/test_notebook_outputs.py")
    clone.run("bash", "-c", step["run"])
