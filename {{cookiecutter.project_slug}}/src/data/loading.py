"""``load_dataset``: one entry point for every dataset, by name (see ``DATASETS``); the
dataset of a config's ``data`` section; the token ids an activation cache stores."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from src.data.dataset import ContrastDataset, TokenDataset
from src.data.induction import make_induction_dataset
from src.data.ioi import make_ioi_dataset
from src.data.text import make_text_dataset
from src.models.load import bos_token_id

if TYPE_CHECKING:
    from src.utils.config import DataConfig, SAEDataConfig

Dataset = ContrastDataset | TokenDataset
HELDOUT_SEED_OFFSET = 1_000_000  # held-out prompts use seed + this (and skip training ones)


def _induction(
    n_samples: int,
    seq_length: int | None,
    seed: int,
    model: Any,
    path: Any,
    corruption: Any,
    shared_answer: bool = False,
) -> Dataset:
    if seq_length is None:
        raise ValueError("dataset 'induction' needs a seq_length (data.seq_length)")
    bos = bos_token_id(model)
    if bos is None:
        raise ValueError("dataset 'induction' needs a BOS token; the model's tokenizer has none")
    return make_induction_dataset(
        n_samples, seq_length, model.cfg.d_vocab, bos, seed, corruption=corruption or "answer",
        shared_answer=shared_answer,
    )  # fmt: skip


def _text(
    n_samples: int, seq_length: int | None, seed: int, model: Any, path: Any, corruption: Any
) -> Dataset:
    """The first rows of a text source, in its order (``seed`` plays no part)."""
    if seq_length is None:
        raise ValueError("dataset 'text' needs a seq_length (data.seq_length)")
    if corruption is not None:
        raise ValueError("dataset 'text' has no corrupted prompts: leave data.corruption unset")
    return text_dataset(model, path, n_samples, seq_length)


def text_dataset(
    model: Any, source: str | Path | None, n_samples: int, seq_length: int, *, skip: int = 0
) -> TokenDataset:
    """Rows ``skip .. skip + n_samples`` of text ``source`` packed for ``model`` (its
    tokenizer and BOS; ``src.data.text``)."""
    if source is None:
        raise ValueError(
            "dataset 'text' needs a path (data.path): a .txt or .jsonl file, a save_to_disk "
            "directory or a Hugging Face dataset id"
        )
    if getattr(model, "tokenizer", None) is None:
        raise ValueError("dataset 'text' needs a model with a tokenizer (toy models have none)")
    return make_text_dataset(
        source, model.tokenizer, n_samples, seq_length, bos_token_id=bos_token_id(model), skip=skip
    )


def _ioi(
    n_samples: int, seq_length: int | None, seed: int, model: Any, path: Any, corruption: Any
) -> Dataset:
    """IOI prompts of exactly ``seq_length`` tokens (it picks the template group; None: the
    largest group)."""
    if getattr(model, "tokenizer", None) is None:
        raise ValueError(
            "dataset 'ioi' needs a model with a tokenizer (toy models have none): a GPT-2-style "
            "BPE in which each name, place and object is one token"
        )
    dataset = make_ioi_dataset(
        model.tokenizer, n_samples, seed, seq_length=seq_length, corruption=corruption or "abc"
    )
    if dataset.clean_tokens.max() >= model.cfg.d_vocab:
        raise ValueError(f"the tokenizer's ids exceed the model's d_vocab={model.cfg.d_vocab}")
    return dataset


# name -> builder(n_samples, seq_length, seed, model, path, corruption); add new datasets here.
DATASETS: dict[str, Callable[..., Dataset]] = {
    "induction": _induction,
    "text": _text,
    "ioi": _ioi,
    # every prompt the same answer (and wrong) token: contrast sets for steering
    "induction_shared": partial(_induction, shared_answer=True),
}


def load_dataset(
    name: str,
    n_samples: int,
    seq_length: int | None,
    seed: int = 0,
    *,
    model: Any = None,
    path: str | Path | None = None,
    corruption: str | None = None,
) -> Dataset:
    """Build dataset ``name`` for ``model`` (its vocabulary, tokenizer and context size);
    ``corruption`` picks how corrupted prompts are made (None: the dataset's default).

    Raises ValueError for an unknown name, a missing model or path, or a ``seq_length``
    longer than the model's context.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if model is None:
        raise ValueError(f"dataset {name!r} needs a model (for its vocabulary and tokenizer)")
    if seq_length is not None and seq_length > model.cfg.n_ctx:
        raise ValueError(
            f"seq_length {seq_length} exceeds the model's context n_ctx={model.cfg.n_ctx}"
        )
    return DATASETS[name](n_samples, seq_length, seed, model, path, corruption)


def config_dataset(data: DataConfig, model: Any) -> Dataset:
    """The dataset an experiment config's ``data`` section describes, for ``model``."""
    return load_dataset(
        data.dataset,
        data.n_samples,
        data.seq_length,
        data.seed,
        model=model,
        path=data.path,
        corruption=data.corruption,
    )


def token_chunks(
    name: str,
    n_seq: int,
    context_size: int,
    seed: int,
    *,
    model: Any,
    path: str | Path | None = None,
) -> Tensor:
    """Token ids [n_seq, context_size] of dataset ``name`` (the clean prompts of a contrast
    dataset): what an activation cache stores."""
    dataset = load_dataset(name, n_seq, context_size, seed, model=model, path=path)
    return dataset.clean_tokens if isinstance(dataset, ContrastDataset) else dataset.tokens


def dataset_tokens(model: Any, data: SAEDataConfig, n_tokens: int, seed: int) -> Tensor:
    """Token ids [n_tokens // context_size, context_size] of an SAE config's dataset, as
    ``scripts/cache_activations.py`` makes them."""
    n_seq = n_tokens // data.context_size
    return token_chunks(data.dataset, n_seq, data.context_size, seed, model=model, path=data.path)


def heldout_tokens(model: Any, data: SAEDataConfig, train_tokens: Tensor) -> Tensor:
    """``data.n_eval_tokens // context_size`` prompts that are not training prompts.

    Text is read in order: the rows right after the ``len(train_tokens)`` training rows.
    Other datasets draw with another seed and drop the training prompts, drawing as many
    candidates as there are prompts in both, so that even when every training prompt comes
    up again, enough new ones are left."""
    n_seq = data.n_eval_tokens // data.context_size
    if data.dataset == "text":
        dataset = text_dataset(model, data.path, n_seq, data.context_size, skip=len(train_tokens))
        return dataset.tokens
    n_candidates = (n_seq + len(train_tokens)) * data.context_size
    candidates = dataset_tokens(model, data, n_candidates, data.seed + HELDOUT_SEED_OFFSET)
    seen = {row.numpy().tobytes() for row in train_tokens}
    keep = [i for i, row in enumerate(candidates) if row.numpy().tobytes() not in seen]
    return candidates[keep[:n_seq]]
