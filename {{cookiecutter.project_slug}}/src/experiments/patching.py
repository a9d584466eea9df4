"""Activation patching experiment: every configured component patched over the dataset.

The method is ``src.analysis.patching.activation_patch``; this runner reads the config's
``patching`` section and summarizes the effects over prompts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from src.experiments.registry import ExperimentKind
from src.models.hooks import result_axes
from src.utils.config import SweepConfig

if TYPE_CHECKING:
    from src.data.dataset import ContrastDataset


class PatchingConfig(SweepConfig):
    """The ``patching`` section: which activations to patch (clean into corrupted) and where."""


def run_patching_experiment(
    model: Any,
    dataset: ContrastDataset,
    config: Any,
    *,
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, Any]:
    """Activation patching of each configured component, over the dataset in batches of
    prompts: the normalized effect of every patch (0 = corrupted, 1 = clean) with a
    bootstrap CI over prompts, the top entries, and the attention patterns of the heads with
    the largest effects on the first prompt (for the attention figure)."""
    from src.analysis.attention import component_head_scores, strongest_attention
    from src.analysis.effects import effect_summary
    from src.analysis.patching import activation_patch
    from src.experiments.common import Sweep

    section = config.patching
    sweep = Sweep.start(model, dataset, section, batch_size, progress)
    results = sweep.results
    for component in section.components:
        per_prompt = sweep.per_prompt(activation_patch, component, "patching")
        axes = result_axes(component, section.per_position)
        summary = effect_summary(per_prompt, axes, sweep.clean, sweep.corrupted)
        results["components"][component] = summary
        if summary["top"]:
            results[f"{component}_top_effect"] = summary["top"][0]["mean"]
    scores = component_head_scores(results["components"], model.cfg.n_heads)
    results["attention"] = strongest_attention(model, dataset.clean_tokens[0], scores)
    return results


KIND = ExperimentKind(
    name="patching",
    label="activation patching",
    section=PatchingConfig,
    run=run_patching_experiment,
    figures=("effects", "attention"),
    headline="head_out_top_effect",
)
