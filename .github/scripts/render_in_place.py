"""Turn a repository made with GitHub's "Use this template" into the rendered project.

Run in the root of such a repository (its tree is the raw template):

    python .github/scripts/render_in_place.py --name my-induction-study [--description TEXT]

The project is rendered with `cookiecutter --no-input` (project name from the repository name,
research goal from its description) into a temporary folder first; only when that succeeded are
the repository's tracked files (the whole template, this script and its workflow included)
replaced by the rendered project. The git history continues: nothing is committed here (the
setup workflow commits), and the post-generation hook makes no repository or first commit of its
own, because the render happens inside a scratch git work tree (the hook then leaves git alone).

GitHub's default Actions token may delete workflow files but not add them, so the project's own
workflows go to `.github/workflows-pending/` unless `--keep-workflows` is given (when the push
uses a token with the `workflow` scope). Bad input exits with one line and changes nothing.
Needs the standard library and cookiecutter only.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from cookiecutter.exceptions import CookiecutterException
from cookiecutter.main import cookiecutter

# The slug rule of hooks/pre_gen_project.py; GitHub's repository names are [A-Za-z0-9._-]+.
SLUG = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")
REPO_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
TEMPLATE_DIR = "{{cookiecutter.project_slug}}"
WORKFLOWS = Path(".github/workflows")
PENDING = Path(".github/workflows-pending")
CACHES = {"__pycache__", ".pytest_cache", ".ruff_cache"}  # byproducts of running the hooks
PENDING_README = """\
# Workflows waiting to be enabled

The run that rendered this repository from the template pushed with GitHub's default Actions
token, which may delete files under `.github/workflows/` but not add them. This project's
workflows ({files}) wait here instead. Enable them by moving this folder, with credentials that
may change workflows (your own `git push` has them):

```bash
git rm -q .github/workflows-pending/README.md
git mv .github/workflows-pending .github/workflows
git commit -m "Enable the CI workflows" && git push
```
"""


class SetupError(Exception):
    """Bad input or a repository that is not a fresh copy of the template: one line to show."""


def literal(text: str) -> str:
    """`text` as a Jinja template that renders to exactly `text`: cookiecutter renders every
    answer as Jinja, so each `{` (the start of `{{`, `{%` and `{#`) becomes an expression that
    prints it. Unlike `{% raw %}`, this holds for any text, `{% endraw %}` included."""
    return text.replace("{", "{{ '{' }}")


def answers_for(name: str, description: str | None) -> dict[str, str]:
    """cookiecutter answers from a repository name and description.

    `my-induction-study` gives project_name "My Induction Study" and project_slug equal to the
    name; a name that is not a valid slug as it stands (capitals, dots) is lowered and its dots
    become '-'; one that still is not valid is an error.
    """
    if not REPO_NAME.match(name):
        raise SetupError(
            f"--name: {name!r} is not a GitHub repository name; want letters, digits, '.', '-' "
            "or '_' (e.g. 'induction-heads-study')"
        )
    slug = name if SLUG.match(name) else name.lower().replace(".", "-")
    if not SLUG.match(slug):
        raise SetupError(
            f"--name: {name!r} gives no valid project slug; want lowercase letters and digits, "
            "words joined by '-' or '_', starting with a letter (e.g. 'induction-heads-study')"
        )
    words = [w for w in re.split(r"[-_.]+", name) if w]
    answers = {
        "project_name": " ".join(w[:1].upper() + w[1:] for w in words),
        "project_slug": slug,
    }
    if description and description.strip():
        answers["research_goal"] = literal(" ".join(description.split()))
    return answers


def git(root: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        raise SetupError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def check_repository(root: Path) -> list[str]:
    """The tracked files of a clean repository root that holds the raw template."""
    try:
        top = git(root, "rev-parse", "--show-toplevel").strip()
    except SetupError as error:
        raise SetupError(f"{root} is not a git repository (run this in its root)") from error
    if Path(top).resolve() != root.resolve():
        raise SetupError(f"run this in the repository's root ({top}), not in {root}")
    if not (root / "cookiecutter.json").is_file() or not (root / TEMPLATE_DIR).is_dir():
        raise SetupError(
            f"{root} holds no template (cookiecutter.json or {TEMPLATE_DIR}/ missing): "
            "already rendered?"
        )
    if git(root, "status", "--porcelain"):
        raise SetupError("the work tree has uncommitted changes: commit or stash them first")
    return [n for n in git(root, "ls-files", "-z").split("\0") if n]


def render(template: Path, answers: dict[str, str], scratch: Path) -> Path:
    """Render into `scratch`, a git work tree of its own, so the hook makes no repository."""
    git(scratch, "init", "-q")
    config = {"cookiecutters_dir": str(scratch / ".cc"), "replay_dir": str(scratch / ".cc")}
    env = {k: os.environ.pop(k) for k in ("GIT_DIR", "GIT_WORK_TREE") if k in os.environ}
    try:
        out = cookiecutter(
            str(template),
            no_input=True,
            extra_context=answers,
            output_dir=str(scratch),
            default_config=config,  # ignore ~/.cookiecutterrc: the render depends on the answers
        )
    except CookiecutterException as error:
        lines = str(error).strip().splitlines() or [type(error).__name__]
        raise SetupError(f"cookiecutter failed: {lines[-1]}") from error
    finally:
        os.environ.update(env)
    return Path(out)


def park_workflows(project: Path) -> list[str]:
    """Move the project's workflows to .github/workflows-pending/ with how to enable them."""
    source = project / WORKFLOWS
    if not source.is_dir():
        return []
    names = sorted(p.name for p in source.iterdir())
    (project / PENDING).parent.mkdir(parents=True, exist_ok=True)
    source.rename(project / PENDING)
    files = ", ".join(f"`{n}`" for n in names)
    (project / PENDING / "README.md").write_text(PENDING_README.format(files=files))
    return names


def replace_contents(root: Path, tracked: list[str], project: Path) -> int:
    """Delete the tracked files, move the project's files in; undo everything on failure."""
    moved: list[Path] = []
    try:
        for name in tracked:
            (root / name).unlink(missing_ok=True)
        for name in sorted({str(Path(n).parent) for n in tracked}, key=len, reverse=True):
            folder = root / name
            while folder != root and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
                folder = folder.parent
        for folder, dirs, files in os.walk(project):
            dirs[:] = [d for d in dirs if d not in CACHES]
            rel = Path(folder).relative_to(project)
            (root / rel).mkdir(parents=True, exist_ok=True)
            for file in files:
                target = root / rel / file
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                os.replace(Path(folder) / file, target)
                moved.append(target)
    except OSError as error:
        for target in moved:
            target.unlink(missing_ok=True)
        subprocess.run(["git", "checkout", "--", "."], cwd=root, capture_output=True)
        raise SetupError(
            f"could not move the rendered files ({error}); the repository is as before"
        ) from error
    return len(moved)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="the repository's name (its project slug)")
    parser.add_argument("--description", help="the repository's description (the research goal)")
    parser.add_argument(
        "--keep-workflows",
        action="store_true",
        help="leave the project's workflows in .github/workflows/ (the push needs a token with "
        "the 'workflow' scope)",
    )
    args = parser.parse_args(argv)
    root = Path.cwd()
    try:
        answers = answers_for(args.name, args.description)
        tracked = check_repository(root)
        with tempfile.TemporaryDirectory(prefix="render-in-place-") as scratch:
            project = render(root, answers, Path(scratch))
            parked = [] if args.keep_workflows else park_workflows(project)
            count = replace_contents(root, tracked, project)
    except SetupError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    print(
        f"Rendered '{answers['project_name']}' ({answers['project_slug']}) in place: "
        f"{len(tracked)} template files removed, {count} project files written."
    )
    if parked:
        print(
            f"The project's workflows ({', '.join(parked)}) are in {PENDING}/: the default "
            f"Actions token cannot add workflow files. See {PENDING}/README.md to enable them."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
