"""Ablation experiment: zero, mean or resample ablation of each configured component on the
clean prompts, with bootstrap CIs over prompts (and, for resample ablation, a CI over the
resamples). The method is ``src.analysis.ablation.ablate``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import StrictBool, model_validator

from src.experiments.registry import ExperimentKind
from src.utils.config import NonNegativeInt, PositiveInt, SweepConfig
from src.utils.validation import check

# = src.analysis.ablation.ABLATABLE (a test checks; not imported: configs load without torch)
ABLATABLE = ("resid_pre", "attn_out", "mlp_out", "head_out", "q", "k", "v")

if TYPE_CHECKING:
    from src.data.dataset import ContrastDataset


class AblationConfig(SweepConfig):
    """The ``ablation`` section: which activations to ablate on the clean prompts, and how.
    ``reference``: the prompts whose mean (mean ablation) or activations (resample ablation)
    replace the ablated ones."""

    ablation: Literal["zero", "mean", "resample"] = "mean"
    reference: Literal["clean", "corrupted"] = "clean"
    n_resamples: PositiveInt = 5
    seed: NonNegativeInt = 0
    together: StrictBool = False  # every selected index of a component ablated at once

    @model_validator(mode="after")
    def _ablatable(self) -> AblationConfig:
        for i, name in enumerate(self.components):
            check(name in ABLATABLE, f"components[{i}]", f"{name!r} cannot be ablated; "
                  f"allowed: {', '.join(ABLATABLE)}")  # fmt: skip
        return self


def run_ablation_experiment(
    model: Any,
    dataset: ContrastDataset,
    config: Any,
    *,
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, Any]:
    """Each configured component ablated index by index on the clean prompts: the effect
    with a bootstrap CI over prompts, as the fraction of the clean - corrupted gap that the
    ablation removes (0 = no change, 1 = as bad as the corrupted run), the raw metric, the
    strongest entries; for
    resample ablation also the mean over prompts of each resample and a Student-t CI over
    resamples (``resamples``)."""
    import torch

    from src.analysis.ablation import ablate
    from src.analysis.effects import effect_summary, per_prompt_metric
    from src.analysis.statistics import seed_summary
    from src.experiments.common import Sweep, sweep_indices
    from src.models.hooks import HEAD_COMPONENTS, result_axes

    section = config.ablation
    sweep = Sweep.start(model, dataset, section, batch_size, progress)
    results = sweep.results | {"ablation": section.ablation}
    device = next(model.parameters()).device
    reference = getattr(dataset, f"{section.reference}_tokens").to(device)
    for component in section.components:
        where = sweep_indices(section, component in HEAD_COMPONENTS)
        parts = []
        for i, batch in enumerate(sweep.steps):
            result = ablate(
                model, batch.clean_tokens, per_prompt_metric(batch, section.metric), component,
                section.per_position, ablation=section.ablation, reference=reference,
                n_resamples=section.n_resamples, seed=section.seed + i,
                together=section.together, **where,
            )  # fmt: skip
            parts.append(result.values)
        values = torch.cat(parts, dim=-1)  # [(n_resamples,) *layout, n_prompts]
        per_prompt = values.mean(0) if section.ablation == "resample" else values
        axes = () if section.together else result_axes(component, section.per_position)
        # the baselines swapped: 0 = the clean (unablated) run, 1 = the corrupted run
        summary = effect_summary(per_prompt, axes, sweep.corrupted, sweep.clean)
        if section.together:
            results[f"{component}_together_effect"] = summary["normalized"]["mean"]
        if section.ablation == "resample" and section.n_resamples > 1:
            by_resample = values.mean(-1)
            finite = ~by_resample.isnan().any(0)
            ci = seed_summary(by_resample[:, finite], axis=0)
            summary["resamples"] = {
                "n": section.n_resamples,
                "raw_mean": ci.to_dict()["estimate"],
                "low": ci.to_dict()["low"],
                "high": ci.to_dict()["high"],
                "entries": torch.nonzero(finite).tolist(),
            }
        results["components"][component] = summary
        if summary["top"]:
            results[f"{component}_top_effect"] = summary["top"][0]["mean"]
    return results


KIND = ExperimentKind(
    name="ablation",
    label="ablation",
    section=AblationConfig,
    run=run_ablation_experiment,
    figures=("effects",),
    headline="head_out_top_effect",
)
