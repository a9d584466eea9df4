"""cruft: create, check, diff and update against a local template repository with two commits."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BIN, DEFAULT_NAME, DEFAULT_SLUG, Baked

CRUFT = str(BIN / "cruft")
GIT_ID = ["-c", "user.name=Template Dev", "-c", "user.email=dev@example.org"]
GIT_ID += ["-c", "commit.gpgsign=false"]
SLUG_DIR = "{{cookiecutter.project_slug}}"
THROWAWAY_NOTE = "no git repository, commit or commit hooks there"


def commit_all(repo: Baked, message: str) -> str:
    repo.run("git", "add", "--all")
    repo.run("git", *GIT_ID, "commit", "--quiet", "-m", message)
    return repo.git("rev-parse", "HEAD")


def template_repo(template: Path, path: Path) -> tuple[Baked, str]:
    """The template as a git repository with one commit, and that commit."""
    repo = Baked(path)
    shutil.copytree(template, repo.path)
    repo.run("git", "init", "--quiet")
    return repo, commit_all(repo, "Template v1")


def test_cruft_create_commits_cruft_json_for_any_answers(template, tmp_path):
    """The hook's .cruft.json is byte for byte cruft's, also for quotes, backslashes, unicode."""
    repo, _ = template_repo(template, tmp_path / "template-repo")
    answers = {
        "project_name": 'Café "Heads" \\ Study',
        "project_slug": "cafe-heads",
        "research_goal": "Naïve goal: find 'it' — fast.",
        "multi_agent": "no",
        "license": "none",
    }
    args = ["create", str(repo.path), "--no-input", "--extra-context", json.dumps(answers)]
    Baked(tmp_path).run(CRUFT, *args)
    project = Baked(tmp_path / "cafe-heads")
    assert project.run("git", "status", "--porcelain", "--untracked-files=all").stdout == ""
    recorded = json.loads(project.git("show", "HEAD:.cruft.json"))["context"]["cookiecutter"]
    assert {key: recorded[key] for key in answers} == answers


@pytest.mark.slow
def test_cruft_create_check_diff_update(template, tmp_path):
    repo, commit1 = template_repo(template, tmp_path / "template-repo")

    # create: .cruft.json is in the first commit, exactly as cruft wrote it (clean tree).
    out = tmp_path / "projects"
    out.mkdir()
    created = Baked(out).run(CRUFT, "create", str(repo.path), "--no-input")
    project = Baked(out / DEFAULT_SLUG)
    assert THROWAWAY_NOTE not in created.stderr
    assert project.git("status", "--porcelain") == ""
    assert project.git("log", "--format=%s") == "Initial commit from mech-interp-template"
    state = json.loads(project.git("show", "HEAD:.cruft.json"))
    assert (state["template"], state["commit"]) == (str(repo.path), commit1)
    assert state["context"]["cookiecutter"]["project_name"] == DEFAULT_NAME
    assert (project.path / ".git/hooks/pre-commit").is_file()

    # check and diff on the fresh project: up to date, and the throwaway render of diff
    # (hooks included, no .git) is identical to the generated project.
    assert "SUCCESS" in project.run(CRUFT, "check").stdout
    diffed = project.run(CRUFT, "diff", "--exit-code")
    assert diffed.stdout.strip() == "" and THROWAWAY_NOTE in diffed.stderr

    # The user's own commit; then the template gains a commit touching a file and adding one.
    config = project.path / "configs/toy_induction.yaml"
    config.write_text(config.read_text() + "# tuned by the user\n")
    commit_all(project, "User tweak")
    assert project.git("status", "--porcelain") == ""
    readme = repo.path / SLUG_DIR / "README.md"
    readme.write_text(readme.read_text() + "\nUpdated for {{ cookiecutter.project_name }}.\n")
    news = repo.path / SLUG_DIR / "notes" / "template-news.md"
    news.parent.mkdir()
    news.write_text("# News for {{ cookiecutter.project_slug }}\n")
    commit2 = commit_all(repo, "Template v2")
    assert "FAILURE" in project.run(CRUFT, "check", check=False).stdout

    # update: both versions are rendered in temp folders, where the hooks skip git.
    updated = project.run(CRUFT, "update", "-y")
    assert updated.stderr.count(THROWAWAY_NOTE) == 2  # old and new template version
    assert "has been updated" in updated.stdout
    assert project.read("README.md").endswith(f"\nUpdated for {DEFAULT_NAME}.\n")
    assert project.read("notes/template-news.md") == f"# News for {DEFAULT_SLUG}\n"
    assert project.read("configs/toy_induction.yaml").endswith("# tuned by the user\n")
    assert not [p for p in project.path.rglob("*") if p.suffix in {".rej", ".orig"}]
    assert [p for p in project.path.rglob(".git")] == [project.path / ".git"]
    status = project.run("git", "status", "--porcelain", "--untracked-files=all").stdout
    assert sorted(line[3:] for line in status.splitlines()) == [
        ".cruft.json",
        "README.md",
        "notes/template-news.md",
    ]
    assert json.loads(project.read(".cruft.json"))["commit"] == commit2

    commit_all(project, "Update from the template")
    assert project.git("log", "--format=%s").splitlines() == [
        "Update from the template",
        "User tweak",
        "Initial commit from mech-interp-template",
    ]
    assert "SUCCESS" in project.run(CRUFT, "check").stdout
    assert project.git("status", "--porcelain") == ""


# Python started with this folder on PYTHONPATH sees the clock of a later day (a year on)
# wherever cookiecutter's `{% now %}` reads it (arrow.now).
LATER_CLOCK = """
import arrow

_now = arrow.now


def _later(*args, **kwargs):
    return _now(*args, **kwargs).shift(years=1)


arrow.now = _later
"""


@pytest.mark.slow
def test_rerender_on_a_later_day_changes_nothing(template, tmp_path):
    """The year and date are answers stored in .cruft.json: `cruft diff` a year later is empty."""
    repo, _ = template_repo(template, tmp_path / "template-repo")
    out = tmp_path / "projects"
    out.mkdir()
    Baked(out).run(CRUFT, "create", str(repo.path), "--no-input")
    project = Baked(out / DEFAULT_SLUG)
    stored = json.loads(project.read(".cruft.json"))["context"]["cookiecutter"]
    year = int(stored["date_created"][:4])
    assert f"{year} " in project.read("LICENSE")
    if (project.path / "AGENTS.md").exists():  # multi_agent: yes
        assert stored["date_created"] in project.read("AGENTS.md")

    later = tmp_path / "later-clock"
    later.mkdir()
    (later / "sitecustomize.py").write_text(LATER_CLOCK)
    env = {"PYTHONPATH": str(later)}
    clock = project.run("python", "-c", "import arrow; print(arrow.now('utc').year)", env=env)
    assert int(clock.stdout) == year + 1  # the fake clock is in effect
    diffed = project.run(CRUFT, "diff", "--exit-code", env=env, check=False)
    assert diffed.returncode == 0 and diffed.stdout.strip() == "", diffed.stdout[-3000:]
    # ... while a new project made that day takes that day's year
    fresh = Baked(tmp_path).run(
        CRUFT, "create", str(repo.path), "--no-input", "--output-dir", str(tmp_path / "new"),
        env=env,
    )  # fmt: skip
    assert fresh.returncode == 0
    license_text = (tmp_path / "new" / DEFAULT_SLUG / "LICENSE").read_text()
    assert f"{year + 1} " in license_text


@pytest.mark.slow
def test_every_way_in_updates_from_an_older_release(template, tmp_path):
    """Plain cookiecutter and "Use this template" record the template's URL and commit in
    .cruft.json, so a project made from release v0.1.0 updates to v0.2.0 (a tag `cruft update
    --checkout` names); the paths the project owns ([tool.cruft] skip) keep the user's text."""
    repo, v1 = template_repo(template, tmp_path / "template-repo")
    repo.run("git", "tag", "v0.1.0")
    readme = repo.path / SLUG_DIR / "README.md"
    readme.write_text(readme.read_text() + "\nNew in v0.2.0.\n")
    claude = repo.path / SLUG_DIR / "CLAUDE.md"  # skipped: the project's notes are the user's
    claude.write_text(claude.read_text() + "\nTemplate text the update must not bring.\n")
    v2 = commit_all(repo, "Template v2")
    repo.run("git", "tag", "v0.2.0")
    url = repo.path.as_uri()

    # Plain cookiecutter from the older release.
    Baked(tmp_path).run(
        sys.executable, "-m", "cookiecutter", "--no-input", "-o", str(tmp_path / "plain"),
        f"git+{url}",
        "--checkout", "v0.1.0",
    )  # fmt: skip
    plain = Baked(tmp_path / "plain" / DEFAULT_SLUG)

    # "Use this template": a new repository holding v0.1.0's tree in a fresh commit, rendered
    # in place as the setup workflow does.
    used = Baked(tmp_path / "used" / DEFAULT_SLUG)
    used.path.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", "v0.1.0"], cwd=repo.path, capture_output=True, check=True
    )
    subprocess.run(["tar", "-x"], input=archive.stdout, cwd=used.path, check=True)
    used.run("git", "init", "--quiet", "-b", "main")
    commit_all(used, "Initial commit")
    script = ".github/scripts/render_in_place.py"
    rendered = used.run(sys.executable, script, "--name", DEFAULT_SLUG, "--template-url", url)
    assert f".cruft.json records template {url} at {v1[:12]}" in rendered.stdout
    commit_all(used, "Render the template")

    for project in (plain, used):
        assert project.git("status", "--porcelain") == ""
        state = json.loads(project.git("show", "HEAD:.cruft.json"))
        assert (state["template"], state["commit"]) == (url, v1)
        assert state["context"]["cookiecutter"]["_commit"] == v1
        notes = project.read("CLAUDE.md") + "\nMy notes.\n"
        (project.path / "CLAUDE.md").write_text(notes)
        commit_all(project, "My notes")

        updated = project.run(CRUFT, "update", "-y", "--checkout", "v0.2.0")
        assert "has been updated" in updated.stdout, updated.stdout + updated.stderr
        assert project.read("README.md").endswith("\nNew in v0.2.0.\n")
        assert project.read("CLAUDE.md") == notes  # skipped: the user's text, untouched
        assert json.loads(project.read(".cruft.json"))["commit"] == v2
        assert not [p for p in project.path.rglob("*") if p.suffix in {".rej", ".orig"}]
        status = project.run("git", "status", "--porcelain", "--untracked-files=all").stdout
        assert sorted(line[3:] for line in status.splitlines()) == [".cruft.json", "README.md"]


def test_dates_come_from_the_date_created_answer(bake):
    """No rendered file reads the clock: the year and date are the `date_created` answer."""
    project = bake(date_created="2001-02-03", license="MIT", multi_agent="yes")
    assert "Copyright (c) 2001 " in project.read("LICENSE")
    assert "| 2001-02-03 |" in project.read("AGENTS.md")
    template_files = (Path(__file__).parents[1] / SLUG_DIR).rglob("*")
    assert [
        p for p in template_files if p.is_file() and "{% now" in p.read_text("utf-8", "ignore")
    ] == []
