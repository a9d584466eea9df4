"""Finish the generated project: prune, model defaults, CLAUDE.md, git init, first commit, hooks.

Every step is idempotent. A missing tool (git, pre-commit), a failing doc refresh or git step
only prints a warning with the command to run by hand: generation itself succeeds. Under cruft,
`cruft create` also gets its `.cruft.json` into the first commit, and the throwaway renders of
`cruft update` / `cruft diff` get the files only (no git repository, commit or commit hooks).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ANSWERS = json.loads(r"""{{ cookiecutter | tojson }}""")
# The answers' order, which `.cruft.json` keeps (tojson sorts a mapping's keys, not a list).
ANSWER_ORDER = json.loads(r"""{{ cookiecutter.keys() | list | tojson }}""")
PROJECT = Path.cwd()
sys.dont_write_bytecode = True  # importing the project's modules leaves no __pycache__ in it
CRUFT_FILE = ".cruft.json"
# Answers cookiecutter adds that describe one run (where it wrote, its clone), not the project.
RUN_KEYS = ("_output_dir", "_repo_dir", "_checkout")

# Files that exist only when an answer asks for them: path -> keep?
OPTIONAL_FILES = {
    "AGENTS.md": ANSWERS["multi_agent"] == "yes",
    "LICENSE": ANSWERS["license"] != "none",
}

# A config value the template leaves to the main model's row of src/models/families.yaml.
FAMILY_DEFAULT = re.compile(
    r"null  # set at generation from src/models/families.yaml: (\S+)$", re.M
)
FIRST_COMMIT_MESSAGE = "Initial commit from mech-interp-template"


def warn(message: str, command: str) -> None:
    print(f"WARNING: {message}. Run it yourself: {command}", file=sys.stderr)


def prune() -> None:
    """Remove the files of options that were not chosen."""
    for name, keep in OPTIONAL_FILES.items():
        if not keep:
            (PROJECT / name).unlink(missing_ok=True)
    if ANSWERS["ci"] == "none":
        shutil.rmtree(PROJECT / ".github", ignore_errors=True)


def fill_model_defaults() -> None:
    """Write the main model's defaults (its row of the family table) into the configs."""
    sys.path.insert(0, str(PROJECT))
    from src.models.families import family

    row = dataclasses.asdict(family(ANSWERS["model_name"]))

    def value(match: re.Match) -> str:
        found = row
        for key in match.group(1).split("."):
            found = found[key]
        return json.dumps(found)

    for path in sorted((PROJECT / "configs").glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        if FAMILY_DEFAULT.search(text):
            path.write_text(FAMILY_DEFAULT.sub(value, text), encoding="utf-8")


def fill_docs() -> None:
    """Fill the generated sections of CLAUDE.md and AGENTS.md (scripts/update_docs.py)."""
    try:
        sys.path.insert(0, str(PROJECT / "scripts"))
        import update_docs

        update_docs.update(PROJECT)
    except Exception as error:  # a doc refresh must never fail generation
        warn(
            f"could not fill CLAUDE.md's generated sections ({error})",
            "python scripts/update_docs.py",
        )


def cruft_mode() -> str:
    """How cruft runs this hook: "create", "update" (a throwaway render), or "" (not cruft).

    cruft adds the template's commit to the answers as `_commit` (plain cookiecutter does not).
    `cruft update` and `cruft diff` render the old and the new template version into fresh
    `tempfile.TemporaryDirectory()` folders, `<system temp>/tmpXXXXXXXX/<slug>`, and diff them;
    cruft passes no other sign, so a project alone in such a folder counts as one of those.
    """
    if "_commit" not in ANSWERS:
        return ""
    parent = PROJECT.resolve().parent
    throwaway = (
        re.fullmatch(r"tmp[a-z0-9_]{8}", parent.name) is not None
        and parent.parent == Path(tempfile.gettempdir()).resolve()
        and [p.name for p in parent.iterdir()] == [PROJECT.name]
    )
    return "update" if throwaway else "create"


def write_cruft_file(template: str, commit: str, skip: tuple[str, ...] = ()) -> None:
    """Write `.cruft.json` as `cruft create` does (under cruft: byte for byte what cruft writes
    once this hook returns, so the first commit holds it and cruft's own write changes nothing;
    its `--checkout`, `--directory` and `--skip` are not visible here: with those, cruft's file
    differs and shows as a change). `skip`: answers that describe one run, not the project."""
    context = {key: ANSWERS[key] for key in ANSWER_ORDER if key not in skip}
    context.update(_template=template, _commit=commit)
    state = {
        "template": template,
        "commit": commit,
        "checkout": None,  # `cruft update` follows the template's default branch
        "context": {"cookiecutter": context},
        "directory": None,
    }
    text = json.dumps(state, ensure_ascii=False, indent=2, separators=(",", ": ")) + "\n"
    (PROJECT / CRUFT_FILE).write_text(text)  # cruft's json_dumps and write_text, byte for byte


def template_source() -> tuple[str, str] | None:
    """(URL, commit) of the template a plain `cookiecutter` render came from, for `.cruft.json`
    (so `cruft update` works on the project); None when the template is not a git checkout.

    cookiecutter clones a URL (`gh:org/...`, `https://...`, `file://...`) into
    `~/.cookiecutters/` (its `origin` is the URL) and reads a local path as it is."""
    given = str(ANSWERS.get("_template") or "")
    repo = Path(ANSWERS.get("_repo_dir") or "")
    if not repo.is_absolute():  # a relative local path: relative to where cookiecutter ran
        repo = Path(os.environ.get("PWD", "")) / repo
    if not given or not repo.is_dir():
        return None
    found = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--show-toplevel", "HEAD"],
        capture_output=True,
        text=True,
    )
    lines = found.stdout.split()
    if found.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != repo.resolve():
        return None
    if Path(given).expanduser().is_dir() or Path(os.environ.get("PWD", ""), given).is_dir():
        return str(repo.resolve()), lines[1]  # a local checkout
    origin = subprocess.run(
        ["git", "-C", str(repo), "remote", "get-url", "origin"], capture_output=True, text=True
    )
    url = origin.stdout.strip() if origin.returncode == 0 else ""
    return (url, lines[1]) if url else None


def git(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=PROJECT, capture_output=True, text=True, check=check)


def inside_work_tree() -> bool:
    return git("rev-parse", "--is-inside-work-tree", check=False).stdout.strip() == "true"


def init_git() -> bool:
    """`git init -b main` unless already in a work tree; True when this project is its own repo."""
    if inside_work_tree():
        return git("rev-parse", "--show-toplevel").stdout.strip() == str(PROJECT.resolve())
    result = git("init", "-b", "main", check=False)
    if result.returncode != 0:  # git older than 2.28 has no -b
        git("init", check=False)
        git("symbolic-ref", "HEAD", "refs/heads/main", check=False)
    return inside_work_tree()


def install_pre_commit() -> None:
    """Install the commit hooks: before a commit, strip notebook outputs (nbstripout), lint and
    guard data/; after it, refresh the generated sections of CLAUDE.md and AGENTS.md."""
    exe = shutil.which("pre-commit")
    if exe is None:
        warn(
            "pre-commit is not on PATH, so notebook outputs will not be stripped at commit",
            "pip install pre-commit && pre-commit install",
        )
        return
    result = subprocess.run([exe, "install"], cwd=PROJECT, capture_output=True, text=True)
    if result.returncode != 0:
        warn(
            f"pre-commit install failed: {result.stderr.strip() or result.stdout.strip()}",
            "pre-commit install",
        )


def first_commit() -> None:
    """One commit holding exactly the template's output, unless the repo already has one."""
    if git("rev-parse", "--verify", "--quiet", "HEAD", check=False).returncode == 0:
        return
    identity = []
    for key, answer in (("user.name", "author_name"), ("user.email", "author_email")):
        if not git("config", key, check=False).stdout.strip():
            identity += ["-c", f"{key}={ANSWERS[answer]}"]
    git("add", "--all")
    result = git(*identity, "commit", "--no-verify", "-m", FIRST_COMMIT_MESSAGE, check=False)
    if result.returncode != 0:
        warn(
            f"the first commit failed: {result.stderr.strip()}",
            f'git add --all && git commit -m "{FIRST_COMMIT_MESSAGE}"',
        )


def main() -> None:
    prune()
    fill_model_defaults()
    fill_docs()
    mode = cruft_mode()
    if mode == "update":
        print(
            "cruft is rendering into a temporary folder (update or diff): "
            "no git repository, commit or commit hooks there",
            file=sys.stderr,
        )
        return
    if mode == "create":
        write_cruft_file(ANSWERS["_template"], ANSWERS["_commit"])
    elif shutil.which("git") is not None:
        source = template_source()
        if source is None:
            print(
                "note: the template is not a git checkout, so no .cruft.json: "
                "`cruft update` needs the template's URL and commit",
                file=sys.stderr,
            )
        else:
            write_cruft_file(*source, skip=RUN_KEYS)
    if shutil.which("git") is None:
        warn(
            "git is not on PATH: no repository, commit hook or first commit",
            "git init -b main && pre-commit install && git add --all && git commit",
        )
        return
    try:
        if not init_git():
            return  # generated inside another repository: leave its history alone
        first_commit()  # before the hooks are installed: none runs on the template's output
        install_pre_commit()
    except (OSError, subprocess.CalledProcessError) as error:
        warn(f"git setup stopped ({error})", "git init -b main && pre-commit install")


if __name__ == "__main__":
    main()
