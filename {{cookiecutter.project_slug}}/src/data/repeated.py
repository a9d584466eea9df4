"""Repeated random tokens ``[BOS, x, x]``: the probe on which induction heads show.

Only an induction circuit can predict the second half of such a sequence, so head scores
(``src.models.head_scores``) read the attention patterns on them.
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


def repeated_half_len(tokens: Tensor) -> int:
    """Length of the repeated half of `[BOS, x, x]` tokens; ValueError if they are not that."""
    half_len = (tokens.shape[-1] - 1) // 2
    if tokens.ndim != 2 or tokens.shape[-1] != 1 + 2 * half_len or half_len < 2:
        raise ValueError(f"expected [batch, 1 + 2 * half_len] tokens, got {tuple(tokens.shape)}")
    if not torch.equal(tokens[:, 1 : 1 + half_len], tokens[:, 1 + half_len :]):
        raise ValueError("tokens are not [BOS, x, x] sequences (see repeated_random_tokens)")
    return half_len
