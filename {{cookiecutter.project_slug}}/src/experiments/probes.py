"""Linear probes per layer on cached activations, with a control task.

The method is ``src.analysis.probes.probe_layers``; this runner caches the configured hook
points over the dataset's (clean) prompts with ``src.data.activation_cache`` (in
``output.results_dir``/activations, reused when rerun), reads them back, makes the labels
of ``probes.task`` and probes every layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, NonNegativeInt, PositiveInt, StrictFloat

from src.experiments.registry import ExperimentKind
from src.utils.config import HookPoint, Indices, Section

if TYPE_CHECKING:
    from src.data.dataset import ContrastDataset, TokenDataset


class ProbesConfig(Section):
    """The ``probes`` section: which label, at which hook point of which layers."""

    task: Literal["previous_token", "repeat"] = "previous_token"
    hook_point: HookPoint = "resid_pre"
    layers: Indices = "all"  # "all" with resid_pre: every layer's input and the final stream
    train_fraction: StrictFloat = Field(0.8, gt=0, lt=1)
    steps: PositiveInt = 300
    lr: StrictFloat = Field(0.05, gt=0)
    weight_decay: StrictFloat = Field(1e-4, ge=0)
    # split and control-task seeds: the first one's results in full; with several, each
    # number's mean and Student-t CI across them too ("across_seeds")
    seeds: tuple[NonNegativeInt, ...] = Field((0,), min_length=1)


def run_probes_experiment(
    model: Any,
    dataset: ContrastDataset | TokenDataset,
    config: Any,
    *,
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, Any]:
    """Cache the section's hook points over the prompts, probe each for the task's labels
    and its control task; accuracy per layer with bootstrap CIs over held-out prompts."""
    from src.analysis.probes import LABELS, layer_hooks, probe_layers
    from src.data.activation_cache import cache_activations, open_cache

    section = config.probes
    tokens = getattr(dataset, "clean_tokens", None)
    tokens = dataset.tokens if tokens is None else tokens
    layers = None if section.layers == "all" else list(section.layers)
    for layer in layers or ():
        if layer >= model.cfg.n_layers:
            raise ValueError(
                f"probes.layers: layer {layer} is out of range (0..{model.cfg.n_layers - 1})"
            )
    hooks = layer_hooks(model.cfg.n_layers, section.hook_point, layers)
    where = "all" if layers is None else "-".join(map(str, layers))
    out_dir = Path(config.output.results_dir) / f"activations_{section.hook_point}_{where}"
    meta = {"model": config.model.name, "dataset": config.data.dataset, "seed": config.data.seed}
    cache_activations(
        model, tokens, hooks, out_dir, batch_size=batch_size, progress=progress,
        metadata=meta | {"command": "run_experiment.py (probes)"},
    )  # fmt: skip
    store = open_cache(out_dir)
    cached = store.tokens()
    activations = {hook: store.load(hook) for hook in hooks}
    labels = LABELS[section.task](cached)
    runs = [
        probe_layers(
            activations,
            cached,
            labels,
            train_fraction=section.train_fraction,
            steps=section.steps,
            lr=section.lr,
            weight_decay=section.weight_decay,
            seed=seed,
        )  # fmt: skip
        for seed in section.seeds
    ]
    results = runs[0]
    if len(runs) > 1:
        results["across_seeds"] = _across_seeds(runs, hooks, list(section.seeds))
    selectivity = [results["per_hook"][h]["selectivity"]["mean"] for h in hooks]
    accuracy = [results["per_hook"][h]["accuracy"]["mean"] for h in hooks]
    return {
        "task": section.task,
        "activations_dir": str(out_dir),
        **results,
        "max_accuracy": max(accuracy),
        "max_selectivity": max(selectivity),
        "figures": [],
    }


def _across_seeds(runs: list[dict[str, Any]], hooks: list[str], seeds: list[int]) -> dict[str, Any]:
    """Each hook's accuracy, control accuracy and selectivity: mean and Student-t CI over
    the seeds' means (``src.analysis.statistics.seed_summary``)."""
    from src.analysis.statistics import seed_summary

    out: dict[str, Any] = {"seeds": seeds}
    for hook in hooks:
        out[hook] = {
            task: seed_summary([run["per_hook"][hook][task]["mean"] for run in runs]).to_dict()
            for task in ("accuracy", "control_accuracy", "selectivity")
        }
    return out


KIND = ExperimentKind(
    name="probes",
    label="linear probes",
    section=ProbesConfig,
    run=run_probes_experiment,
    figures=("probes",),
    headline="max_accuracy",
)
