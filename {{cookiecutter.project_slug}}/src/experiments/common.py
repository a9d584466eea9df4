"""Shared by the runners (not an experiment kind): a sweep's results header, the subsets a
config section patches, per-prompt results over batches."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from src.analysis.effects import baselines, ci_dict, per_prompt_metric, warn_if_small_gap
from src.analysis.tokens import token_labels
from src.data.dataset import ContrastDataset, batches
from src.models.hooks import HEAD_COMPONENTS

# A method with the signature of activation_patch / attribution_patch.
SweepMethod = Callable[..., Tensor]


def sweep_indices(section: Any, per_head: bool) -> dict[str, list[int] | None]:
    """The ``layers`` / ``heads`` / ``positions`` subsets of a patching-style config section
    ("all" -> None; heads only for a ``per_head`` component, positions only per position), as
    keyword arguments of ``activation_patch`` / ``attribution_patch``."""

    def chosen(value: Any, used: bool = True) -> list[int] | None:
        return None if value == "all" or not used else list(value)

    return {
        "layers": chosen(section.layers),
        "heads": chosen(section.heads, per_head),
        "positions": chosen(section.positions, section.per_position),
    }


def results_header(clean: Tensor, corrupted: Tensor, metric: str) -> dict[str, Any]:
    """The start of a sweep's results: sizes and both baselines with CIs, and a warning
    when the baselines are too close to normalize by (``warn_if_small_gap``)."""
    results = {
        "n_samples": len(clean),
        "metric": metric,
        "clean_metric": clean.mean().item(),
        "corrupted_metric": corrupted.mean().item(),
        "baselines": {"clean": ci_dict(clean), "corrupted": ci_dict(corrupted)},
        "components": {},
        "figures": [],
    }
    gap = warn_if_small_gap(results["clean_metric"], results["corrupted_metric"])
    if gap:
        results["warnings"] = gap
    return results


def over_batches(
    fn: Callable[[ContrastDataset], Tensor],
    steps: list[ContrastDataset],
    desc: str,
    progress: bool,
) -> Tensor:
    """``fn`` on each batch, per-prompt results joined along the last (prompt) axis."""
    parts = [fn(b).cpu() for b in tqdm(steps, desc=desc, disable=not progress)]
    return torch.cat(parts, dim=-1)


@dataclass
class Sweep:
    """A patching-style sweep over a dataset: its batches on the model's device, the
    per-prompt baselines (clean and corrupted metric) and the results being filled."""

    model: Any
    section: Any  # the config's patching or attribution section
    steps: list[ContrastDataset]
    clean: Tensor
    corrupted: Tensor
    results: dict[str, Any]
    progress: bool

    @classmethod
    def start(
        cls, model: Any, dataset: ContrastDataset, section: Any, batch_size: int, progress: bool
    ) -> Sweep:
        """Baselines, the results header and the token labels of the position axes."""
        device = next(model.parameters()).device
        clean, corrupted = baselines(model, dataset, section.metric, batch_size)
        results = results_header(clean, corrupted, section.metric)
        # the heatmaps' position labels, for the figures drawn from the log
        results["token_labels"] = token_labels(model, dataset.clean_tokens)
        steps = [b.to(device) for b in batches(dataset, batch_size)]
        return cls(model, section, steps, clean, corrupted, results, progress)

    def per_prompt(self, method: SweepMethod, component: str, desc: str) -> Tensor:
        """``method`` (activation_patch or attribution_patch) of ``component`` on every
        batch with the section's metric per prompt and subsets: [*layout, n_prompts]."""
        section = self.section
        where = sweep_indices(section, component in HEAD_COMPONENTS)

        def one(b: ContrastDataset) -> Tensor:
            metric = per_prompt_metric(b, section.metric)
            return method(
                self.model, b.clean_tokens, b.corrupted_tokens, metric, component,
                section.per_position, **where,
            )  # fmt: skip

        return over_batches(one, self.steps, f"{desc} {component}", self.progress)
