"""Logit lens experiment: the answer's probability and rank, and the KL divergence from
the model's output, after each layer at the final position, with bootstrap CIs over
prompts; optionally a tuned lens trained on the activations of part of the prompts and
compared on the rest. The method is ``src.analysis.logit_lens``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, StrictBool

from src.experiments.registry import ExperimentKind
from src.utils.config import NonNegativeInt, PositiveFloat, PositiveInt, Section
from src.utils.validation import Float

if TYPE_CHECKING:
    from src.data.dataset import ContrastDataset


class LogitLensConfig(Section):
    """The ``logit_lens`` section. ``tuned``: also train a tuned lens (an affine map per
    layer) on the clean prompts' activations of a ``train_fraction`` of the prompts, and
    evaluate both lenses on the others."""

    tuned: StrictBool = False
    train_fraction: Annotated[Float, Field(gt=0, lt=1)] = 0.5
    steps: PositiveInt = 200
    lr: PositiveFloat = 1e-3
    seed: NonNegativeInt = 0


def _lens_summary(result: Any) -> dict[str, Any]:
    """Per lens point: means with bootstrap CIs over prompts."""
    from src.analysis.effects import ci_dict

    return {
        "answer_prob": ci_dict(result.answer_prob),
        "answer_top1": ci_dict((result.answer_rank == 0).float()),
        "kl_to_final": ci_dict(result.kl_to_final),
    }


def run_logit_lens_experiment(
    model: Any,
    dataset: ContrastDataset,
    config: Any,
    *,
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, Any]:
    """The logit lens (and tuned lens) on the clean prompts: per lens point (``labels``:
    embed, L0, L1, ...) the answer's probability, top-1 rate and KL from the model's output,
    with CIs; ``last_point_error``: how far the last point is from the model's own answer
    probability (float error only)."""
    import torch
    from tqdm.auto import tqdm

    from src.analysis.logit_lens import LensResult, lens_labels, logit_lens, train_tuned_lens
    from src.data.dataset import batches

    section = config.logit_lens
    n_eval = len(dataset)
    lens = None
    results: dict[str, Any] = {"n_samples": len(dataset), "labels": lens_labels(model)}
    if section.tuned:
        n_train = min(len(dataset) - 1, max(1, round(section.train_fraction * len(dataset))))
        train, dataset = dataset[:n_train], dataset[n_train:]
        lens, losses = train_tuned_lens(
            model, train.clean_tokens, steps=section.steps, lr=section.lr, seed=section.seed
        )
        results["tuned_training"] = {"n_prompts": n_train, "loss_first": losses[0],
                                     "loss_last": losses[-1]}  # fmt: skip
        n_eval = len(dataset)

    def run(tuned: Any) -> LensResult:
        parts = [
            logit_lens(model, b.clean_tokens, b.answer_tokens, tuned=tuned)
            for b in tqdm(batches(dataset, batch_size), desc="logit lens", disable=not progress)
        ]
        return LensResult(
            labels=parts[0].labels,
            **{key: torch.cat([getattr(p, key) for p in parts], dim=-1)
               for key in ("answer_prob", "answer_rank", "kl_to_final", "model_answer_prob")},
        )  # fmt: skip

    plain = run(None)
    results["n_eval"] = n_eval
    results["lens"] = _lens_summary(plain)
    error = (plain.answer_prob[-1] - plain.model_answer_prob).abs().max().item()
    results["last_point_error"] = error
    results["mean_kl_to_final"] = plain.kl_to_final[:-1].mean().item()
    if lens is not None:
        tuned = run(lens)
        results["tuned_lens"] = _lens_summary(tuned)
        results["tuned_mean_kl_to_final"] = tuned.kl_to_final[:-1].mean().item()
    results["figures"] = []
    return results


KIND = ExperimentKind(
    name="logit_lens",
    label="logit lens",
    section=LogitLensConfig,
    run=run_logit_lens_experiment,
    figures=("logit_lens",),
    headline="mean_kl_to_final",
)
