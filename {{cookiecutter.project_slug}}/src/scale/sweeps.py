"""Sweeps: a config's ``sweep:`` section names values of config keys; the points are their
product, each a complete config run as a single run would run it.

    sweep:
      data.seed: [0, 1, 2]          # dotted keys of the config ("seed" alone: data.seed)
      patching.layers: [[0], [1]]

Each point's config is the file's config with the point's values and its own output folder,
``{output.results_dir}/sweep/{point id}/`` (its JSON log, figures, SAE): no two points write
one file. A point is done when its folder holds its log, so a rerun skips it (a sweep killed
halfway finishes by running it again). ``summary_rows`` / ``write_summary`` gather the
points' numbers into ``{output.results_dir}/sweep/summary.csv`` and ``summary.png``.

Everything is checked before anything runs: an empty sweep, a key that is not a config field
(one line naming it) and every point's config (``ConfigError``, naming the point).
"""

from __future__ import annotations

import copy
import csv
import io
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from src.scale.launchers import LauncherConfig
from src.utils.config import SAETrainingConfig
from src.utils.files import write_atomic, write_text_atomic
from src.utils.validation import ConfigError, _strip, read_yaml, validate

SWEEP_KEY, LAUNCHER_KEY = "sweep", "launcher"  # top-level sections a single run ignores
TIMING = re.compile(r"(per_s|time)")  # numbers that vary run to run: not in the summary


@dataclass(frozen=True)
class SweepPoint:
    """One point: its id (its folder's name), swept values and complete config (a dict)."""

    id: str
    values: dict[str, Any]
    config: dict[str, Any]
    dir: Path


@dataclass(frozen=True)
class Sweep:
    """A config file's sweep: its kind ("experiment" or "sae"), points and launcher section."""

    path: Path
    kind: str
    name: str
    keys: tuple[str, ...]
    points: tuple[SweepPoint, ...]
    launcher: dict[str, Any]  # the config's launcher: keys (over configs/project.yaml's)
    root: Path  # {output.results_dir}/sweep


def config_schema(kind: str) -> type[BaseModel]:
    """The schema a point's config is validated against."""
    if kind == "sae":
        return SAETrainingConfig
    from src.experiments.registry import experiment_config

    return experiment_config()


def load_sweep(path: str | Path) -> Sweep:
    """The sweep of config ``path``, every point's config validated; ConfigError (one line)
    for a config without a ``sweep:`` section, an empty one, an unknown key, an empty or
    non-list value, duplicate values or a point whose config is invalid."""
    path = Path(path)
    raw = read_yaml(path)
    section = raw.pop(SWEEP_KEY, None)
    launcher_raw = raw.pop(LAUNCHER_KEY, None)
    if launcher_raw is not None:  # checked now; merged over configs/project.yaml's later
        validate(LauncherConfig, launcher_raw, f"{path}: launcher")
    kind = "sae" if "sae" in raw else "experiment"
    schema = config_schema(kind)
    if section is None:
        raise ConfigError(f"{path}: no sweep section (add `sweep:` with keys and value lists)")
    if not isinstance(section, dict) or not section:
        raise ConfigError(f"{path}: sweep: expected keys with lists of values, got none")
    keys = {resolve_key(schema, raw, key, path): values for key, values in section.items()}
    for key, values in keys.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: sweep.{key}: expected a non-empty list of values")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise ConfigError(f"{path}: sweep.{key}: duplicate values")
    base = validate(schema, raw, path)  # the file itself is a valid config
    results_dir = Path(base.output.results_dir)
    root = results_dir / "sweep"
    points = []
    combos = [dict(zip(keys, c, strict=True)) for c in itertools.product(*keys.values())]
    names = [point_name(values) for values in combos]
    for i, values in enumerate(combos):
        # distinct values may share a folder name ("a b" and "a_b"): number those
        point_id = names[i] if names.count(names[i]) == 1 else f"{names[i]}_p{i}"
        config = copy.deepcopy(raw)
        for key, value in values.items():
            _set(config, key, value)
        config["output"]["results_dir"] = str(root / point_id)
        if kind == "experiment":
            config["output"]["figures_dir"] = str(root / point_id / "figures")
        validate(schema, config, f"{path}: sweep point {point_id}")
        points.append(SweepPoint(point_id, values, config, root / point_id))
    name = base.experiment.name if kind == "experiment" else path.stem
    return Sweep(path, kind, name, tuple(keys), tuple(points), dict(launcher_raw or {}), root)


def resolve_key(schema: type[BaseModel], raw: dict[str, Any], key: str, path: Path) -> str:
    """``key`` as a dotted path of config fields; a bare field name (``seed``) names the one
    section of ``raw`` that has it. ConfigError naming the key when no field has it."""
    parts = str(key).split(".")
    if len(parts) == 1:
        owners = [
            s for s in raw if s in schema.model_fields and parts[0] in (_fields(schema, [s]) or {})
        ]
        if len(owners) == 1:
            parts = [owners[0], parts[0]]
    if (
        len(parts) < 2
        or _fields(schema, parts[:-1]) is None
        or parts[-1] not in _fields(schema, parts[:-1])
    ):
        raise ConfigError(f"{path}: sweep.{key}: not a config field (want e.g. data.seed)")
    if parts[0] not in raw:
        raise ConfigError(f"{path}: sweep.{key}: the config has no {parts[0]} section")
    return ".".join(parts)


def _fields(schema: type[BaseModel], parts: list[str]) -> dict[str, Any] | None:
    """The fields of the section at ``parts`` (None when that is not a section)."""
    tp: Any = schema
    for part in parts:
        tp = _strip(tp)
        if not (isinstance(tp, type) and issubclass(tp, BaseModel)) or part not in tp.model_fields:
            return None
        tp = tp.model_fields[part].annotation
    tp = _strip(tp)
    return tp.model_fields if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _set(config: dict[str, Any], key: str, value: Any) -> None:
    *sections, field = key.split(".")
    for section in sections:
        config = config.setdefault(section, {})
    config[field] = copy.deepcopy(value)


def point_name(values: dict[str, Any]) -> str:
    """A point's folder name from its values: ``seed-1_layers-0_1`` (key, value, and
    characters other than letters, digits, '.' and '-' as '_')."""
    parts = []
    for key, value in values.items():
        text = json.dumps(value) if not isinstance(value, str) else value
        text = re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_") or "x"
        parts.append(f"{key.split('.')[-1]}-{text}")
    return "_".join(parts)[:120]


# --- done points and the summary ----------------------------------------------------------


def point_log(point_dir: Path) -> Path | None:
    """The point's JSON log (the newest, when rerun by hand), or None when it is not done."""
    logs = sorted(point_dir.glob("*.json"), key=lambda p: p.stat().st_mtime)
    for log in reversed(logs):
        try:
            if "results" in json.loads(log.read_text(encoding="utf-8")):
                return log
        except (OSError, json.JSONDecodeError):
            continue
    return None


def summary_rows(sweep: Sweep, failed: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per point: its id, swept values, status and the top-level numbers of its log
    (not timings, which differ run to run)."""
    rows = []
    for point in sweep.points:
        row: dict[str, Any] = {"point": point.id}
        row |= {key: json.dumps(value) for key, value in point.values.items()}
        log = point_log(point.dir)
        if log is None:
            row["status"] = (
                f"failed: {failed[point.id]}" if point.id in (failed or {}) else "missing"
            )
            rows.append(row)
            continue
        results = json.loads(log.read_text(encoding="utf-8"))["results"]
        row["status"] = "done"
        for key, value in results.items():
            if (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and not TIMING.search(key)
            ):
                row[key] = value
        rows.append(row)
    return rows


def summary_csv(rows: list[dict[str, Any]]) -> str:
    """The rows as CSV text, numbers to 6 significant digits (equal for equal results)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
    return out.getvalue()


def write_summary(
    sweep: Sweep, rows: list[dict[str, Any]], headline: tuple[str, ...]
) -> tuple[Path, Path]:
    """``summary.csv`` and ``summary.png`` (a bar per point for each ``headline`` number)
    in the sweep's folder, written atomically; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep.root.mkdir(parents=True, exist_ok=True)
    table, figure = sweep.root / "summary.csv", sweep.root / "summary.png"
    write_text_atomic(table, summary_csv(rows))
    metrics = [key for key in headline if any(key in row for row in rows)] or ["status"]
    fig, axes = plt.subplots(
        len(metrics), 1, figsize=(max(4, 0.6 * len(rows) + 2), 2.2 * len(metrics)), squeeze=False
    )
    labels = [row["point"] for row in rows]
    for ax, key in zip(axes[:, 0], metrics, strict=True):
        values = [
            row.get(key, float("nan")) if key != "status" else float(row["status"] == "done")
            for row in rows
        ]
        ax.bar(range(len(rows)), values, color="tab:blue")
        ax.set_ylabel(key)
        ax.set_xticks(range(len(rows)), labels, rotation=45, ha="right", fontsize=7)
    axes[0, 0].set_title(f"sweep {sweep.name}: {len(rows)} points")
    fig.tight_layout()
    write_atomic(figure, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return table, figure
