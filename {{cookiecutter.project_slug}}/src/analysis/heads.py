"""Attention-head scores: how strongly each head attends in an induction or previous-token way.

Both scores read the attention patterns (`blocks.{layer}.attn.hook_pattern`) on repeated random
tokens `[BOS, x_1..x_h, x_1..x_h]`, on which only an induction circuit can predict the second
half. They return `[n_layers, n_heads]` tensors on the CPU.
"""

from __future__ import annotations

import torch
from torch import Tensor


def repeated_random_tokens(
    n: int,
    half_len: int,
    d_vocab: int,
    bos_token_id: int,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> Tensor:
    """`n` sequences `[BOS, x, x]` of `1 + 2 * half_len` tokens, `x` uniform over non-BOS tokens.

    Deterministic for a seed (a local generator, the global RNG is untouched).
    """
    if not 0 <= bos_token_id < d_vocab:
        raise ValueError(f"bos_token_id {bos_token_id} is outside the vocabulary [0, {d_vocab})")
    generator = torch.Generator().manual_seed(seed)
    half = torch.randint(0, d_vocab - 1, (n, half_len), generator=generator)
    half = half + (half >= bos_token_id).long()  # skip the BOS id
    bos = torch.full((n, 1), bos_token_id, dtype=torch.long)
    return torch.cat([bos, half, half], dim=1).to(device)


def _half_len(tokens: Tensor) -> int:
    """Length of the repeated half of `[BOS, x, x]` tokens; ValueError if they are not that."""
    half_len = (tokens.shape[-1] - 1) // 2
    if tokens.ndim != 2 or tokens.shape[-1] != 1 + 2 * half_len or half_len < 2:
        raise ValueError(f"expected [batch, 1 + 2 * half_len] tokens, got {tuple(tokens.shape)}")
    if not torch.equal(tokens[:, 1 : 1 + half_len], tokens[:, 1 + half_len :]):
        raise ValueError("tokens are not [BOS, x, x] sequences (see repeated_random_tokens)")
    return half_len


@torch.no_grad()
def attention_patterns(model: torch.nn.Module, tokens: Tensor) -> Tensor:
    """Attention patterns of every layer, `[n_layers, batch, n_heads, query_pos, key_pos]`."""
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(tokens, names_filter=names)
    return torch.stack([cache[name] for name in names]).float()


@torch.no_grad()
def induction_scores(model: torch.nn.Module, tokens: Tensor) -> Tensor:
    """Mean attention from each second-half position to the token after its first occurrence.

    For `[BOS, x, x]` with halves of length h, position `p` of the second half attends to
    `p - h + 1` (offset `h - 1` below the diagonal), as in TransformerLens's induction score,
    averaged over the h second-half positions and the batch. Returns `[n_layers, n_heads]`.
    """
    half_len = _half_len(tokens)
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
