"""Plain text from a local file, tokenized into fixed-length chunks (a TokenDataset).

Text has no natural corruption, so it is not a contrast dataset: use it for language-model
loss, activation caching and SAE training. Each chunk is ``[BOS] + seq_length - 1`` tokens
of the file (no BOS when ``bos_token_id`` is None); chunks do not overlap, and
``n_samples`` of them are drawn at random (seeded) and kept in file order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from src.data.dataset import TokenDataset


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer used here."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


def make_text_dataset(
    path: str | Path,
    tokenizer: Tokenizer,
    n_samples: int,
    seq_length: int,
    *,
    bos_token_id: int | None = None,
    seed: int = 0,
) -> TokenDataset:
    """``n_samples`` chunks of ``seq_length`` tokens from the text file at ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text dataset file not found: {path}")
    body = seq_length - (bos_token_id is not None)
    if n_samples <= 0 or body <= 0:
        raise ValueError(f"need n_samples > 0 and room for text in seq_length {seq_length}")
    ids = tokenizer.encode(path.read_text(encoding="utf-8"), add_special_tokens=False)
    n_chunks = len(ids) // body
    if n_chunks < n_samples:
        raise ValueError(
            f"{path} has {len(ids)} tokens, {n_chunks} chunks of {body}; "
            f"n_samples={n_samples} needs {n_samples * body} tokens"
        )
    chunks = torch.tensor(ids[: n_chunks * body], dtype=torch.long).view(n_chunks, body)
    generator = torch.Generator().manual_seed(seed)
    keep = torch.randperm(n_chunks, generator=generator)[:n_samples].sort().values
    tokens = chunks[keep]
    if bos_token_id is not None:
        tokens = torch.cat([torch.full((n_samples, 1), bos_token_id), tokens], dim=1)
    return TokenDataset(name=f"text:{path.name}", tokens=tokens)
