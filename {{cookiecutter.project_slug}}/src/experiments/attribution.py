"""Attribution experiments: attribution patching (a gradient estimate of activation
patching, checked against it) and direct logit attribution, each with confidence intervals
over prompts."""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path
from typing import Any

import torch

from src.analysis.attribution import (
    HEAD_COMPONENTS,
    attribution_patch,
    direct_logit_attribution,
    result_axes,
)
from src.data.dataset import ContrastDataset
from src.experiments.patching import activation_patch
from src.experiments.results import (
    baselines,
    batches,
    ci_dict,
    effect_summary,
    over_batches,
    per_prompt_metric,
    results_header,
    save_effect_figures,
    sweep_indices,
    token_labels,
)


def run_attribution_experiment(
    model: Any,
    dataset: ContrastDataset,
    config: Any,
    *,
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, Any]:
    """Attribution patching of each configured component (normalized, with CIs); with
    ``compare``, also activation patching and the Pearson correlation between the two; with
    ``dla``, direct logit attribution per head. Figures when ``output.figures``."""
    section = config.attribution
    device = next(model.parameters()).device
    clean, corrupted = baselines(model, dataset, section.metric, batch_size)
    results = results_header(clean, corrupted, section.metric)
    figures_dir = Path(config.output.figures_dir)
    labels = token_labels(model, dataset.clean_tokens)
    results["token_labels"] = labels  # generate_all redraws the heatmaps from the log
    steps = [b.to(device) for b in batches(dataset, batch_size)]
    for component in section.components:
        axes = result_axes(component, section.per_position)
        where = sweep_indices(section, component in HEAD_COMPONENTS)

        def run(patch: Any, b: ContrastDataset, component: str = component, where: dict = where):
            metric = per_prompt_metric(b, section.metric)
            return patch(
                model, b.clean_tokens, b.corrupted_tokens, metric, component,
                section.per_position, **where,
            )  # fmt: skip

        estimate = over_batches(
            partial(run, attribution_patch), steps, f"attribution {component}", progress
        )
        entry = {"attribution": effect_summary(estimate, axes, clean, corrupted)}
        if section.compare:
            actual = over_batches(
                partial(run, activation_patch), steps, f"patching {component}", progress
            )
            entry["activation_patching"] = effect_summary(actual, axes, clean, corrupted)
            entry["pearson_r"] = pearson(estimate.mean(-1), actual.mean(-1))
            results[f"{component}_pearson_r"] = entry["pearson_r"]
        results["components"][component] = entry
        if config.output.figures:
            stem = figures_dir / f"{config.experiment.name}_{component}"
            title = f"{config.experiment.name}: attribution patching, {component}"
            results["figures"] += save_effect_figures(
                entry["attribution"], str(stem), title=title, xticklabels=labels
            )
    if section.dla:
        results["dla"] = _dla(model, steps, config, figures_dir, results["figures"])
    return results


def _dla(
    model: Any, steps: list[ContrastDataset], config: Any, figures_dir: Path, figures: list[str]
) -> dict[str, Any]:
    """Direct logit attribution per head over all prompts, with CIs; a layer x head figure."""
    parts = [
        direct_logit_attribution(model, b.clean_tokens, b.answer_tokens, b.wrong_tokens)
        for b in steps
    ]
    per_prompt = torch.cat([p.per_prompt for p in parts], dim=-1)
    remainder = torch.cat([p.remainder_per_prompt for p in parts])
    out = {
        "labels": parts[0].labels,
        "terms": ci_dict(per_prompt),
        "remainder_mean": remainder.mean().item(),
        "logit_diff_mean": torch.cat([p.logit_diff_per_prompt for p in parts]).mean().item(),
    }
    if config.output.figures:
        from src.visualization.patching import plot_patching_heatmap

        stem = figures_dir / f"{config.experiment.name}_dla_heads"
        grid = dataclasses.replace(parts[0], values=per_prompt.mean(-1)).by_head()
        title = f"{config.experiment.name}: direct logit attribution per head"
        path = plot_patching_heatmap(
            grid.numpy(), f"{stem}.png", title=title, value_label="logit diff (direct)"
        )
        figures.append(str(path))
    return out


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two results over the entries both computed (not NaN)."""
    a, b = a.flatten().double(), b.flatten().double()
    both = ~(a.isnan() | b.isnan())
    a, b = a[both] - a[both].mean(), b[both] - b[both].mean()
    denominator = (a.norm() * b.norm()).item()
    return float((a @ b).item() / denominator) if denominator > 0 else float("nan")
