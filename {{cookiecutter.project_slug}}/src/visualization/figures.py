"""Figure makers by name: each draws one kind of figure from an experiment's results.

A maker is ``maker(name, results, figures_dir, **options) -> list[str]`` (the paths it
wrote, named after the experiment ``name``); it reads only the results and the files they
name (a circuit file, an SAE's feature report), never a model. It raises ``Unavailable``
when an input is legitimately missing (an older log, a file not there), anything else when
something is broken. The registry of experiment kinds names each kind's makers
(``get_kind(kind).figures``); ``draw_figures`` draws them after a run, and
``generate_all`` for every log.

Options: ``label`` (the method in the effect heatmaps' titles, the kind's label),
``max_heads`` (heads in the attention figure, at most the stored ones) and ``log_path``
(where the log is, to find files that moved with it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from src.utils.files import PROJECT_ROOT

Maker = Callable[..., list[str]]


class Unavailable(Exception):
    """An input is legitimately missing (not an error): the figure is listed as not made."""


def show(path: Path | str) -> str:
    """``path`` relative to the working directory when inside it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def resolve(path: str, log_path: Path | None = None) -> Path:
    """A path stored in a log: absolute; relative to the working directory or the project
    root (runs store paths relative to where they ran); or, for a results folder that was
    moved, the same name beside the log."""
    candidates = [Path(path), PROJECT_ROOT / path]
    if log_path is not None:
        candidates.append(Path(log_path).parent / Path(path).name)
    return next((p for p in candidates if p.exists()), candidates[0])


def _logged_json(
    results: dict[str, Any],
    key: str,
    log_path: Path | None,
    missing: Exception,
    what: str = "",
) -> Any:
    """The JSON file whose path the log stores at ``key`` (resolved as ``resolve`` does).
    Raises ``missing`` when the log has no ``key``, Unavailable when the file is gone."""
    if key not in results:
        raise missing
    path = resolve(results[key], log_path)
    if not path.exists():
        raise Unavailable(f"{what}{show(path)} not found")
    return json.loads(path.read_text(encoding="utf-8"))


def effects(
    name: str, results: dict[str, Any], figures_dir: Path, *, label: str, **_: Any
) -> list[str]:
    """The effect heatmaps ``{name}_{component}`` .png and .html of a patching-style sweep,
    titled with the method ``label``; position axes labelled with the stored tokens."""
    from src.visualization.patching import save_effect_figures

    made: list[str] = []
    labels = results.get("token_labels")
    for component, entry in results.get("components", {}).items():
        summary = entry.get("attribution", entry)
        if not summary["axes"]:  # one value (indices ablated together): no heatmap
            continue
        ticks = labels if "pos" in summary["axes"] else None
        stem = Path(figures_dir) / f"{name}_{component}"
        title = f"{name}: {label}, {component}"
        made += save_effect_figures(summary, str(stem), title=title, xticklabels=ticks)
    return made


def dla(name: str, results: dict[str, Any], figures_dir: Path, **_: Any) -> list[str]:
    """The per-head direct logit attribution heatmap ``{name}_dla_heads.png`` (none when the
    run computed no DLA)."""
    from src.visualization.patching import save_dla_figure

    if "dla" not in results:
        return []
    path = Path(figures_dir) / f"{name}_dla_heads.png"
    title = f"{name}: direct logit attribution per head"
    return [str(save_dla_figure(results["dla"], path, title=title))]


def circuit(
    name: str, results: dict[str, Any], figures_dir: Path, *, log_path: Path | None = None,
    **_: Any,
) -> list[str]:  # fmt: skip
    """The circuit graph ``{name}_circuit`` .png and .html from the log's circuit file."""
    from src.visualization.circuit import save_circuit_figures

    missing = ValueError("the log has no 'circuit_file'")
    graph = _logged_json(results, "circuit_file", log_path, missing)
    return save_circuit_figures(graph, Path(figures_dir) / f"{name}_circuit", name=name)


def attention(
    name: str, results: dict[str, Any], figures_dir: Path, *, max_heads: int = 4, **_: Any
) -> list[str]:
    """The attention patterns ``{name}_attention`` .png and .html of the strongest heads on
    the first prompt, as the runner stored them (``results["attention"]``)."""
    from src.visualization.attention import save_attention_figures

    if "attention" not in results:
        raise Unavailable("rerun the experiment to store the attention patterns of its heads")
    stored = results["attention"]
    if not stored:
        raise Unavailable("no per-head results to pick heads from")
    n = min(max_heads, len(stored["heads"]))
    patterns = torch.tensor(stored["patterns"][:n], dtype=torch.float32)
    title = f"{name}: attention of the strongest heads (first prompt)"
    paths = save_attention_figures(
        patterns, Path(figures_dir) / f"{name}_attention", stored["tokens"],
        head_names=stored["heads"][:n], title=title,
    )  # fmt: skip
    return [str(p) for p in paths]


def sae_features(
    name: str, results: dict[str, Any], figures_dir: Path, *, log_path: Path | None = None,
    **_: Any,
) -> list[str]:  # fmt: skip
    """Feature density (``{name}_feature_density.png``), decoder directions through the
    unembedding (``{name}_decoder_logits.md``) and top-activating contexts
    (``{name}_top_contexts.md``) from the feature report the SAE run saved; each latent
    links to its Neuronpedia page where the report has one."""
    from src.visualization import features as F

    missing = Unavailable("rerun the SAE training to store its feature report (features.json)")
    report = _logged_json(results, "features_file", log_path, missing, "feature report ")
    figures_dir = Path(figures_dir)
    title = f"{name}: feature density over {report['n_tokens']:,} tokens"
    density = torch.tensor(report["density"], dtype=torch.float64)
    png = figures_dir / f"{name}_feature_density.png"
    made = [str(F.plot_feature_density(density, png, title=title))]
    promoted = {int(f): entry for f, entry in report["decoder"].items()}
    links = {int(f): url for f, url in report.get("links", {}).items()}  # none in older reports
    title = f"{name}: tokens promoted by decoder directions (W_dec @ W_U)"
    md = figures_dir / f"{name}_decoder_logits.md"
    made.append(str(F.save_decoder_markdown(promoted, md, title=title, links=links)))
    title = f"{name}: top-activating contexts ({report['hook_name']})"
    md = figures_dir / f"{name}_top_contexts.md"
    made.append(
        str(F.save_contexts_markdown(
            report["contexts"], md, title=title, joiner=report["joiner"], promoted=promoted,
            links=links,
        ))
    )  # fmt: skip
    return made


def paths(name: str, results: dict[str, Any], figures_dir: Path, **_: Any) -> list[str]:
    """The path patching heatmaps ``{name}_paths.png`` (sender x receiver, per input)."""
    from src.visualization.lens_paths import save_path_patching_figure

    if "paths" not in results:
        raise Unavailable("the log has no path patching results")
    path = Path(figures_dir) / f"{name}_paths.png"
    title = f"{name}: path patching (sender -> receiver input)"
    return [str(save_path_patching_figure(results["paths"], path, title=title))]


def logit_lens(name: str, results: dict[str, Any], figures_dir: Path, **_: Any) -> list[str]:
    """The answer probability and KL per layer ``{name}_logit_lens.png`` (and tuned lens)."""
    from src.visualization.lens_paths import save_logit_lens_figure

    if "lens" not in results:
        raise Unavailable("the log has no logit lens results")
    path = Path(figures_dir) / f"{name}_logit_lens.png"
    title = f"{name}: logit lens at the final position"
    return [str(save_logit_lens_figure(results, path, title=title))]


def probes(name: str, results: dict[str, Any], figures_dir: Path, **_: Any) -> list[str]:
    """Probe accuracy per layer against the control task, ``{name}_probes.png``."""
    from src.visualization.probes import save_probe_figure

    title = f"{name}: linear probes for {results['task']}"
    return [str(save_probe_figure(results, Path(figures_dir) / f"{name}_probes.png", title=title))]


def steering(name: str, results: dict[str, Any], figures_dir: Path, **_: Any) -> list[str]:
    """The metric per steering coefficient ``{name}_steering.png`` and the steered
    continuations ``{name}_steering_text.md``."""
    from src.visualization.steering import save_steering_figures

    title = f"{name}: steering at {results['hook_name']} ({results['source']})"
    stem = Path(figures_dir) / f"{name}_steering"
    return [str(p) for p in save_steering_figures(results, stem, title=title)]


def sae_dashboard(
    name: str, results: dict[str, Any], figures_dir: Path, *, log_path: Path | None = None,
    **_: Any,
) -> list[str]:  # fmt: skip
    """The SAE's feature dashboard ``{name}_dashboard.html`` (self-contained: no scripts or
    CDN) from the feature report the run saved."""
    from src.visualization.dashboards import save_dashboard

    missing = Unavailable("rerun the SAE run to store its feature report (features.json)")
    report = _logged_json(results, "features_file", log_path, missing, "feature report ")
    path = Path(figures_dir) / f"{name}_dashboard.html"
    return [
        str(save_dashboard(report, path, title=f"{name}: SAE features ({report['hook_name']})"))
    ]


FIGURES: dict[str, Maker] = {
    "effects": effects,
    "dla": dla,
    "circuit": circuit,
    "attention": attention,
    "sae_features": sae_features,
    "paths": paths,
    "logit_lens": logit_lens,
    "probes": probes,
    "steering": steering,
    "sae_dashboard": sae_dashboard,
}


def draw_figures(
    names: tuple[str, ...] | list[str], name: str, results: dict[str, Any], figures_dir: str | Path,
    **options: Any,
) -> list[str]:  # fmt: skip
    """Draw the figures ``names`` (keys of ``FIGURES``) of experiment ``name``'s results into
    ``figures_dir``; return the paths written. A figure whose inputs are missing
    (``Unavailable``) is skipped; any other failure raises."""
    made: list[str] = []
    for figure in names:
        try:
            made += FIGURES[figure](name, results, Path(figures_dir), **options)
        except Unavailable:
            continue
    return made
