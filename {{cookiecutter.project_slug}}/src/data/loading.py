"""``load_dataset``: one entry point for every dataset, by name (see ``DATASETS``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from src.data.dataset import ContrastDataset, TokenDataset
from src.data.induction import make_induction_dataset
from src.data.text import make_text_dataset
from src.models.load import bos_token_id

Dataset = ContrastDataset | TokenDataset


def _induction(n_samples: int, seq_length: int, seed: int, model: Any, path: Any) -> Dataset:
    bos = bos_token_id(model)
    if bos is None:
        raise ValueError("dataset 'induction' needs a BOS token; the model's tokenizer has none")
    return make_induction_dataset(n_samples, seq_length, model.cfg.d_vocab, bos, seed)


def _text(n_samples: int, seq_length: int, seed: int, model: Any, path: Any) -> Dataset:
    if path is None:
        raise ValueError("dataset 'text' needs a path to a text file (data.path in the config)")
    if getattr(model, "tokenizer", None) is None:
        raise ValueError("dataset 'text' needs a model with a tokenizer (toy models have none)")
    return make_text_dataset(
        path, model.tokenizer, n_samples, seq_length, bos_token_id=bos_token_id(model), seed=seed
    )


# name -> builder(n_samples, seq_length, seed, model, path); add new datasets here.
DATASETS: dict[str, Callable[..., Dataset]] = {"induction": _induction, "text": _text}


def load_dataset(
    name: str,
    n_samples: int,
    seq_length: int,
    seed: int = 0,
    *,
    model: Any = None,
    path: str | Path | None = None,
) -> Dataset:
    """Build dataset ``name`` for ``model`` (its vocabulary, tokenizer and context size).

    Raises ValueError for an unknown name, a missing model or path, or a ``seq_length``
    longer than the model's context.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if model is None:
        raise ValueError(f"dataset {name!r} needs a model (for its vocabulary and tokenizer)")
    if seq_length > model.cfg.n_ctx:
        raise ValueError(
            f"seq_length {seq_length} exceeds the model's context n_ctx={model.cfg.n_ctx}"
        )
    return DATASETS[name](n_samples, seq_length, seed, model, path)
