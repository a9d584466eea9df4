"""Attention patterns of chosen heads on one prompt, with the labels to draw them.

A pattern is ``[n_heads, dest, src]`` (row = the attending query position, column = the
attended key position; each row sums to 1 over ``src <= dest``). Heads are named as the
circuit code names its nodes (``a1.h0``); ``src.visualization.attention`` draws them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from src.analysis.tokens import token_strings
from src.models.hooks import hook_name

Head = tuple[int, int]  # (layer, head)
HEAD_NAME = re.compile(r"^a(\d+)\.h(\d+)$")  # the circuit code's node names: a1.h0


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
