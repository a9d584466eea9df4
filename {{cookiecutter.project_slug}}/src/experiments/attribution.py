"""Attribution experiment: attribution patching (a gradient estimate of activation patching,
checked against it) and direct logit attribution, each with confidence intervals over
prompts. The methods are in ``src.analysis.attribution``, ``.patching`` and ``.dla``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import StrictBool

from src.experiments.registry import ExperimentKind
from src.models.hooks import result_axes
from src.utils.config import SweepConfig

if TYPE_CHECKING:
    from src.data.dataset import ContrastDataset


class AttributionConfig(SweepConfig):
    """The ``attribution`` section: attribution patching (gradient estimate of activation
    patching) and direct logit attribution; ``compare: true`` also runs activation patching
    and reports agreement."""

    compare: StrictBool = True
    dla: StrictBool = True


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
    ``dla``, direct logit attribution per head; the attention patterns of the heads with the
    largest estimated effects on the first prompt."""
    from src.analysis.attention import component_head_scores, strongest_attention
    from src.analysis.attribution import attribution_patch
    from src.analysis.effects import effect_summary, pearson
    from src.analysis.patching import activation_patch
    from src.experiments.common import Sweep

    section = config.attribution
    sweep = Sweep.start(model, dataset, section, batch_size, progress)
    results = sweep.results
    clean, corrupted = sweep.clean, sweep.corrupted
    for component in section.components:
        axes = result_axes(component, section.per_position)
        estimate = sweep.per_prompt(attribution_patch, component, "attribution")
        entry = {"attribution": effect_summary(estimate, axes, clean, corrupted)}
        if section.compare:
            actual = sweep.per_prompt(activation_patch, component, "patching")
            entry["activation_patching"] = effect_summary(actual, axes, clean, corrupted)
            entry["pearson_r"] = pearson(estimate.mean(-1), actual.mean(-1))
            results[f"{component}_pearson_r"] = entry["pearson_r"]
        results["components"][component] = entry
    if section.dla:
        results["dla"] = _dla(model, sweep.steps)
    scores = component_head_scores(results["components"], model.cfg.n_heads)
    results["attention"] = strongest_attention(model, dataset.clean_tokens[0], scores)
    return results


def _dla(model: Any, steps: list[ContrastDataset]) -> dict[str, Any]:
    """Direct logit attribution per head over all prompts, with CIs."""
    from src.analysis.dla import DLAResult, direct_logit_attribution
    from src.analysis.effects import ci_dict

    parts = [
        direct_logit_attribution(model, b.clean_tokens, b.answer_tokens, b.wrong_tokens)
        for b in steps
    ]
    dla = DLAResult.join(parts)
    return {
        "labels": dla.labels,
        "terms": ci_dict(dla.per_prompt),
        "remainder_mean": dla.remainder,
        "logit_diff_mean": dla.logit_diff,
    }


KIND = ExperimentKind(
    name="attribution",
    label="attribution patching",
    section=AttributionConfig,
    run=run_attribution_experiment,
    gradients=True,
    figures=("effects", "dla", "attention"),
    headline="head_out_pearson_r",
)
