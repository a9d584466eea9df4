"""Steering by activation addition: a direction added at one hook point over a sweep of
coefficients; the effect on the config's metric and on greedy continuations.

The methods are ``src.analysis.steering``. The direction is the difference of means
between the dataset's clean (positive) and corrupted (negative) prompts on the first
``train_fraction`` of them (``source: mean_diff``), or an SAE latent's decoder row
(``source: sae``, with ``sae`` and ``feature``); it is added to the other prompts'
corrupted versions, whose metric moves toward the clean one when the direction carries
what tells them apart. Each coefficient's metric has a bootstrap CI over prompts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, NonNegativeInt, PositiveInt, StrictFloat, StrictStr, model_validator

from src.experiments.registry import ExperimentKind
from src.utils.config import HookPoint, MetricName, Section

if TYPE_CHECKING:
    from src.data.dataset import ContrastDataset


class SteeringConfig(Section):
    """The ``steering`` section: where to add which direction, with which coefficients."""

    layer: NonNegativeInt
    hook_point: HookPoint = "resid_post"
    source: Literal["mean_diff", "sae"] = "mean_diff"
    sae: StrictStr | None = None  # source "sae": a saved SAE folder, "release/id" or a release
    feature: NonNegativeInt | None = None  # source "sae": the latent whose decoder row is added
    position: Literal["final", "all"] = "final"  # mean_diff: the position averaged over
    positions: Literal["all", "final"] = "all"  # where the direction is added
    coefficients: tuple[StrictFloat, ...] = (-1.0, 0.0, 0.5, 1.0, 2.0)
    metric: MetricName = "logit_diff"
    train_fraction: StrictFloat = Field(0.5, gt=0, lt=1)
    n_generate: NonNegativeInt = 8  # greedy tokens generated per prompt and coefficient
    n_generate_prompts: PositiveInt = 3

    @model_validator(mode="after")
    def _sae_fields(self) -> SteeringConfig:
        if self.source == "sae" and (self.sae is None or self.feature is None):
            raise ValueError("source 'sae' needs sae (a folder or release) and feature")
        if 0.0 not in self.coefficients:
            raise ValueError("coefficients must include 0.0 (the unsteered reference)")
        return self


def _direction(model: Any, train: ContrastDataset, config: Any, hook: str, batch_size: int) -> Any:
    from src.analysis.steering import mean_difference, sae_direction

    section = config.steering
    if section.source == "mean_diff":
        position = -1 if section.position == "final" else None
        return mean_difference(
            model, train.clean_tokens, train.corrupted_tokens, hook, position=position,
            batch_size=batch_size,
        )  # fmt: skip
    from src.models.saes import load_sae

    sae = load_sae(section.sae, layer=section.layer, model_name=config.model.name)
    return sae_direction(sae, section.feature)


def run_steering_experiment(
    model: Any,
    dataset: ContrastDataset,
    config: Any,
    *,
    batch_size: int = 64,
    progress: bool = False,  # every runner takes it; a few batched forwards here
) -> dict[str, Any]:
    """Metric per coefficient (with CIs), its shift from coefficient 0, the share of the
    way from the negative to the positive baseline, and steered greedy continuations."""
    from src.analysis.effects import ci_dict
    from src.analysis.metrics import bind_metric
    from src.analysis.steering import steer, steered_generation
    from src.analysis.tokens import token_decoder
    from src.models.hooks import hook_name

    section = config.steering
    if not hasattr(dataset, "corrupted_tokens"):
        raise ValueError("steering needs contrast pairs (clean = positive, corrupted = negative)")
    if section.layer >= model.cfg.n_layers:
        raise ValueError(
            f"steering.layer: {section.layer} is out of range (0..{model.cfg.n_layers - 1})"
        )
    hook = hook_name(section.hook_point, section.layer)
    n_train = round(len(dataset) * section.train_fraction)
    if not 0 < n_train < len(dataset):
        raise ValueError(f"{len(dataset)} prompts are too few to split for steering")
    train, test = dataset[:n_train], dataset[n_train:]
    direction = _direction(model, train, config, hook, batch_size)
    d_model = int(model.cfg.d_model)
    if direction.shape != (d_model,):
        raise ValueError(
            f"the direction has shape {tuple(direction.shape)}, {hook} has d={d_model}"
        )

    def metric(logits: Any, index: Any) -> Any:
        return bind_metric(
            section.metric, test.answer_tokens[index], test.wrong_tokens[index], per_prompt=True
        )(logits)

    coefficients = list(section.coefficients)
    per_prompt = steer(
        model, test.corrupted_tokens, direction, hook, coefficients, metric,
        positions=section.positions, batch_size=batch_size,
    )  # fmt: skip
    positive = steer(model, test.clean_tokens, direction, hook, [0.0], metric)[0]
    zero = coefficients.index(0.0)
    negative = per_prompt[zero]
    gap = (positive - negative).mean().item()
    shifts = per_prompt - negative
    decode = token_decoder(model)
    joiner = "" if getattr(model, "tokenizer", None) is not None else " "

    def text(ids: list[int]) -> str:
        return joiner.join(decode(t) for t in ids)

    prompts = test.corrupted_tokens[: section.n_generate_prompts]
    generation = []
    if section.n_generate:
        new = steered_generation(
            model, prompts, direction, hook, coefficients, n_new=section.n_generate,
            positions=section.positions,
        )  # fmt: skip
        for c, rows in zip(coefficients, new.tolist(), strict=True):
            generation.append({"coefficient": c, "continuations": [text(r) for r in rows]})
    largest = max(range(len(coefficients)), key=lambda i: coefficients[i])
    results = {
        "hook_name": hook,
        "source": section.source,
        "metric": section.metric,
        "n_train": n_train,
        "n_samples": len(test),
        "direction_norm": float(direction.norm()),
        "coefficients": coefficients,
        "positive_metric": ci_dict(positive),
        "negative_metric": ci_dict(negative),
        "steered_metric": [ci_dict(row) for row in per_prompt],
        "shift": [ci_dict(row) for row in shifts],
        # 0: the negative (unsteered) metric, 1: the positive one
        "toward_positive": [row.mean().item() / gap if gap else None for row in shifts],
        "steered_shift": shifts[largest].mean().item(),
        "prompts": [text(row) for row in prompts.tolist()],
        "generation": generation,
        "figures": [],
    }
    if section.source == "sae":
        results |= {"sae": section.sae, "feature": section.feature}
    return results


KIND = ExperimentKind(
    name="steering",
    label="steering (activation addition)",
    section=SteeringConfig,
    run=run_steering_experiment,
    figures=("steering",),
    headline="steered_shift",
)
