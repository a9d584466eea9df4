"""Path patching experiment: the effect of each sender head through each later receiver
head's query, key or value input, clean into corrupted, with bootstrap CIs over prompts.
The method is ``src.analysis.path_patching.path_patch``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import model_validator

from src.experiments.registry import ExperimentKind
from src.utils.config import MetricName, NonNegativeInt, Section
from src.utils.validation import check

if TYPE_CHECKING:
    from src.data.dataset import ContrastDataset

Heads = tuple[tuple[NonNegativeInt, NonNegativeInt], ...] | Literal["all"]


class PathPatchingConfig(Section):
    """The ``path_patching`` section: sender and receiver heads as [layer, head] pairs (or
    "all"), the receivers' inputs patched and the metric."""

    senders: Heads = "all"
    receivers: Heads = "all"
    inputs: tuple[Literal["q", "k", "v"], ...] = ("q", "k", "v")
    metric: MetricName = "logit_diff"
    top_k: NonNegativeInt = 10  # paths listed in the results

    @model_validator(mode="after")
    def _non_empty(self) -> PathPatchingConfig:
        for key in ("senders", "receivers", "inputs"):
            value = getattr(self, key)
            check(value == "all" or len(value) > 0, key, "expected a non-empty list or 'all'")
        return self


def path_label(index: list[int], inputs: tuple[str, ...]) -> str:
    """``a0.h2 -> a1.h0.k`` for index (sender layer, head, receiver layer, head, input)."""
    s_layer, s_head, r_layer, r_head, i = index
    return f"a{s_layer}.h{s_head} -> a{r_layer}.h{r_head}.{inputs[i]}"


def run_path_patching_experiment(
    model: Any,
    dataset: ContrastDataset,
    config: Any,
    *,
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, Any]:
    """Path patching of every (sender, receiver, input): normalized effects (0 = corrupted,
    1 = clean) with CIs, in layout [sender layer, sender head, receiver layer, receiver head,
    input], and the ``top_k`` paths by |effect|."""
    import torch

    from src.analysis.effects import ci_dict, nan_to_num, per_prompt_metric
    from src.analysis.metrics import normalize
    from src.analysis.path_patching import path_patch
    from src.experiments.common import Sweep, over_batches

    section = config.path_patching
    sweep = Sweep.start(model, dataset, section, batch_size, progress)
    results = sweep.results

    def pairs(value: Any) -> list[tuple[int, int]] | None:
        return None if value == "all" else [tuple(p) for p in value]

    def one(batch: ContrastDataset) -> torch.Tensor:
        return path_patch(
            model, batch.clean_tokens, batch.corrupted_tokens,
            per_prompt_metric(batch, section.metric), senders=pairs(section.senders),
            receivers=pairs(section.receivers), inputs=section.inputs,
        )  # fmt: skip

    per_prompt = over_batches(one, sweep.steps, "path patching", progress)
    normalized = normalize(per_prompt, sweep.clean.mean(), sweep.corrupted.mean())
    summary = ci_dict(normalized)
    mean = torch.tensor(nan_to_num(summary["mean"]), dtype=torch.float)
    order = mean.abs().nan_to_num(-1.0).flatten().argsort(descending=True)
    top = []
    for flat in order[: min(section.top_k, int((~mean.isnan()).sum()))].tolist():
        index = [int(i) for i in torch.unravel_index(torch.tensor(flat), mean.shape)]
        low, high = (
            torch.tensor(nan_to_num(summary[k]))[tuple(index)].item() for k in ("low", "high")
        )
        top.append({"path": path_label(index, section.inputs), "index": index,
                    "mean": mean[tuple(index)].item(), "low": low, "high": high})  # fmt: skip
    results["paths"] = {
        "axes": ["sender_layer", "sender_head", "receiver_layer", "receiver_head", "input"],
        "inputs": list(section.inputs),
        "normalized": summary,
        "top": top,
    }
    if top:
        results["top_path"] = top[0]["path"]
        results["top_path_effect"] = top[0]["mean"]
    return results


KIND = ExperimentKind(
    name="path_patching",
    label="path patching",
    section=PathPatchingConfig,
    run=run_path_patching_experiment,
    figures=("paths",),
    headline="top_path_effect",
)
