"""The registry of experiment kinds: every module of this folder that defines ``KIND``.

A kind is what ``scripts/run_experiment.py`` runs for a config: the config section that
selects it (its top-level key), its runner, the figures drawn from its results (names of
``src.visualization.figures.FIGURES``) and its headline result (the number CLAUDE.md's
Current Experiments shows). Config validation (``load_config``), run_experiment.py, the
figure rebuild and ``scripts/update_docs.py`` (through the ``kind`` and ``headline`` every
log carries) all read it, so adding a kind is adding its module and a config.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, create_model

from src.utils.config import ExperimentConfig, SAETrainingConfig
from src.utils.validation import read_yaml, validate

# Modules of this folder that are not kinds.
SHARED_MODULES = ("common", "registry")


@dataclass(frozen=True)
class ExperimentKind:
    """One kind of experiment; its module defines it as ``KIND``."""

    name: str  # the config section that selects it; the log's "kind"
    label: str  # what it is, in words: "activation patching"
    run: Callable[..., dict[str, Any]]  # run(model, dataset, config, *, batch_size, progress)
    section: type[BaseModel] | None = None  # the section's schema; None: selected otherwise
    figures: tuple[str, ...] = ()  # figure makers drawn from its results
    headline: str | None = None  # the results key shown first in CLAUDE.md
    gradients: bool = False  # runs backward passes (sizes the memory check before loading)


@functools.cache
def kinds() -> dict[str, ExperimentKind]:
    """Every kind, by name, from the modules of ``src.experiments`` (imported here)."""
    import src.experiments as package

    found: dict[str, ExperimentKind] = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name in SHARED_MODULES:
            continue
        kind = getattr(importlib.import_module(f"{package.__name__}.{info.name}"), "KIND", None)
        if isinstance(kind, ExperimentKind):
            if kind.name in found:
                raise RuntimeError(f"two experiment kinds are named {kind.name!r}")
            found[kind.name] = kind
    return found


def get_kind(name: str) -> ExperimentKind:
    """The kind ``name``; a ValueError listing the known kinds otherwise."""
    known = kinds()
    if name not in known:
        raise ValueError(f"no experiment kind {name!r}; known: {', '.join(known)}")
    return known[name]


@functools.cache
def experiment_config() -> type[ExperimentConfig]:
    """``ExperimentConfig`` with one optional section per kind that has one."""
    sections: dict[str, Any] = {
        kind.name: (Optional[kind.section], None)  # noqa: UP045 (a runtime type, not a hint)
        for kind in kinds().values()
        if kind.section is not None
    }
    return create_model("ExperimentConfig", __base__=ExperimentConfig, **sections)


def load_config(path: str | Path) -> ExperimentConfig | SAETrainingConfig:
    """Load and validate a YAML config: a top-level ``sae`` section makes it an
    SAETrainingConfig, anything else an experiment config of the registered kinds. The
    ``sweep:`` and ``launcher:`` sections of a sweep (``scripts/sweep.py``) are left out.

    Raises ConfigError (one line: file, dotted key, what is wanted) for a missing file,
    invalid YAML, unknown/missing keys, wrong types and out-of-range values.
    """
    raw = read_yaml(path)
    # a sweep's sections (src/scale/sweeps.py): a single run runs the file's own values
    raw = {key: value for key, value in raw.items() if key not in ("sweep", "launcher")}
    return validate(SAETrainingConfig if "sae" in raw else experiment_config(), raw, path)
