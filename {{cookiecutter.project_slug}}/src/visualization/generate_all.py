"""Rebuild every figure from what is in ``data/results/``.

    python -m src.visualization.generate_all [--results-dir data/results]
        [--figures-dir notebooks/figures] [--max-heads 4]

Reads every JSON log (``log_experiment``'s files, searched recursively) and redraws, for the
latest log of each experiment name, the figures its kind names in the registry
(``get_kind(kind).figures``, makers of ``src.visualization.figures``), under the names the
runs use: effect heatmaps, DLA heatmap and attention patterns of patching and attribution
runs; the circuit graph and attention patterns of circuit discovery; feature density, top
contexts and decoder directions of SAE training; nothing for the baseline (numbers only).
Everything is drawn from the logs and the files they name (circuit files, SAEs' feature
reports): no model is loaded, nothing runs forward.

It prints what it made, then what it could not make and why, one line each. Exit status:
0 when everything that could be drawn was drawn, including when inputs are legitimately
missing (a circuit file or feature report deleted, a log older than the data a figure
needs, older logs superseded by newer ones); 1 when something is broken and needs fixing:
a log or circuit file that cannot be read or parsed, results that do not have the expected
structure, a figure function that fails; 2 for bad arguments (no such results directory).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from src.experiments.registry import get_kind, kinds
from src.visualization.figures import FIGURES, Unavailable, resolve, show

# How the report names each maker's files.
WHAT = {
    "effects": "effect figures",
    "dla": "DLA figure",
    "circuit": "circuit figure",
    "attention": "attention figure",
    "sae_features": "SAE figures",
    "sae_dashboard": "SAE dashboard",
}


@dataclass
class Report:
    made: list[str] = field(default_factory=list)
    not_made: list[str] = field(default_factory=list)  # "what: why"
    errors: list[str] = field(default_factory=list)  # "what: why", also real errors

    def print(self, out: Any = None) -> None:
        out = out or sys.stdout
        print(f"made ({len(self.made)}):", file=out)
        for line in self.made:
            print(f"  {line}", file=out)
        print(f"could not make ({len(self.not_made) + len(self.errors)}):", file=out)
        for line in self.not_made:
            print(f"  {line}", file=out)
        for line in self.errors:
            print(f"  ERROR {line}", file=out)


@dataclass
class Options:
    figures_dir: Path
    max_heads: int = 4
    progress: bool = False


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) < 300 else text[:297] + "..."


# --- finding logs ------------------------------------------------------------------------


@dataclass
class Found:
    logs: dict[str, list[tuple[Path, dict[str, Any]]]]  # name -> [(path, log)], newest last
    circuits: dict[Path, dict[str, Any]]  # circuit files (not logs)


def _skipped(path: Path, data: Any) -> bool:
    """A saved SAE's ``cfg.json`` or feature report, read with its log."""
    if not isinstance(data, dict):
        return False
    return (path.name == "cfg.json" and "d_sae" in data) or {"density", "contexts"} <= set(data)


def find_results(results_dir: Path, report: Report) -> Found:
    """Every JSON under ``results_dir``: logs grouped by experiment name (oldest first) and
    circuit files; saved SAEs' files are skipped; anything else is reported."""
    found = Found({}, {})
    for path in sorted(results_dir.rglob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            report.errors.append(f"{show(path)}: unreadable ({_one_line(error)})")
            continue
        if _skipped(path, data):
            continue
        if isinstance(data, dict) and "nodes" in data and "edges" in data:
            found.circuits[path.resolve()] = data
        elif isinstance(data, dict) and isinstance(data.get("results"), dict):
            if not isinstance(data.get("config"), dict) or not isinstance(data.get("name"), str):
                report.errors.append(f"{show(path)}: a log without 'name' and 'config'")
                continue
            found.logs.setdefault(data["name"], []).append((path, data))
        else:
            report.not_made.append(f"{show(path)}: not an experiment log or circuit file")
    for runs in found.logs.values():
        runs.sort(key=lambda run: (str(run[1].get("timestamp", "")), run[0].name))
    return found


def log_kind(log: dict[str, Any]) -> str:
    """The log's kind: its results' ``kind``, else the config's section of a registered kind
    (``sae_training`` with an ``sae`` section; ``baseline`` with none)."""
    results, config = log["results"], log["config"]
    if results.get("kind"):
        return str(results["kind"])
    if "sae" in config:
        return "sae_training"
    return next((kind for kind in kinds() if config.get(kind)), "baseline")


# --- drawing -----------------------------------------------------------------------------


def _attempt(report: Report, where: str, what: str, make: Callable[[], list[str]]) -> None:
    """Run ``make``; record its files, or why it made none (Unavailable: a missing input;
    anything else: an error)."""
    try:
        report.made += [show(p) for p in make()]
    except Unavailable as error:
        report.not_made.append(f"{where}: {what}: {_one_line(error)}")
    except Exception as error:  # one broken log must not stop the others
        report.errors.append(f"{where}: {what}: {type(error).__name__}: {_one_line(error)}")


def draw_log(path: Path, log: dict[str, Any], options: Options, report: Report) -> None:
    """Every figure of one log's kind, each attempted on its own."""
    where, name, results = show(path), log["name"], log["results"]
    kind = get_kind(log_kind(log))
    if not kind.figures:
        report.not_made.append(f"{where}: {kind.name} results are numbers only, no figure")
    draw = {"label": kind.label, "max_heads": options.max_heads, "log_path": path}
    for figure in kind.figures:
        maker = FIGURES[figure]
        _attempt(
            report,
            where,
            WHAT.get(figure, f"{figure} figure"),
            lambda maker=maker: maker(name, results, options.figures_dir, **draw),
        )


def generate_all(results_dir: str | Path, options: Options) -> Report:
    """Redraw every figure of ``results_dir`` into ``options.figures_dir``; the report says
    what was made and what was not (and why)."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results directory {results_dir} does not exist")
    report = Report()
    found = find_results(results_dir, report)
    options.figures_dir.mkdir(parents=True, exist_ok=True)
    for name, runs in tqdm(sorted(found.logs.items()), desc="logs", disable=not options.progress):
        path, log = runs[-1]
        if len(runs) > 1:
            older = ", ".join(show(p) for p, _ in runs[:-1])
            report.not_made.append(f"{name}: older logs superseded by {show(path)}: {older}")
        try:
            draw_log(path, log, options, report)
        except (KeyError, TypeError, AttributeError, ValueError) as error:
            report.errors.append(f"{show(path)}: malformed log ({_one_line(error)})")
            continue
        circuit_file = log["results"].get("circuit_file")
        if isinstance(circuit_file, str):  # drawn with its log
            found.circuits.pop(resolve(circuit_file, path).resolve(), None)
    for path in sorted(found.circuits):  # circuit files no log refers to
        name = path.stem.removesuffix("_circuit")
        _attempt(
            report,
            show(path),
            WHAT["circuit"],
            lambda n=name, p=path: FIGURES["circuit"](
                n, {"circuit_file": str(p)}, options.figures_dir
            ),
        )
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path, default=Path("data/results"))
    parser.add_argument("--figures-dir", type=Path, default=Path("notebooks/figures"))
    parser.add_argument(
        "--max-heads", type=int, default=4, help="heads per attention figure (of those stored)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.max_heads <= 0:
        print("error: --max-heads must be > 0", file=sys.stderr)
        return 2
    if not args.results_dir.is_dir():
        print(f"error: --results-dir {args.results_dir} is not a directory", file=sys.stderr)
        return 2
    options = Options(figures_dir=args.figures_dir, max_heads=args.max_heads, progress=True)
    report = generate_all(args.results_dir, options)
    report.print()
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
