"""Attention patterns of chosen heads on one prompt, with the labels to draw them.

A pattern is ``[n_heads, dest, src]`` (row = the attending query position, column = the
attended key position; each row sums to 1 over ``src <= dest``). Heads are named as the
circuit code names its nodes (``a1.h0``); ``src.visualization.attention`` draws them.

The runners store ``strongest_attention`` in their results (the heads with the largest
effects, or a circuit's strongest heads, on the first prompt), so that the attention figure
is drawn from the log alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from src.analysis.effects import nan_to_num
from src.analysis.tokens import token_strings
from src.models.hooks import hook_name

Head = tuple[int, int]  # (layer, head)
HEAD_NAME = re.compile(r"^a(\d+)\.h(\d+)$")  # the circuit code's node names: a1.h0
MAX_HEADS = 4  # heads in the stored attention patterns


def parse_head(head: Head | str) -> Head:
    """``(layer, head)`` from a tuple or a name like ``a1.h0`` or ``L1H0``."""
    if isinstance(head, str):
        match = HEAD_NAME.match(head) or re.match(r"^L(\d+)H(\d+)$", head)
        if match is None:
            raise ValueError(f"head {head!r}: expected 'a<layer>.h<head>' or 'L<layer>H<head>'")
        return int(match[1]), int(match[2])
    layer, index = head
    return int(layer), int(index)


def head_name(head: Head) -> str:
    return f"a{head[0]}.h{head[1]}"


def one_prompt(tokens: Tensor) -> Tensor:
    tokens = torch.as_tensor(tokens)
    if tokens.ndim == 2 and tokens.shape[0] == 1:
        tokens = tokens[0]
    if tokens.ndim != 1 or tokens.dtype.is_floating_point or tokens.numel() == 0:
        raise ValueError(f"tokens must be one prompt of token ids [pos], got {tuple(tokens.shape)}")
    return tokens


def attention_patterns(model: Any, tokens: Tensor, heads: Sequence[Head | str]) -> Tensor:
    """The attention patterns ``[len(heads), dest, src]`` of ``heads`` on one prompt
    (``tokens``: ``[pos]`` or ``[1, pos]``), float32 on the CPU. One forward, caching only
    the layers' ``hook_pattern``."""
    chosen = [parse_head(h) for h in heads]
    if not chosen:
        raise ValueError("heads must name at least one (layer, head)")
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    for layer, head in chosen:
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ValueError(
                f"head {head_name((layer, head))} is out of range for this model "
                f"(layers 0..{n_layers - 1}, heads 0..{n_heads - 1})"
            )
    tokens = one_prompt(tokens).to(next(model.parameters()).device)
    names = {hook_name("pattern", layer) for layer, _ in chosen}
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens[None], names_filter=lambda name: name in names)
    patterns = [cache[hook_name("pattern", layer)][0, head] for layer, head in chosen]
    return torch.stack(patterns).float().cpu()


@dataclass
class HeadPatterns:
    """The attention patterns of named heads on one prompt, with one label per token."""

    patterns: Tensor  # [n_heads, dest, src]
    labels: list[str]
    head_names: list[str]


def head_patterns(model: Any, tokens: Tensor, heads: Sequence[Head | str]) -> HeadPatterns:
    """``attention_patterns`` of ``heads`` on one prompt, with the prompt's tokens as text
    (``token_strings``) and the heads' names (``a1.h0``): what the attention figures draw."""
    tokens = one_prompt(tokens)
    return HeadPatterns(
        patterns=attention_patterns(model, tokens, heads),
        labels=token_strings(model, tokens),
        head_names=[head_name(parse_head(h)) for h in heads],
    )


# --- which heads to show -----------------------------------------------------------------


def head_effects(summary: Mapping[str, Any]) -> dict[Head, float]:
    """|effect| per head of an ``effect_summary`` with a head axis (max over positions)."""
    axes = tuple(summary["axes"])
    mean = np.array(nan_to_num(summary["normalized"]["mean"]), dtype=float)
    if mean.ndim != len(axes):
        raise ValueError(f"normalized.mean has {mean.ndim} axes but 'axes' names {len(axes)}")
    if "head" not in axes:
        return {}
    grid = np.moveaxis(np.abs(mean), [axes.index("layer"), axes.index("head")], [0, 1])
    grid = grid.reshape(grid.shape[0], grid.shape[1], -1)
    out = {}
    for layer, head in zip(*np.nonzero(np.isfinite(grid).any(-1)), strict=True):
        out[(int(layer), int(head))] = float(np.nanmax(grid[layer, head]))
    return out


def query_head_effects(summary: Mapping[str, Any], n_heads: int) -> dict[Head, float]:
    """``head_effects`` by query head: under grouped-query attention a ``k`` or ``v`` sweep
    has one entry per key/value head, which each query head of its group reads (query heads
    ``kv * group .. (kv + 1) * group - 1``), so its effect is theirs."""
    effects = head_effects(summary)
    if not effects:
        return effects
    axes = tuple(summary["axes"])
    n_entries = np.shape(summary["normalized"]["mean"])[axes.index("head")]
    if n_entries >= n_heads or n_heads % n_entries:
        return effects
    group = n_heads // n_entries
    return {(layer, kv * group + j): v for (layer, kv), v in effects.items() for j in range(group)}


def component_head_scores(
    components: Mapping[str, Any], n_heads: int | None = None
) -> dict[Head, float]:
    """|effect| per (query) head over a sweep's components (each an effect summary, or a dict
    whose ``attribution`` holds one): the largest over components. With the model's
    ``n_heads``, key/value-head entries of grouped-query models go to their query heads."""
    scores: dict[Head, float] = {}
    for entry in components.values():
        summary = entry.get("attribution", entry)
        effects = query_head_effects(summary, n_heads) if n_heads else head_effects(summary)
        for head, value in effects.items():
            scores[head] = max(scores.get(head, 0.0), value)
    return scores


def circuit_head_scores(circuit: Mapping[str, Any]) -> dict[Head, float]:
    """|score| of a circuit's heads (the nodes in the circuit)."""
    return {
        (int(node["layer"]), int(node["head"])): abs(node.get("score") or 0.0)
        for node in circuit["nodes"]
        if "head" in node and node.get("in_circuit")
    }


def strongest(scores: Mapping[Head, float], n: int) -> list[Head]:
    """The ``n`` heads with the largest scores, largest first."""
    return [head for head, _ in sorted(scores.items(), key=lambda item: -item[1])[:n]]


def strongest_attention(
    model: Any, tokens: Tensor, scores: Mapping[Head, float], n: int = MAX_HEADS
) -> dict[str, Any] | None:
    """The attention patterns of the ``n`` heads with the largest ``scores`` on one prompt,
    as plain data for a log: ``{"heads": ["a1.h0", ...], "tokens": [text per token],
    "patterns": [n, dest, src]}``, strongest first; None without scored heads."""
    heads = strongest(scores, n)
    if not heads:
        return None
    view = head_patterns(model, tokens, heads)
    return {"heads": view.head_names, "tokens": view.labels, "patterns": view.patterns.tolist()}
