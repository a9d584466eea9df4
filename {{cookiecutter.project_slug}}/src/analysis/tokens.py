"""Tokens as text: labels for positions and contexts (the ids when a model has no tokenizer)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

Decode = Callable[[int], str]


def token_decoder(model: Any) -> Decode:
    """Token id -> text with the model's tokenizer; the id itself when it has none."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        return str
    return lambda i: tokenizer.decode([i])


def token_strings(model: Any, tokens: Tensor | Sequence[int]) -> list[str]:
    """One label per token: the decoded text when the model has a tokenizer, else the id."""
    decode = token_decoder(model)
    return [decode(i) for i in torch.as_tensor(tokens).flatten().tolist()]


def token_labels(model: Any, tokens: Tensor) -> list[str] | None:
    """The first prompt's tokens as ``i:text`` (for position axes), if the model has a
    tokenizer."""
    if getattr(model, "tokenizer", None) is None:
        return None
    decode = token_decoder(model)
    return [f"{i}:{decode(t)}" for i, t in enumerate(tokens[0].tolist())]
