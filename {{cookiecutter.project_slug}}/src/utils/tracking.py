"""Experiment tracking: one JSON log per run in ``data/results/``{% if cookiecutter.experiment_tracking == "wandb" %}, and the run in Weights & Biases{% endif %}.

Each log holds the config, the results, notes, the git commit (and whether the working
tree had uncommitted changes), package versions and wall time, so a result can be traced
back to the code that made it.
"""

from __future__ import annotations

import json
{%- if cookiecutter.experiment_tracking == "wandb" %}
import logging
import netrc
import os
{%- endif %}
import platform
import subprocess
from collections.abc import Mapping
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any
{%- if cookiecutter.experiment_tracking == "wandb" %}
from urllib.parse import urlparse
{%- endif %}

from src.utils.files import PROJECT_ROOT, write_text_atomic

PACKAGES = ("torch", "transformer-lens", "numpy")
{%- if cookiecutter.experiment_tracking == "wandb" %}
logger = logging.getLogger(__name__)
{%- endif %}


def log_experiment(
    name: str,
    config: Mapping[str, Any],
    results: Mapping[str, Any],
    notes: str = "",
    *,
    results_dir: str | Path = "data/results",
    wall_time_s: float | None = None,
{%- if cookiecutter.experiment_tracking == "wandb" %}
    use_wandb: bool = True,
{%- endif %}
) -> Path:
    """Write ``{results_dir}/{name}_{YYYYmmdd_HHMMSS}.json`` atomically; return its path.

    The file appears complete or not at all (temp file + ``os.replace``); a run in the
    same second gets a ``-1``, ``-2``... suffix instead of overwriting an earlier log.
    """
    if not name or Path(name).name != name:
        raise ValueError(f"experiment name must be a plain file name, got {name!r}")
    now = datetime.now()
    commit, dirty = git_state()
    entry = {
        "name": name,
        "timestamp": now.isoformat(timespec="seconds"),
        "config": dict(config),
        "results": dict(results),
        "notes": notes,
        "git_commit": commit,
        "git_dirty": dirty,
        "versions": package_versions(),
        "wall_time_s": wall_time_s,
    }
    text = json.dumps(entry, indent=2, default=str) + "\n"

    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{name}_{now:%Y%m%d_%H%M%S}"
    path, n = results_dir / f"{stem}.json", 0
    while path.exists():
        n += 1
        path = results_dir / f"{stem}-{n}.json"
    write_text_atomic(path, text)
{%- if cookiecutter.experiment_tracking == "wandb" %}

    if use_wandb:
        model_name = config.get("model", {}).get("name")
        log_to_wandb(name, config, results, tags=[model_name] if model_name else [])
{%- endif %}
    return path


def git_state(cwd: str | Path = PROJECT_ROOT) -> tuple[str | None, bool | None]:
    """(HEAD commit, tracked files modified?) of the repo at ``cwd``; (None, None) if none."""
    try:
        commit = _git(cwd, "rev-parse", "HEAD")
        dirty = bool(_git(cwd, "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, dirty


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that decide numerical results, and Python's."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def _git(cwd: str | Path, *args: str) -> str:
    result = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
    )
    return result.stdout.strip()
{%- if cookiecutter.experiment_tracking == "wandb" %}


WANDB_FIX = "run `wandb login` (or set WANDB_API_KEY), or set WANDB_MODE=offline to log locally"
WANDB_NOT_LOGGED_IN = f"W&B: not logged in, so this run is in its JSON log only; {WANDB_FIX}"


def wandb_ready() -> bool:
    """Whether wandb can log without asking for a key: offline or disabled mode, an API key in
    the environment, or one that `wandb login` saved in ~/.netrc (or $NETRC)."""
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        return True
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def log_to_wandb(
    name: str, config: Mapping[str, Any], results: Mapping[str, Any], tags: list[str] | None = None
) -> None:
    """Log one run to Weights & Biases: the config, and the numeric results (nested keys
    joined with "/"). Project from ``$WANDB_PROJECT`` (default "mech-interp"); honours
    ``WANDB_MODE=offline`` and ``WANDB_DIR``."""
    if not wandb_ready():
        logger.warning(WANDB_NOT_LOGGED_IN)
        return
    import wandb

    def numeric(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
        flat: dict[str, float] = {}
        for key, value in values.items():
            if isinstance(value, Mapping):
                flat |= numeric(value, f"{prefix}{key}/")
            elif isinstance(value, int | float):
                flat[f"{prefix}{key}"] = value
        return flat

    try:
        run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "mech-interp"),
            name=name,
            config=dict(config),
            tags=list(tags or []),
            dir=os.environ.get("WANDB_DIR"),  # read per run: wandb caches its settings per process
        )
    except Exception as error:  # the JSON log is written: W&B trouble must not fail the run
        logger.warning(f"W&B: run not logged ({type(error).__name__}: {error}); {WANDB_FIX}")
        return
    try:
        run.log(numeric(results))
    finally:
        run.finish()
{%- endif %}
