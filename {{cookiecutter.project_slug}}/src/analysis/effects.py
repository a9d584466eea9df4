"""Effects of interventions over prompts: normalized means with bootstrap confidence
intervals, the strongest entries with their labels, and JSON-safe values (NaN as None)."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from src.analysis.metrics import bind_metric, normalize
from src.analysis.statistics import bootstrap_ci
from src.data.dataset import ContrastDataset, batches

logger = logging.getLogger(__name__)

# Below this gap between the clean and corrupted baselines, relative to the larger of the
# two, normalized effects divide by almost nothing (a gap of 1.5% turned a 0.3% change into
# an effect of -1.95): warn.
GAP_RTOL = 0.05


def per_prompt_metric(batch: ContrastDataset, metric: str) -> Callable[[Tensor], Tensor]:
    """The config's metric for this batch, one value per prompt (for confidence intervals)."""
    return bind_metric(metric, batch.answer_tokens, batch.wrong_tokens, per_prompt=True)


@torch.no_grad()
def baselines(
    model: Any, dataset: ContrastDataset, metric: str, batch_size: int
) -> tuple[Tensor, Tensor]:
    """The metric on the clean and on the corrupted prompts: two [n_prompts] tensors."""
    device = next(model.parameters()).device
    clean, corrupted = [], []
    for batch in batches(dataset, batch_size):
        batch = batch.to(device)
        fn = per_prompt_metric(batch, metric)
        clean.append(fn(model(batch.clean_tokens)).float().cpu())
        corrupted.append(fn(model(batch.corrupted_tokens)).float().cpu())
    return torch.cat(clean), torch.cat(corrupted)


def gap_warning(clean: float, corrupted: float, rtol: float = GAP_RTOL) -> str | None:
    """The warning for baselines too close to normalize by (``|clean - corrupted|`` below
    ``rtol`` times the larger magnitude), else None."""
    gap, scale = abs(clean - corrupted), max(abs(clean), abs(corrupted))
    if gap > 0 and gap >= rtol * scale:
        return None
    return (
        f"clean ({clean:.5g}) and corrupted ({corrupted:.5g}) baselines differ by {gap:.3g}, "
        f"under {rtol:.0%} of their size: normalized effects (divided by this gap) are "
        "unreliable; use a corruption or metric that separates them"
    )


def warn_if_small_gap(clean: float, corrupted: float, rtol: float = GAP_RTOL) -> list[str]:
    """``gap_warning`` issued (``warnings.warn`` and the log) and returned as a list, for
    the results; an empty list when the gap is fine."""
    message = gap_warning(clean, corrupted, rtol)
    if message is None:
        return []
    logger.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=2)
    return [message]


def ci_dict(values: Tensor, seed: int = 0) -> dict[str, Any]:
    """Mean of [..., n_prompts] values with a 95% bootstrap CI over prompts (NaN entries,
    i.e. not computed, stay NaN); JSON-ready."""
    values = values.detach().float().cpu()
    mean = values.mean(-1)
    low, high = mean.clone(), mean.clone()
    finite = ~torch.isnan(mean)
    if values.shape[-1] >= 2 and finite.any():
        ci = bootstrap_ci(values[finite], seed=seed)
        low[finite] = torch.as_tensor(ci.low, dtype=torch.float).reshape(-1)
        high[finite] = torch.as_tensor(ci.high, dtype=torch.float).reshape(-1)
    return {"mean": jsonable(mean), "low": jsonable(low), "high": jsonable(high)}


def effect_summary(
    per_prompt: Tensor,
    axes: tuple[str, ...],
    clean: Tensor,
    corrupted: Tensor,
    *,
    seed: int = 0,
    top_k: int = 5,
) -> dict[str, Any]:
    """Normalized effect (0 = corrupted, 1 = clean baseline) of every entry of a
    [*layout, n_prompts] result, with CIs, the raw metric and the ``top_k`` entries."""
    normalized = normalize(per_prompt, clean.mean(), corrupted.mean())
    summary = ci_dict(normalized, seed)
    mean = torch.tensor(nan_to_num(summary["mean"]), dtype=torch.float)
    order = mean.abs().nan_to_num(-1.0).flatten().argsort(descending=True)
    top = []
    n_top = min(top_k, int((~mean.isnan()).sum())) if axes else 0  # one value: no ranking
    for flat in order[:n_top].tolist():
        index = [int(i) for i in torch.unravel_index(torch.tensor(flat), mean.shape)]
        entry = {"entry": entry_label(axes, index), "index": index}
        for key in ("mean", "low", "high"):
            entry[key] = _item(summary[key], index)
        top.append(entry)
    return {
        "axes": list(axes),
        "normalized": summary,
        "raw_mean": jsonable(per_prompt.float().mean(-1)),
        "top": top,
    }


def entry_label(axes: tuple[str, ...], index: list[int]) -> str:
    """``a1.h0`` for a head, ``L1`` for a layer, ``@5`` appended for position 5."""
    where = dict(zip(axes, index, strict=True))
    name = f"a{where['layer']}.h{where['head']}" if "head" in where else f"L{where['layer']}"
    return f"{name}@{where['pos']}" if "pos" in where else name


def jsonable(values: Tensor) -> Any:
    """Nested lists of floats, NaN as None (JSON has no NaN)."""
    return nan_to_none(values.detach().cpu().tolist())


def nan_to_none(value: Any) -> Any:
    if isinstance(value, list):
        return [nan_to_none(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def nan_to_num(value: Any) -> Any:
    """Inverse of ``nan_to_none``: None back to NaN."""
    if isinstance(value, list):
        return [nan_to_num(v) for v in value]
    return float("nan") if value is None else value


def _item(nested: Any, index: list[int]) -> Any:
    for i in index:
        nested = nested[i]
    return nested


def pearson(a: Tensor, b: Tensor) -> float:
    """Pearson correlation of two results over the entries both computed (not NaN)."""
    a, b = a.flatten().double(), b.flatten().double()
    both = ~(a.isnan() | b.isnan())
    a, b = a[both] - a[both].mean(), b[both] - b[both].mean()
    denominator = (a.norm() * b.norm()).item()
    return float((a @ b).item() / denominator) if denominator > 0 else float("nan")
