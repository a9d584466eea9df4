"""Turn a repository made with GitHub's "Use this template" into the rendered project.

Run in the root of such a repository (its tree is the raw template):

    python .github/scripts/render_in_place.py --name my-induction-study [--description TEXT] \
        [--template-url https://github.com/org/mech-interp-template.git]

The project is rendered with `cookiecutter --no-input` (project name from the repository name,
research goal from its description) into a temporary folder first; only when that succeeded are
the repository's tracked files (the whole template, this script and its workflow included)
replaced by the rendered project. The git history continues: nothing is committed here (the
setup workflow commits), and the post-generation hook makes no repository or first commit of its
own, because the render happens inside a scratch git work tree (the hook then leaves git alone).

With `--template-url`, the project's `.cruft.json` records that template and the commit whose
tree this repository holds, so `cruft update` works on it; without, it has none.

GitHub's default Actions token may delete workflow files but not add them, so the project's own
workflows go to `.github/workflows-pending/` unless `--keep-workflows` is given (when the push
uses a token with the `workflow` scope). Bad input exits with one line and changes nothing.
Needs the standard library and cookiecutter only.
"""

from __future__ import annotations

import argparse
import json
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
CRUFT_FILE = ".cruft.json"
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


def template_commit(root: Path, url: str) -> str | None:
    """The template commit this repository was generated from: the one whose tree is this
    repository's HEAD tree ("Use this template" copies the tree into a fresh commit), found in
    the template's history fetched from `url`; None if unreachable or not found."""
    fetched = subprocess.run(
        ["git", "fetch", "--quiet", "--no-tags", url, "HEAD"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    if fetched.returncode != 0:
        return None
    tree = git(root, "rev-parse", "HEAD^{tree}").strip()
    for line in git(root, "log", "--format=%H %T", "FETCH_HEAD").splitlines():
        commit, commit_tree = line.split()
        if commit_tree == tree:
            return commit
    return None


def record_template(project: Path, root: Path, url: str | None) -> str:
    """Point the project's `.cruft.json` at the template URL and commit it came from, so that
    `cruft update` works; without them, remove it. Returns a line saying which."""
    cruft = project / CRUFT_FILE
    commit = template_commit(root, url) if url else None
    if commit is None or not cruft.is_file():
        cruft.unlink(missing_ok=True)
        why = "no --template-url" if not url else f"no commit of {url} has this repository's tree"
        return f"No {CRUFT_FILE} ({why}): `cruft link {url or 'TEMPLATE_URL'}` can add one."
    state = json.loads(cruft.read_text(encoding="utf-8"))
    state["template"] = state["context"]["cookiecutter"]["_template"] = url
    state["commit"] = state["context"]["cookiecutter"]["_commit"] = commit
    text = json.dumps(state, ensure_ascii=False, indent=2, separators=(",", ": ")) + "\n"
    cruft.write_text(text, encoding="utf-8")
    return f"{CRUFT_FILE} records template {url} at {commit[:12]}: `cruft update` brings changes."


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
        "--template-url",
        help="the template repository's git URL (the setup workflow passes the API's "
        "template_repository.clone_url): recorded in .cruft.json with the commit whose tree "
        "this repository holds, so that `cruft update` works",
    )
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
            recorded = record_template(project, root, args.template_url)
            parked = [] if args.keep_workflows else park_workflows(project)
            count = replace_contents(root, tracked, project)
    except SetupError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    print(
        f"Rendered '{answers['project_name']}' ({answers['project_slug']}) in place: "
        f"{len(tracked)} template files removed, {count} project files written."
    )
    print(recorded)
    if parked:
        print(
            f"The project's workflows ({', '.join(parked)}) are in {PENDING}/: the default "
            f"Actions token cannot add workflow files. See {PENDING}/README.md to enable them."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
