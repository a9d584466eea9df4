"""Where text comes from: the documents of a text source, and each model's default source.

A source is a string (``data.path`` in an SAE config, ``--dataset-path`` on the scripts):

- a local ``.txt`` file: one document per line (as ``datasets``' "text" loader reads it);
- a local ``.jsonl`` file: one ``{"text": ...}`` object per line;
- a local directory saved with ``datasets.Dataset.save_to_disk`` (its "text" column; the
  "train" split of a saved ``DatasetDict``);
- a Hugging Face dataset id (``Skylion007/openwebtext``): its "train" split's "text" column,
  streamed with ``datasets`` when online, and read from the local datasets cache when
  ``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE`` is set (not there: one line says what to do,
  at once, with no retries).

Without a source, a model of ``src/models/families.yaml`` reads its row's ``dataset``.
``src.data.text`` tokenises and packs the documents. Standard library at import time:
``datasets`` is imported only to read a saved directory or the Hub.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TEXT_COLUMN = "text"
LOCAL_SUFFIXES = (".txt", ".jsonl")
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
SOURCE_OPTION = "--dataset-path or data.path in the config"
LOCAL_KINDS = "a local .txt or .jsonl file or a datasets save_to_disk directory"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_TRUE = ("1", "ON", "YES", "TRUE")


class TextSourceError(ValueError):
    """A text source that cannot be read: missing, malformed, or not available offline."""


def offline_variable() -> str | None:
    """The variable that turns Hub downloads off (``HF_HUB_OFFLINE=1``, ...), if one does."""
    for name in OFFLINE_VARIABLES:
        if os.environ.get(name, "").strip().upper() in _TRUE:
            return name
    return None


def default_text_source(model_name: str) -> str:
    """The Hugging Face dataset that ``model_name``'s row of the family table names (a row's
    short name or its ``hf_id``); a one-line error for any other model."""
    from src.models.families import load_families

    families = load_families()
    row = families.get(model_name) or next(
        (f for f in families.values() if f.hf_id is not None and f.hf_id == model_name), None
    )
    if row is None:
        what = "a local checkpoint" if Path(model_name).expanduser().is_dir() else "not"
        where = "" if what != "not" else " in src/models/families.yaml"
        raise TextSourceError(
            f"model {model_name!r} is {what}{where}, so it has no default text dataset: give "
            f"one with {SOURCE_OPTION} ({LOCAL_KINDS}, or a Hugging Face dataset id)"
        )
    if row.dataset is None:
        raise TextSourceError(
            f"model {model_name!r} has no text dataset (its row of src/models/families.yaml "
            "has dataset: null; a toy model has no tokenizer): use dataset 'induction'"
        )
    return row.dataset


def resolve_text_source(source: str | Path | None, model_name: str) -> str:
    """``source`` as given, or ``model_name``'s default when it is None."""
    return default_text_source(model_name) if source is None else str(source)


def source_short_name(source: str | Path) -> str:
    """A file-safe short name of a source, for cache folders: ``Skylion007/openwebtext`` ->
    ``openwebtext``, ``data/datasets/train.txt`` -> ``train``, a directory -> its name."""
    name = Path(str(source).rstrip("/\\")).expanduser().name
    for suffix in LOCAL_SUFFIXES:
        name = name.removesuffix(suffix)
    return re.sub(r"[^A-Za-z0-9._-]", "-", name) or "text"


def dataset_short_name(dataset: str, source: str | Path | None) -> str:
    """The dataset part of an activation cache's name: the source's short name for dataset
    ``text``, the dataset's own name for the others (``induction``, ``ioi``)."""
    return source_short_name(source) if dataset == "text" and source is not None else dataset


def iter_documents(source: str | Path) -> Iterator[str]:
    """The documents (strings) of ``source``, lazily. Raises TextSourceError at once (not
    when iterated) for a source that does not exist or cannot be loaded."""
    path = Path(source).expanduser()
    if path.is_file():
        return _jsonl_documents(path) if path.suffix == ".jsonl" else _line_documents(path)
    if path.is_dir():
        return _saved_documents(path)
    text = str(source)
    if text.endswith((*LOCAL_SUFFIXES, ".json")) or not _HUB_ID.fullmatch(text):
        raise TextSourceError(
            f"text source {text!r}: no such file or directory ({LOCAL_KINDS} is wanted)"
        )
    return _hub_documents(text)


def _line_documents(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            yield line.rstrip("\r\n")


def _jsonl_documents(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise TextSourceError(f"{path}:{number}: not JSON ({error.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get(TEXT_COLUMN), str):
                raise TextSourceError(
                    f'{path}:{number}: expected an object with a "{TEXT_COLUMN}" string'
                )
            yield row[TEXT_COLUMN]


def _saved_documents(path: Path) -> Iterator[str]:
    import datasets

    try:
        saved = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise TextSourceError(
            f"text source {str(path)!r}: a directory, but not one saved by save_to_disk"
        ) from None
    if isinstance(saved, datasets.DatasetDict):
        if "train" not in saved:
            raise TextSourceError(
                f"{path}: a saved DatasetDict without a 'train' split ({list(saved)})"
            )
        saved = saved["train"]
    return _column(saved, str(path))


def _hub_documents(hub_id: str) -> Iterator[str]:
    import datasets

    variable = offline_variable()
    if variable is not None and not in_datasets_cache(hub_id):  # fail now: no retries
        raise TextSourceError(
            f"Hugging Face dataset {hub_id!r} is not in the local datasets cache and "
            f"downloads are off ({variable}=1): unset {' and '.join(OFFLINE_VARIABLES)} "
            f"to stream it, or give {LOCAL_KINDS} with {SOURCE_OPTION}"
        )
    try:  # offline: the prepared copy in the cache; online: streamed, nothing stored
        dataset = datasets.load_dataset(hub_id, split="train", streaming=variable is None)
    except (ConnectionError, FileNotFoundError, ValueError) as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TextSourceError(
            f"Hugging Face dataset {hub_id!r} cannot be loaded: {detail}"
        ) from None
    return _column(dataset, hub_id)


def in_datasets_cache(hub_id: str) -> bool:
    """Whether ``datasets`` has prepared ``hub_id`` in its local cache (its own layout:
    ``<HF_DATASETS_CACHE>/<namespace>___<name>/<config>/<version>/<hash>/``)."""
    from datasets import config
    from datasets.naming import camelcase_to_snakecase

    parts = hub_id.split("/")
    parts[-1] = camelcase_to_snakecase(parts[-1])
    root = Path(config.HF_DATASETS_CACHE).expanduser() / "___".join(parts)
    return any(path.is_dir() for path in root.glob("*/*/*"))


def _column(dataset: Any, name: str) -> Iterator[str]:
    columns = getattr(dataset, "column_names", None)
    if columns is not None and TEXT_COLUMN not in columns:
        raise TextSourceError(f"{name}: no {TEXT_COLUMN!r} column (columns: {columns})")
    return (row[TEXT_COLUMN] for row in dataset)
