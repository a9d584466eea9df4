"""Decide whether the setup workflow renders this repository into a project.

Only a repository made with GitHub's "Use this template" from the template renders, once:

- generated from a template (the REST API's `template_repository` is set): render;
- the template itself (`is_template`), a fork (`fork`, it edits the template), or a copy
  pushed by hand (a private copy, a lab's customised template: no `template_repository`):
  never, they stay templates;
- already rendered (no `cookiecutter.json` at the root): nothing left to do.

    gh api "repos/$GITHUB_REPOSITORY" > repo.json
    python .github/scripts/should_render.py repo.json [--root .]

Prints one line saying why, and writes `render=true` or `render=false` (and the template's
`template_url`, for .cruft.json) to `$GITHUB_OUTPUT` when that is set. Exits 0 either way, 1
only for an answer that is not a repository's. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

TEMPLATE_DIR = "{{cookiecutter.project_slug}}"


def decide(repo: dict, root: Path) -> tuple[bool, str]:
    """(render?, why) from the `GET /repos/{owner}/{repo}` answer and the checked-out tree."""
    name = repo.get("full_name") or repo.get("name") or "this repository"
    if repo.get("is_template"):
        return False, f"{name} is a template repository: it stays the template"
    if repo.get("fork"):
        return False, f"{name} is a fork: forks edit the template, they are not projects"
    source = repo.get("template_repository")
    if not source:
        return False, (
            f"{name} was not generated from a template (a copy pushed by hand): it stays a "
            "template; mark it as one in Settings > Template repository"
        )
    if not (root / "cookiecutter.json").is_file() or not (root / TEMPLATE_DIR).is_dir():
        return False, f"{name} is already rendered (no cookiecutter.json at its root)"
    return True, f"{name} was generated from {source.get('full_name', 'a template')}: rendering"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("answer", type=Path, help="the REST API's JSON for this repository")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the checked-out tree")
    args = parser.parse_args(argv)
    try:
        repo = json.loads(args.answer.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        print(f"ERROR: {args.answer}: not a GitHub API answer ({error})", file=sys.stderr)
        return 1
    if not isinstance(repo, dict) or "fork" not in repo:
        print(f"ERROR: {args.answer}: not a repository (GET /repos/OWNER/REPO)", file=sys.stderr)
        return 1
    render, why = decide(repo, args.root)
    print(why)
    output = os.environ.get("GITHUB_OUTPUT")
    if output:
        url = (repo.get("template_repository") or {}).get("clone_url", "")
        with open(output, "a", encoding="utf-8") as file:
            file.write(f"render={'true' if render else 'false'}\n")
            if render and url:
                file.write(f"template_url={url}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
