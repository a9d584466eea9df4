"""Text tokenised and packed into rows of exactly ``context_size`` tokens (a TokenDataset).

Packed as SAELens packs text for training (``concat_and_batch_sequences`` with its defaults,
``begin_batch_token="bos"`` and ``sequence_separator_token="bos"``): each document is
tokenised without special tokens, documents follow each other, one BOS starts every row and
one BOS separates two documents within a row, a document that does not fit continues in
the next row, and the last partial row is dropped. Without a BOS token (``bos_token_id``
None) the documents are simply concatenated. Rows come in the source's order, so the rows
after the first ``n`` are new text (held-out rows take them).

Text has no natural corruption, so it is not a contrast dataset: use it for language-model
loss, activation caching and SAE training. The sources (local files, saved datasets, the
Hugging Face Hub) are ``src.data.text_sources``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Protocol

import torch

from src.data.dataset import TokenDataset
from src.data.text_sources import TextSourceError, iter_documents, source_short_name


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer used here."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


def pack_rows(
    documents: Iterable[Sequence[int]], context_size: int, bos_token_id: int | None
) -> Iterator[list[int]]:
    """Rows of ``context_size`` token ids from tokenised documents, packed as SAELens does
    (see the module docstring): a BOS is added only where the next token is not one already."""
    if context_size < 1 + (bos_token_id is not None):
        raise ValueError(f"context_size {context_size} leaves no room for text")
    row: list[int] = []
    for document in documents:
        offset = 0
        while offset < len(document):
            # Each pass starts a row (row empty) or a document (offset 0): BOS goes here.
            if bos_token_id is not None and document[offset] != bos_token_id:
                row.append(bos_token_id)
            take = context_size - len(row)
            row.extend(document[offset : offset + take])
            offset += take
            if len(row) == context_size:
                yield row
                row = []


def text_rows(
    source: str | Path, tokenizer: Tokenizer, context_size: int, bos_token_id: int | None
) -> Iterator[list[int]]:
    """The packed rows of ``source`` (``src.data.text_sources``), lazily."""
    documents = iter_documents(source)
    tokens = (tokenizer.encode(text, add_special_tokens=False) for text in documents)
    return pack_rows(tokens, context_size, bos_token_id)


def make_text_dataset(
    source: str | Path,
    tokenizer: Tokenizer,
    n_samples: int,
    seq_length: int,
    *,
    bos_token_id: int | None = None,
    skip: int = 0,
) -> TokenDataset:
    """Rows ``skip .. skip + n_samples`` of ``source`` packed into ``seq_length`` tokens;
    TextSourceError (a ValueError) when the source has fewer."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    rows = list(islice(text_rows(source, tokenizer, seq_length, bos_token_id), skip + n_samples))
    if len(rows) < skip + n_samples:
        after = f" after the first {skip}" if skip else ""
        raise TextSourceError(
            f"{source} has {len(rows)} rows of {seq_length} tokens; {n_samples} rows{after} "
            f"need {(skip + n_samples) * seq_length} tokens of text"
        )
    tokens = torch.tensor(rows[skip:], dtype=torch.long)
    return TokenDataset(name=f"text:{source_short_name(source)}", tokens=tokens)
