"""Rebuild every figure from what is in ``data/results/``.

    python -m src.visualization.generate_all [--results-dir data/results]
        [--figures-dir notebooks/figures] [--device auto]

Reads every JSON log (``log_experiment``'s files, searched recursively) and redraws, for the
latest log of each experiment name, under the names the runners use:

- patching / attribution: the effect heatmaps (``{name}_{component}.png`` + ``.html``), the
  direct-logit-attribution heatmap (``{name}_dla_heads.png``), and the attention patterns of
  the heads with the largest effects on the first prompt (``{name}_attention.png`` + ``.html``);
- circuit discovery: the circuit graph from the log's circuit file (``{name}_circuit.png`` +
  ``.html``) and the attention patterns of its strongest heads;
- SAE training: feature density (``{name}_feature_density.png``), top-activating contexts
  (``{name}_top_contexts.md``) and decoder directions through the unembedding
  (``{name}_decoder_logits.md``), from the saved SAE, its activation cache and the model;
- baseline: nothing to draw (scalar results), listed as such.

It prints what it made, then what it could not make and why, one line each. Exit status:
0 when everything that could be drawn was drawn, including when inputs are legitimately
missing (model weights not available offline, an activation cache or SAE folder deleted,
older logs superseded by newer ones); 1 when something is broken and needs fixing: a log
or circuit file that cannot be read or parsed, results that do not have the expected
structure, a cache that does not match its SAE, a figure function that fails; 2 for bad
arguments (no such results directory).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ANALYSIS_KINDS = ("patching", "attribution", "circuit_discovery")


class Unavailable(Exception):
    """An input is legitimately missing (not an error): the figure is listed as not made."""


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
    device: str = "auto"
    max_heads: int = 4
    n_features: int = 20
    top_k: int = 10
    max_tokens: int = 2**20
    progress: bool = False


def _show(path: Path | str) -> str:
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def resolve(path: str, log_path: Path) -> Path:
    """A path stored in a log: absolute; relative to the working directory or the project
    root (runs store paths relative to where they ran); or, for a results folder that was
    moved, the same name beside the log."""
    candidates = [Path(path), PROJECT_ROOT / path, log_path.parent / Path(path).name]
    return next((p for p in candidates if p.exists()), candidates[0])


# --- finding logs ------------------------------------------------------------------------


@dataclass
class Found:
    logs: dict[str, list[tuple[Path, dict[str, Any]]]]  # name -> [(path, log)], newest last
    circuits: dict[Path, dict[str, Any]]  # circuit files (not logs)


def find_results(results_dir: Path, report: Report) -> Found:
    """Every JSON under ``results_dir``: logs grouped by experiment name (oldest first) and
    circuit files; saved SAEs' ``cfg.json`` are skipped; anything else is reported."""
    found = Found({}, {})
    for path in sorted(results_dir.rglob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            report.errors.append(f"{_show(path)}: unreadable ({_one_line(error)})")
            continue
        if path.name == "cfg.json" and isinstance(data, dict) and "d_sae" in data:
            continue  # a saved SAE's config, read with its log
        if isinstance(data, dict) and "nodes" in data and "edges" in data:
            found.circuits[path.resolve()] = data
        elif isinstance(data, dict) and isinstance(data.get("results"), dict):
            if not isinstance(data.get("config"), dict) or not isinstance(data.get("name"), str):
                report.errors.append(f"{_show(path)}: a log without 'name' and 'config'")
                continue
            found.logs.setdefault(data["name"], []).append((path, data))
        else:
            report.not_made.append(f"{_show(path)}: not an experiment log or circuit file")
    for runs in found.logs.values():
        runs.sort(key=lambda run: (str(run[1].get("timestamp", "")), run[0].name))
    return found


def log_kind(log: dict[str, Any]) -> str:
    """``sae_training``, one of ``ANALYSIS_KINDS``, or ``baseline``."""
    results, config = log["results"], log["config"]
    if results.get("kind") == "sae_training" or "sae" in config:
        return "sae_training"
    return next((kind for kind in ANALYSIS_KINDS if config.get(kind)), "baseline")


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) < 300 else text[:297] + "..."


# --- models and prompts (loaded once per model) ------------------------------------------


class Models:
    def __init__(self, device: str) -> None:
        self.device = device
        self._models: dict[tuple[str, str], Any] = {}

    def get(self, config: dict[str, Any]) -> Any:
        """The log's model (``config.model``) on the chosen device; Unavailable if its
        weights cannot be had offline."""
        from src.models.load import ModelNotAvailableError, load_model

        name, dtype = config["model"]["name"], config["model"].get("dtype", "float32")
        key = (name, dtype)
        if key not in self._models:
            try:
                self._models[key] = load_model(name, device=self.device, dtype=dtype)
            except ModelNotAvailableError as error:
                self._models[key] = Unavailable(f"model {name!r} not available ({error})")
        model = self._models[key]
        if isinstance(model, Unavailable):
            raise model
        return model


def first_prompt(model: Any, config: dict[str, Any]) -> Any:
    """The first clean prompt of the log's dataset, rebuilt from its config (seeded)."""
    from src.data.loading import load_dataset

    data = config["data"]
    dataset = load_dataset(
        data["dataset"],
        data["n_samples"],
        data.get("seq_length"),
        data.get("seed", 0),
        model=model,
        path=data.get("path"),
        corruption=data.get("corruption"),
    )
    tokens = getattr(dataset, "clean_tokens", None)
    return (tokens if tokens is not None else dataset.tokens)[0]


# --- experiment logs ---------------------------------------------------------------------


def _grid(summary: dict[str, Any]) -> tuple[tuple[str, ...], np.ndarray]:
    from src.analysis.effects import nan_to_num

    axes = tuple(summary["axes"])
    mean = np.array(nan_to_num(summary["normalized"]["mean"]), dtype=float)
    if mean.ndim != len(axes):
        raise ValueError(f"normalized.mean has {mean.ndim} axes but 'axes' names {len(axes)}")
    return axes, mean


def head_effects(summary: dict[str, Any]) -> dict[tuple[int, int], float]:
    """|effect| per head of an ``effect_summary`` with a head axis (max over positions)."""
    axes, mean = _grid(summary)
    if "head" not in axes:
        return {}
    grid = np.moveaxis(np.abs(mean), [axes.index("layer"), axes.index("head")], [0, 1])
    grid = grid.reshape(grid.shape[0], grid.shape[1], -1)
    out = {}
    for layer, head in zip(*np.nonzero(np.isfinite(grid).any(-1)), strict=True):
        out[(int(layer), int(head))] = float(np.nanmax(grid[layer, head]))
    return out


def dla_grid(dla: dict[str, Any]) -> np.ndarray:
    """The per-head direct logit attribution means as ``[n_layers, n_heads]``."""
    from src.analysis.dla import heads_grid
    from src.analysis.effects import nan_to_num

    return heads_grid(dla["labels"], nan_to_num(dla["terms"]["mean"])).numpy()


def _strongest(scores: dict[tuple[int, int], float], n: int) -> list[tuple[int, int]]:
    return [head for head, _ in sorted(scores.items(), key=lambda item: -item[1])[:n]]


def effect_figures(
    name: str, kind: str, results: dict[str, Any], labels: list[str] | None, options: Options
) -> tuple[list[str], dict[tuple[int, int], float]]:
    """The effect heatmaps of a patching or attribution log; the per-head |effect| too."""
    from src.visualization.patching import save_dla_figure, save_effect_figures

    made: list[str] = []
    scores: dict[tuple[int, int], float] = {}
    method = "activation patching" if kind == "patching" else "attribution patching"
    for component, entry in results.get("components", {}).items():
        summary = entry if kind == "patching" else entry["attribution"]
        stem = options.figures_dir / f"{name}_{component}"
        axes = tuple(summary["axes"])
        ticks = labels if "pos" in axes else None
        title = f"{name}: {method}, {component}"
        made += save_effect_figures(summary, str(stem), title=title, xticklabels=ticks)
        for head, value in head_effects(summary).items():
            scores[head] = max(scores.get(head, 0.0), value)
    if "dla" in results:
        path = options.figures_dir / f"{name}_dla_heads.png"
        title = f"{name}: direct logit attribution per head"
        made.append(str(save_dla_figure(results["dla"], path, title=title)))
    return made, scores


def circuit_figures(name: str, circuit: dict[str, Any], options: Options) -> list[str]:
    from src.visualization.circuit import save_circuit_figures

    return save_circuit_figures(circuit, options.figures_dir / f"{name}_circuit", name=name)


def circuit_heads(circuit: dict[str, Any]) -> dict[tuple[int, int], float]:
    """|score| of the circuit's heads."""
    return {
        (int(node["layer"]), int(node["head"])): abs(node.get("score") or 0.0)
        for node in circuit["nodes"]
        if "head" in node and node.get("in_circuit")
    }


def attention_figures(
    name: str, log: dict[str, Any], heads: list[tuple[int, int]], models: Models, options: Options
) -> list[str]:
    from src.analysis.attention import head_patterns
    from src.visualization.attention import save_attention_figures

    model = models.get(log["config"])
    view = head_patterns(model, first_prompt(model, log["config"]), heads)
    title = f"{name}: attention of the strongest heads (first prompt)"
    paths = save_attention_figures(
        view.patterns, options.figures_dir / f"{name}_attention", view.labels,
        head_names=view.head_names, title=title,
    )  # fmt: skip
    return [str(p) for p in paths]


def experiment_figures(
    path: Path, log: dict[str, Any], kind: str, circuits: dict[Path, Any], models: Models,
    options: Options, report: Report,
) -> None:  # fmt: skip
    """The figures of one patching, attribution or circuit-discovery log."""
    name, results = log["name"], log["results"]
    where = _show(path)
    heads: dict[tuple[int, int], float] = {}
    if kind == "circuit_discovery":
        if "circuit_file" not in results:
            report.errors.append(f"{where}: circuit figure: the log has no 'circuit_file'")
            return
        circuit_path = resolve(results["circuit_file"], path)
        circuit = circuits.pop(circuit_path.resolve(), None)
        if circuit is None and not circuit_path.exists():
            report.not_made.append(f"{where}: circuit figure: {_show(circuit_path)} not found")
        else:
            if circuit is None:
                circuit = json.loads(circuit_path.read_text(encoding="utf-8"))
            _attempt(
                report, where, "circuit figure", lambda: circuit_figures(name, circuit, options)
            )
            heads = circuit_heads(circuit)
    else:
        labels = results.get("token_labels")
        if labels is None and _has_positions(results):
            labels = _try_labels(log, models)

        def draw() -> list[str]:
            made, scores = effect_figures(name, kind, results, labels, options)
            heads.update(scores)
            return made

        _attempt(report, where, "effect figures", draw)
    if not heads:
        report.not_made.append(f"{where}: attention figure: no per-head results to pick heads from")
        return
    chosen = _strongest(heads, options.max_heads)
    _attempt(
        report,
        where,
        "attention figure",
        lambda: attention_figures(name, log, chosen, models, options),
    )


def _has_positions(results: dict[str, Any]) -> bool:
    for entry in results.get("components", {}).values():
        summary = entry.get("attribution", entry)
        if "pos" in summary.get("axes", ()):
            return True
    return False


def _try_labels(log: dict[str, Any], models: Models) -> list[str] | None:
    """Position labels (``i:token``) from the model and dataset, if the model has a
    tokenizer and can be loaded (older logs do not store them)."""
    from src.analysis.tokens import token_labels

    try:
        model = models.get(log["config"])
        return token_labels(model, first_prompt(model, log["config"])[None])
    except (Unavailable, ValueError, OSError):  # labels are a nicety: draw without them
        return None


# --- SAE runs ----------------------------------------------------------------------------


def sae_figures(
    path: Path, log: dict[str, Any], models: Models, options: Options, report: Report
) -> None:
    """Feature density, top-activating contexts and decoder projections of an SAE run."""
    from src.analysis import features as A
    from src.analysis.norms import final_norm_linear
    from src.analysis.tokens import token_decoder
    from src.visualization import features as F

    name, results, where = log["name"], log["results"], _show(path)
    missing = [key for key in ("sae_path", "cache_dir", "hook_name") if key not in results]
    if missing:
        report.errors.append(f"{where}: SAE figures: the log's results lack {missing}")
        return
    hook_name, figures = results["hook_name"], options.figures_dir
    sae_dir = resolve(results["sae_path"], path)
    weights = sae_dir / "sae_weights.safetensors"
    if not weights.exists():  # *.safetensors are not committed: missing after a clone
        report.not_made.append(f"{where}: SAE figures: SAE weights {_show(weights)} not found")
        return
    from sae_lens import SAE

    from src.models.load import resolve_device

    sae = SAE.load_from_disk(sae_dir, device=str(resolve_device(options.device)))
    model: Any = None
    try:
        model = models.get(log["config"])
    except Unavailable as error:
        report.not_made.append(f"{where}: decoder logits: {_one_line(error)}")
    decode = token_decoder(model) if model is not None else None
    joiner = "" if getattr(model, "tokenizer", None) is not None else " "

    stats: A.FeatureStats | None = None
    cache_dir = resolve(results["cache_dir"], path)
    if not cache_dir.exists():
        why = f"activation cache {_show(cache_dir)} not found (scripts/cache_activations.py)"
        report.not_made.append(f"{where}: feature density and top contexts: {why}")
    else:

        def density() -> list[str]:
            nonlocal stats
            from src.data.activation_cache import open_cache

            store = open_cache(cache_dir, expect={"hook_names": [hook_name]})
            stats = A.store_feature_stats(
                sae, store, hook_name, k=options.top_k, max_tokens=options.max_tokens,
                progress=options.progress,
            )  # fmt: skip
            title = f"{name}: feature density over {stats.n_tokens:,} tokens"
            png = figures / f"{name}_feature_density.png"
            return [str(F.plot_feature_density(stats.density, png, title=title))]

        _attempt(report, where, "feature density", density)
    if stats is not None:
        features = A.choose_features(stats.density, options.n_features)
    else:
        features = list(range(min(options.n_features, int(sae.cfg.d_sae))))

    promoted = None
    if model is not None:

        def decoder() -> list[str]:
            nonlocal promoted
            logits = A.decoder_logits(sae.W_dec, model.W_U, features, final_norm_linear(model))
            promoted = A.decoder_top_tokens(logits, features, k=10, decode=decode)
            title = f"{name}: tokens promoted by decoder directions (W_dec @ W_U)"
            md = figures / f"{name}_decoder_logits.md"
            return [str(F.save_decoder_markdown(promoted, md, title=title))]

        _attempt(report, where, "decoder logits", decoder)

    if stats is not None:
        found_stats = stats

        def contexts() -> list[str]:
            found = A.top_contexts(found_stats, features, decode=decode)
            title = f"{name}: top-activating contexts ({hook_name})"
            md = figures / f"{name}_top_contexts.md"
            return [
                str(
                    F.save_contexts_markdown(
                        found, md, title=title, joiner=joiner, promoted=promoted
                    )
                )
            ]

        _attempt(report, where, "top contexts", contexts)


# --- driver ------------------------------------------------------------------------------


def _attempt(report: Report, where: str, what: str, make: Callable[[], list[str]]) -> None:
    """Run ``make``; record its files, or why it made none (Unavailable: a missing input;
    anything else: an error)."""
    try:
        report.made += [_show(p) for p in make()]
    except Unavailable as error:
        report.not_made.append(f"{where}: {what}: {_one_line(error)}")
    except Exception as error:  # one broken log must not stop the others
        report.errors.append(f"{where}: {what}: {type(error).__name__}: {_one_line(error)}")


def generate_all(results_dir: str | Path, options: Options) -> Report:
    """Redraw every figure of ``results_dir`` into ``options.figures_dir``; the report says
    what was made and what was not (and why)."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results directory {results_dir} does not exist")
    report = Report()
    found = find_results(results_dir, report)
    models = Models(options.device)
    options.figures_dir.mkdir(parents=True, exist_ok=True)
    for name, runs in tqdm(sorted(found.logs.items()), desc="logs", disable=not options.progress):
        path, log = runs[-1]
        if len(runs) > 1:
            older = ", ".join(_show(p) for p, _ in runs[:-1])
            report.not_made.append(f"{name}: older logs superseded by {_show(path)}: {older}")
        try:
            kind = log_kind(log)
        except (KeyError, TypeError, AttributeError) as error:
            report.errors.append(f"{_show(path)}: malformed log ({_one_line(error)})")
            continue
        if kind == "baseline":
            report.not_made.append(f"{_show(path)}: baseline results are numbers only, no figure")
        elif kind == "sae_training":
            try:
                sae_figures(path, log, models, options, report)
            except Exception as error:
                report.errors.append(
                    f"{_show(path)}: SAE figures: {type(error).__name__}: {_one_line(error)}"
                )
        else:
            try:
                experiment_figures(path, log, kind, found.circuits, models, options, report)
            except Exception as error:
                report.errors.append(
                    f"{_show(path)}: {kind} figures: {type(error).__name__}: {_one_line(error)}"
                )
    for path, circuit in sorted(found.circuits.items()):  # circuit files no log refers to
        _attempt(
            report,
            _show(path),
            "circuit figure",
            lambda c=circuit, p=path: circuit_figures(p.stem.removesuffix("_circuit"), c, options),
        )
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path, default=Path("data/results"))
    parser.add_argument("--figures-dir", type=Path, default=Path("notebooks/figures"))
    parser.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default)")
    parser.add_argument("--max-heads", type=int, default=4, help="heads per attention figure")
    parser.add_argument("--n-features", type=int, default=20, help="SAE latents to describe")
    parser.add_argument("--top-k", type=int, default=10, help="contexts per SAE latent")
    parser.add_argument(
        "--max-tokens", type=int, default=2**20, help="cached tokens to encode per SAE"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for key in ("max_heads", "n_features", "top_k", "max_tokens"):
        if getattr(args, key) <= 0:
            print(f"error: --{key.replace('_', '-')} must be > 0", file=sys.stderr)
            return 2
    if not args.results_dir.is_dir():
        print(f"error: --results-dir {args.results_dir} is not a directory", file=sys.stderr)
        return 2
    try:
        from src.models.load import resolve_device

        resolve_device(args.device)
    except ValueError as error:
        print(f"error: --device: {error}", file=sys.stderr)
        return 2
    options = Options(
        figures_dir=args.figures_dir, device=args.device, max_heads=args.max_heads,
        n_features=args.n_features, top_k=args.top_k, max_tokens=args.max_tokens, progress=True,
    )  # fmt: skip
    report = generate_all(args.results_dir, options)
    report.print()
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
