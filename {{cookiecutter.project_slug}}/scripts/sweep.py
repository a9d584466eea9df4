"""Run every point of a config's sweep as one task on a launcher, then summarize them.

    python scripts/sweep.py --config configs/toy_induction_sweep.yaml --launcher local
    python scripts/sweep.py --config configs/toy_sae_training_sweep.yaml --launcher slurm
    python scripts/sweep.py --config configs/toy_induction_sweep.yaml --launcher modal

The config is an experiment or SAE training config with a ``sweep:`` section (keys and value
lists; the points are their product, see src/scale/sweeps.py) and optionally a ``launcher:``
section (src/scale/launchers.py; default: the one of configs/project.yaml, else ``local``);
flags override it. Each point runs the code of a single run (scripts/run_experiment.py or
scripts/train_sae.py) and writes its JSON log in ``{output.results_dir}/sweep/{point}/``.
Points already done are skipped, so a killed sweep finishes when rerun; a failed point is
listed with its error and log while the others finish (exit status 1). The summary is
``{output.results_dir}/sweep/summary.csv`` and ``summary.png``. SAE points that share an
activation cache run after the first of them, which makes it. Config and launcher errors are
one line, exit status 2, before anything runs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules, however run
from common import PROJECT_ROOT, refresh_docs  # noqa: E402  (puts the project root on sys.path too)

PROJECT_FILE = PROJECT_ROOT / "configs" / "project.yaml"
SAE_HEADLINE = ("explained_variance", "l0", "dead_fraction", "mse")


@dataclass(frozen=True)
class PointTask:
    """What one task needs to run one point (picklable: plain values)."""

    kind: str  # "experiment" or "sae"
    config_path: str
    point_id: str
    config: dict[str, Any]
    batch_size: int
    activations_dir: str
    command: str


def run_point(task: PointTask) -> dict[str, Any]:
    """Run one point as a single run would and write its JSON log in its folder; return the
    log's path and text (a Modal task's files stay in its Volume: the driver copies the log)."""
    from src.scale.sweeps import config_schema
    from src.utils.config import config_to_dict
    from src.utils.tracking import log_experiment
    from src.utils.validation import validate

    where = f"{task.config_path}: sweep point {task.point_id}"
    cfg = validate(config_schema(task.kind), task.config, where)
    start = time.perf_counter()
    if task.kind == "experiment":
        import run_experiment as single

        model, dataset = single.load_inputs(cfg, Path(task.config_path), task.batch_size)
        results = single.run_kind(cfg, model, dataset, task.batch_size)
        name = cfg.experiment.name
    else:
        from common import load_run_model

        from src.data.activation_store import model_short_name
        from src.experiments.sae_training import run_sae_training, with_text_source

        cfg = with_text_source(cfg)
        model = load_run_model(cfg)
        results = run_sae_training(
            model, cfg, activations_dir=task.activations_dir, command=task.command
        )
        model_name = model_short_name(cfg.model.name)
        name = f"sae_{model_name}_{cfg.hook.name}_{cfg.sae.architecture}".replace("/", "-")
    log = log_experiment(
        name,
        config_to_dict(cfg),
        results,
        notes=f"sweep point {task.point_id} of {task.config_path}",
        results_dir=cfg.output.results_dir,
        wall_time_s=time.perf_counter() - start,
    )
    return {"log": str(log), "log_text": log.read_text(encoding="utf-8")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from src.scale.launchers import add_launcher_arguments

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="config with a sweep: section")
    parser.add_argument("--batch-size", type=int, default=64, help="prompts per forward pass")
    add_launcher_arguments(parser)
    return parser.parse_args(argv)


def base_launcher(sweep: Any) -> Any:
    """The launcher before the flags: configs/project.yaml's ``launcher:`` section (preset
    from the compute answer), with the config's own ``launcher:`` keys over it."""
    from src.scale.launchers import LauncherConfig
    from src.utils.validation import read_yaml, validate

    project = (read_yaml(PROJECT_FILE).get("launcher") or {}) if PROJECT_FILE.is_file() else {}
    return validate(LauncherConfig, {**project, **sweep.launcher}, f"{sweep.path}: launcher")


def cache_key(task: PointTask) -> str:
    """What decides an SAE point's activation cache: its model, hook and data sections."""
    return json.dumps([task.config[s] for s in ("model", "hook", "data")], sort_keys=True)


def cache_groups(sweep: Any, tasks: list[PointTask]) -> list[list[PointTask]]:
    """The tasks in phases: for SAE points, the first of each group sharing an activation
    cache runs before the others, so that one task makes each cache."""
    if sweep.kind != "sae":
        return [tasks]
    leaders: dict[str, PointTask] = {}
    for task in tasks:
        leaders.setdefault(cache_key(task), task)
    rest = [task for task in tasks if leaders[cache_key(task)] is not task]
    return [list(leaders.values()), rest] if rest else [list(leaders.values())]


def activations_dir(sweep: Any) -> str:
    """Where SAE points cache: per hook point when the sweep varies it (a cache folder's name
    has no hook point)."""
    return "data/activations/{hook}" if "hook.hook_point" in sweep.keys else "data/activations"


def run_sweep(sweep: Any, launcher: Any, batch_size: int, command: str) -> dict[str, str]:
    """Run the points not done yet; return {point id: error} of the failed ones."""
    from src.scale.launchers import map_tasks
    from src.scale.sweeps import point_log
    from src.utils.files import write_text_atomic

    tasks = []
    for point in sweep.points:
        if point_log(point.dir) is not None:
            continue
        hook = point.config.get("hook", {}).get("hook_point", "resid_pre")
        tasks.append(
            PointTask(
                sweep.kind,
                str(sweep.path),
                point.id,
                point.config,
                batch_size,
                activations_dir(sweep).format(hook=hook),
                command,
            )
        )
    print(
        f"sweep {sweep.name}: {len(sweep.points)} points, {len(sweep.points) - len(tasks)} done, "
        f"{len(tasks)} to run on {launcher.name}",
        file=sys.stderr,
    )
    failed: dict[str, str] = {}
    phases = cache_groups(sweep, tasks)
    broken: dict[str, str] = {}  # cache key -> the failed point that was to make it
    for phase in phases:
        runnable = []
        for task in phase:
            if sweep.kind == "sae" and cache_key(task) in broken:
                leader = broken[cache_key(task)]
                failed[task.point_id] = f"not run: {leader}, which makes its cache, failed"
            else:
                runnable.append(task)
        outcomes = map_tasks(run_point, runnable, launcher, f"sweep_{sweep.name}")
        for outcome in outcomes:
            task = outcome.item
            if not outcome.ok:
                failed[task.point_id] = f"{outcome.error} (log: {outcome.log_path})"
                if sweep.kind == "sae":
                    broken.setdefault(cache_key(task), task.point_id)
            elif not Path(outcome.result["log"]).exists():  # ran elsewhere (Modal's Volume)
                log = Path(outcome.result["log"])
                log.parent.mkdir(parents=True, exist_ok=True)
                write_text_atomic(log, outcome.result["log_text"])
    return failed


def headline(sweep: Any) -> tuple[str, ...]:
    """The numbers the summary figure shows: the kind's headline, or the SAE's."""
    if sweep.kind == "sae":
        return SAE_HEADLINE
    from src.experiments.registry import get_kind, load_config

    found = get_kind(load_config(sweep.path).kind).headline
    return (found,) if found else ()


def print_table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    """The summary's main columns, aligned (a failure's error is listed after the table)."""
    shown = ["point", "status", *[c for c in columns if any(c in row for row in rows)]]

    def cell(row: dict[str, Any], column: str) -> str:
        value = row.get(column, "")
        if column == "status":
            return str(value).split(":")[0]
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    cells = [[cell(row, c) for c in shown] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(shown)]
    for r in [shown, *cells]:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "scripts/sweep.py", *argv])
    from src.scale.launchers import LauncherError, check_launcher, launcher_from_args
    from src.scale.sweeps import load_sweep, summary_rows, write_summary
    from src.utils.validation import ConfigError

    try:
        sweep = load_sweep(args.config)
        launcher = launcher_from_args(args, base_launcher(sweep))
        check_launcher(launcher)
    except (ConfigError, LauncherError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    failed = run_sweep(sweep, launcher, args.batch_size, command)
    rows = summary_rows(sweep, failed)
    table, figure = write_summary(sweep, rows, headline(sweep))
    done = sum(row["status"] == "done" for row in rows)
    seconds = time.perf_counter() - start
    print(f"sweep {sweep.name} ({launcher.name}): {done}/{len(rows)} points done ({seconds:.1f} s)")
    print_table(rows, (*sweep.keys, *headline(sweep)))
    print(f"summary: {table}")
    print(f"figure: {figure}")
    for point, error in failed.items():
        print(f"failed: {point}: {error}")
    refresh_docs(table)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
