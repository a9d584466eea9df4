"""Shared by the experiment runners: per-prompt metrics over a dataset, effects with
bootstrap confidence intervals, labels of result entries, and JSON-safe values."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from src.analysis.metrics import bind_metric, normalize
from src.analysis.statistics import bootstrap_ci
from src.data.dataset import ContrastDataset


def batches(dataset: ContrastDataset, batch_size: int) -> list[ContrastDataset]:
    """The dataset in consecutive slices of at most ``batch_size`` prompts."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    return [dataset[i : i + batch_size] for i in range(0, len(dataset), batch_size)]


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
    for flat in order[: min(top_k, int((~mean.isnan()).sum()))].tolist():
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


def save_effect_figures(
    summary: dict[str, Any], stem: str, *, title: str, xticklabels: list[str] | None = None
) -> list[str]:
    """The normalized effects of ``effect_summary`` as a PNG heatmap and an HTML table
    (``{stem}.png``, ``{stem}.html``); returns the two paths."""
    from src.visualization.patching import plot_patching_heatmap, save_heatmap_html

    axes = tuple(summary["axes"])
    arrays = [
        torch.tensor(nan_to_num(summary["normalized"][key]), dtype=torch.float)
        for key in ("mean", "low", "high")
    ]
    if axes == ("layer",):  # one column: the whole layer
        arrays = [a[:, None] for a in arrays]
        x_label, ticks = "all positions", ["all"]
    elif axes == ("layer", "head", "pos"):  # pattern by destination: plot as (layer, pos, head)
        arrays = [a.transpose(1, 2) for a in arrays]
        x_label, ticks = "position", xticklabels
    else:
        x_label, ticks = ("head", None) if axes == ("layer", "head") else ("position", xticklabels)
    mean, low, high = (a.numpy() for a in arrays)
    kwargs = {
        "title": title,
        "x_label": x_label,
        "xticklabels": ticks,
        "ci_low": low,
        "ci_high": high,
    }
    png = plot_patching_heatmap(mean, f"{stem}.png", **kwargs)
    html = save_heatmap_html(mean, f"{stem}.html", **kwargs)
    return [str(png), str(html)]


def token_labels(model: Any, tokens: Tensor) -> list[str] | None:
    """The first prompt's tokens as strings (for position axes), if the model has a tokenizer."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        return None
    return [f"{i}:{tokenizer.decode([t])}" for i, t in enumerate(tokens[0].tolist())]


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
    """The start of a sweep's results: sizes and both baselines with CIs."""
    return {
        "n_samples": len(clean),
        "metric": metric,
        "clean_metric": clean.mean().item(),
        "corrupted_metric": corrupted.mean().item(),
        "baselines": {"clean": ci_dict(clean), "corrupted": ci_dict(corrupted)},
        "components": {},
        "figures": [],
    }


def over_batches(
    fn: Callable[[ContrastDataset], Tensor],
    steps: list[ContrastDataset],
    desc: str,
    progress: bool,
) -> Tensor:
    """``fn`` on each batch, per-prompt results joined along the last (prompt) axis."""
    parts = [fn(b).cpu() for b in tqdm(steps, desc=desc, disable=not progress)]
    return torch.cat(parts, dim=-1)
