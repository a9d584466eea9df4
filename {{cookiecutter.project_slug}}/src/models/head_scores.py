"""Attention-head scores: how strongly each head attends in an induction or previous-token way.

Both scores read the attention patterns (``hook_pattern``) on repeated random tokens
``[BOS, x_1..x_h, x_1..x_h]`` (``src.data.repeated``), on which only an induction circuit can
predict the second half. They return ``[n_layers, n_heads]`` tensors on the CPU.

They sit beside the models rather than in ``src.analysis`` because the toy model records
them when it is trained (``src.models.toy``): its check that training made the circuit.
"""

from __future__ import annotations

import torch
from torch import Tensor

from src.data.repeated import repeated_half_len
from src.models.hooks import hook_name


@torch.no_grad()
def attention_patterns(model: torch.nn.Module, tokens: Tensor) -> Tensor:
    """Attention patterns of every layer, `[n_layers, batch, n_heads, query_pos, key_pos]`."""
    names = [hook_name("pattern", layer) for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(tokens, names_filter=names)
    return torch.stack([cache[name] for name in names]).float()


@torch.no_grad()
def induction_scores(model: torch.nn.Module, tokens: Tensor) -> Tensor:
    """Mean attention from each second-half position to the token after its first occurrence.

    For `[BOS, x, x]` with halves of length h, position `p` of the second half attends to
    `p - h + 1` (offset `h - 1` below the diagonal), as in TransformerLens's induction score,
    averaged over the h second-half positions and the batch. Returns `[n_layers, n_heads]`.
    """
    half_len = repeated_half_len(tokens)
    stripe = attention_patterns(model, tokens).diagonal(offset=-(half_len - 1), dim1=-2, dim2=-1)
    # stripe[..., j] is query j + h - 1 -> key j; the second half is queries h+1..2h, i.e. j >= 2.
    return stripe[..., 2:].mean(dim=(1, -1)).cpu()


@torch.no_grad()
def prev_token_scores(model: torch.nn.Module, tokens: Tensor) -> Tensor:
    """Mean attention from every position (but the first) to the one before it.

    Returns `[n_layers, n_heads]`.
    """
    stripe = attention_patterns(model, tokens).diagonal(offset=-1, dim1=-2, dim2=-1)
    return stripe.mean(dim=(1, -1)).cpu()
