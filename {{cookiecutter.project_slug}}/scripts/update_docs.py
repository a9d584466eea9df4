"""Rewrite the generated sections of CLAUDE.md and AGENTS.md from what the project holds.

Sections sit between `<!-- generated:NAME -->` and `<!-- /generated:NAME -->`
markers; text outside the markers is never touched. Standard library and
pyyaml only (with `scripts/docs_*.py` and `src/models/families.py`, which are too),
so the project generator's hook can run it before any install.

    python scripts/update_docs.py          # rewrite in place
    python scripts/update_docs.py --check  # exit 1 if a section is stale
    python scripts/update_docs.py --stage  # after a commit: refresh and stage (post-commit hook)

A file that does not parse (work in progress) is listed without a description, with one
warning naming it: a refresh never fails the run or the commit that started it.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
# `src` (the family table's reader) and this folder (docs_*), however this is run
for _folder in (ROOT, ROOT / "scripts"):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))
from docs_compute import PROJECT_FILE, compute  # noqa: E402
from docs_tables import COMMANDS, FOLDERS, KEY_FILE_GROUPS  # noqa: E402

DOCS = ("CLAUDE.md", "AGENTS.md")


# A period after these ends no sentence ("Wang et al. (2022)", "e.g. GPT-2").
ABBREVIATIONS = re.compile(r"(?:\bet al|\be\.g|\bi\.e|\betc|\bvs|\bcf|\bFig|\bEq|\bapprox)$")


def first_sentence(text: str) -> str:
    """The first sentence of `text`, on one line, with reST ``literals`` as Markdown `code`.

    It ends at a period and a space outside parentheses and not after an abbreviation."""
    text = " ".join(text.split()).replace("``", "`")
    for match in re.finditer(r"\. ", text):
        before = text[: match.start()]
        if before.count("(") <= before.count(")") and not ABBREVIATIONS.search(before):
            return text[: match.start() + 1]
    return text


def warn(message: str) -> None:
    """One line on stderr: a doc refresh reports what it skipped and never fails a run."""
    print(f"warning: {message}", file=sys.stderr)


def describe(path: Path, root: Path | None = None) -> str:
    """One line saying what a file is: its docstring, leading comment or first heading.

    A file that does not parse (work in progress) gets no description and one warning."""
    try:
        return _describe(path)
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError) as error:
        where = f" line {error.lineno}" if getattr(error, "lineno", None) else ""
        warn(
            f"{path.relative_to(root).as_posix() if root else path}: could not read its description ({type(error).__name__}{where}); "
            "CLAUDE.md lists it without one until it parses"
        )
        return ""


def _describe(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".py":
        return first_sentence(ast.get_docstring(ast.parse(text)) or "")
    if path.suffix in (".yaml", ".yml"):
        comment = []
        for line in text.splitlines():
            if not line.startswith("#") or line.lstrip("# ").startswith("Run:"):
                break
            comment.append(line.lstrip("# "))
        return first_sentence(" ".join(comment))
    if path.suffix == ".ipynb":
        for cell in json.loads(text).get("cells", []):
            source = "".join(cell.get("source", [])).strip()
            if cell.get("cell_type") == "markdown" and source:
                return source.splitlines()[0].lstrip("# ").strip()
    return ""


def key_files(root: Path) -> str:
    """Markdown list of the project's files, grouped, each with its one-line description."""
    lines = []
    for group, patterns in KEY_FILE_GROUPS.items():
        files = [p for pattern in patterns for p in sorted(root.glob(pattern))]
        files = [p for p in files if p.name != "__init__.py"]
        if not files:
            continue
        lines.append(f"### {group}")
        for path in files:
            note = describe(path, root)
            lines.append(
                f"- `{path.relative_to(root).as_posix()}`" + (f" - {note}" if note else "")
            )
        lines.append("")
    lines.append("### Data")
    lines += [
        f"- `{folder}` - {note}" for folder, note in FOLDERS.items() if (root / folder).exists()
    ]
    return "\n".join(lines)


def _logs(results_dir: Path) -> list[dict]:
    """Every JSON run log (a dict with a name and results) under data/results/."""
    logs = []
    for path in sorted(results_dir.rglob("*.json")):
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(entry, dict) and "name" in entry and isinstance(entry.get("results"), dict):
            logs.append(entry)
    return logs


def _latest(logs: list[dict]) -> dict | None:
    return max(logs, key=lambda entry: str(entry.get("timestamp", "")), default=None)


def _latest_log(logs: list[dict], cfg: dict, name: str) -> dict | None:
    """The newest log of a config: by experiment name, or for an SAE config (whose runs are
    named after model, hook and architecture) by its results folder."""
    if "sae" not in cfg:
        return _latest([entry for entry in logs if entry["name"] == name])
    folder = (cfg.get("output") or {}).get("results_dir")
    return _latest(
        [
            entry
            for entry in logs
            if isinstance(entry.get("config"), dict)
            and (entry["config"].get("output") or {}).get("results_dir") == folder
        ]
    )


# The result shown first in Current Experiments, when a log has it.
# A log names its headline (the experiment kind's, from src.experiments.registry); these are
# the registry's headlines for logs written before logs named theirs (a test ties the two).
HEADLINE_KEYS = (
    "recovered",  # circuit discovery: fraction of the clean metric the circuit keeps
    "explained_variance",  # SAE training
    "head_out_pearson_r",  # attribution vs activation patching
    "head_out_top_effect",  # patching, ablation
    "top_path_effect",  # path patching
    "mean_kl_to_final",  # logit lens
    "clean_logit_diff",  # baseline
    "max_accuracy",  # linear probes: the best layer's held-out accuracy
    "steered_shift",  # steering: metric shift at the largest coefficient
)


def _headline(results: dict) -> str:
    """The headline the results name (else the first of HEADLINE_KEYS they have, else the
    first number), as `key=value`; an SAE run also shows its L0."""
    numbers = {
        key: value
        for key, value in results.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }
    named = [results["headline"]] if isinstance(results.get("headline"), str) else []
    key = next((k for k in (*named, *HEADLINE_KEYS) if k in numbers), next(iter(numbers), None))
    if key is None:
        return ""
    extra = [f"l0={numbers['l0']:.3g}"] if key == "explained_variance" and "l0" in numbers else []
    return " ".join([f"{key}={numbers[key]:.3g}", *extra])


def experiments(root: Path) -> str:
    """Markdown table of the shipped configs and the status of their latest run."""
    logs = _logs(root / "data" / "results")
    rows = ["| Experiment | Config | Model | Status | Notes |", "|---|---|---|---|---|"]
    for path in sorted((root / "configs").glob("*.yaml")):
        if path == root / PROJECT_FILE:  # the project's settings, not an experiment
            continue
        try:
            cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            rows.append(f"| ? | `configs/{path.name}` | ? | Blocked | invalid YAML |")
            continue
        if "sae" in cfg:
            name, note = path.stem, "SAE training"
        else:
            name = cfg.get("experiment", {}).get("name", path.stem)
            note = cfg.get("experiment", {}).get("description", "")
        model = cfg.get("model", {}).get("name", "")
        log = _latest_log(logs, cfg, name)
        if log:
            status = f"Complete ({str(log.get('timestamp', ''))[:10]})"
            note = " ".join(part for part in (_headline(log["results"]), note) if part)
        else:
            status = "Not started"
        rows.append(f"| {name} | `configs/{path.name}` | {model} | {status} | {note} |")
    return "\n".join(rows)


def commands(root: Path) -> str:
    """A bash block of the common commands whose files exist."""
    lines = ["```bash"]
    for comment, command, needs in COMMANDS:
        if (root / needs).exists():
            lines += [f"# {comment}", command, ""]
    return "\n".join(lines).rstrip() + "\n```"


def _cache_line(root: Path, folder: Path) -> str:
    """One cached-activations folder: what its metadata JSON says it holds."""
    line = f"- `{folder.relative_to(root).as_posix()}/`"
    try:
        meta = json.loads((folder / "metadata.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return line + " - no readable metadata.json (incomplete or foreign)"
    hooks = ", ".join(f"`{name}`" for name in meta.get("hook_names", []))
    done, total = meta.get("tokens_done", meta.get("n_tokens")), meta.get("n_tokens")
    state = "complete" if meta.get("complete") else f"partial: {done} of {total} tokens"
    return (
        f"{line} - {meta.get('model', '?')}, {hooks or '?'}, {meta.get('dataset', '?')}, "
        f"{total} tokens, {meta.get('dtype', '?')}, {state}"
    )


def shared_resources(root: Path) -> str:
    """Markdown list of cached activations (from their metadata JSON) and result logs."""
    activations = root / "data" / "activations"
    caches = sorted(p for p in activations.glob("*") if p.is_dir() and not p.name.startswith("."))
    saes = sorted(p.parent for p in (root / "data" / "results").rglob("sae_weights.safetensors"))
    results = sorted(
        p
        for p in (root / "data" / "results").rglob("*.json")
        if not any(p.is_relative_to(sae) for sae in saes)
    )
    lines = ["### Cached Activations"]
    lines += [_cache_line(root, p) for p in caches] or ["- None yet"]
    lines += ["", "### Trained SAEs (SAELens format: `SAE.load_from_disk(path)`)"]
    lines += [f"- `{p.relative_to(root).as_posix()}/`" for p in saes] or ["- None yet"]
    lines += ["", "### Results"]
    lines += [f"- `{p.relative_to(root).as_posix()}`" for p in results] or ["- None yet"]
    return "\n".join(lines)


SECTIONS = {
    "key-files": key_files,
    "compute": compute,
    "experiments": experiments,
    "commands": commands,
    "shared-resources": shared_resources,
}


def replace_section(text: str, name: str, body: str) -> str:
    """Put `body` between the markers of section `name`; text without the markers is unchanged."""
    pattern = re.compile(
        rf"(<!-- generated:{re.escape(name)} -->\n).*?(<!-- /generated:{re.escape(name)} -->)",
        re.DOTALL,
    )
    return pattern.sub(lambda m: m.group(1) + body.rstrip() + "\n" + m.group(2), text)


def refreshed(root: Path) -> dict[Path, tuple[str, str]]:
    """Each doc under `root` with its current text and its text with fresh generated sections."""
    bodies = {name: make(root) for name, make in SECTIONS.items()}
    if not (root / "AGENTS.md").exists():  # not chosen: the docs name CLAUDE.md alone
        bodies = {
            name: body.replace(" / AGENTS.md", "").replace(" and AGENTS.md", "")
            for name, body in bodies.items()
        }
    docs = {}
    for path in (root / doc for doc in DOCS):
        if path.exists():
            old = new = path.read_text(encoding="utf-8")
            for name, body in bodies.items():
                new = replace_section(new, name, body)
            docs[path] = (old, new)
    return docs


def update(root: Path = ROOT, skip: list[Path] = ()) -> list[Path]:
    """Rewrite every stale generated section of the docs under `root` (but those in `skip`);
    return the files changed."""
    changed = []
    for path, (old, new) in refreshed(root).items():
        if new != old and path not in skip:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(new, encoding="utf-8")
            tmp.replace(path)
            changed.append(path)
    return changed


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)


def update_and_stage(root: Path = ROOT) -> list[Path]:
    """After a commit (the post-commit hook): refresh the docs and stage what changed, so the
    refresh is in the next commit and leaves no unstaged change (pre-commit reports a hook that
    leaves one as failed). A doc with unstaged edits of your own is left alone."""
    mine = [
        path
        for path in (root / doc for doc in DOCS)
        if path.exists() and _git(root, "diff", "--quiet", "--", path.name).returncode == 1
    ]
    for path in mine:
        warn(f"{path.name} has unstaged edits: not refreshed (run python scripts/update_docs.py)")
    changed = update(root, skip=mine)
    if changed:
        _git(root, "add", "--", *(path.name for path in changed))
    return changed


def refresh_after(written: Path, root: Path = ROOT) -> list[Path]:
    """Refresh the docs after a run wrote ``written`` (a log or a cache folder), if that lies
    inside the project ``root``: a run into a temporary folder changes nothing here."""
    if not Path(written).resolve().is_relative_to(root.resolve()):
        return []
    return update(root)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="project root (default: this one)")
    parser.add_argument("--check", action="store_true", help="only report; exit 1 if stale")
    parser.add_argument(
        "--stage",
        action="store_true",
        help="stage the refreshed docs (the post-commit hook); skip docs with unstaged edits",
    )
    args = parser.parse_args(argv)
    if args.check:
        stale = [path for path, (old, new) in refreshed(args.root).items() if old != new]
        for path in stale:
            print(f"{path.name}: generated sections are stale; run python scripts/update_docs.py")
        return 1 if stale else 0
    for path in update_and_stage(args.root) if args.stage else update(args.root):
        print(f"updated {path.relative_to(args.root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
