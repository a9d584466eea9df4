"""An activation cache made once and then reused: made when missing or incomplete (which
resumes it), and checked against what it must hold when it exists."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from src.data.activation_cache import (
    METADATA,
    ActivationStore,
    CacheError,
    cache_activations,
    open_cache,
)


def ensure_cache(
    model: Any,
    out_dir: Path,
    hook_name: str,
    make_tokens: Callable[[], Tensor],
    metadata: dict[str, Any],
    *,
    batch_size: int = 32,
    dtype: torch.dtype | None = None,
    progress: bool = False,
) -> ActivationStore:
    """The cache in ``out_dir`` of ``hook_name``, made from ``make_tokens()`` first if it is
    missing or incomplete (which resumes). ``metadata`` (model, dataset, seed, ...) is
    stored with a new cache and must match an existing one: else CacheError names the field.
    """
    if not _is_complete(out_dir):
        meta = dict(metadata)
        meta.setdefault("command", "run_sae_training")
        cache_activations(
            model,
            make_tokens(),
            [hook_name],
            out_dir,
            batch_size=batch_size,
            dtype=dtype,
            metadata=meta,
            progress=progress,
        )
    expect = {k: v for k, v in metadata.items() if k != "command"}
    try:
        return open_cache(out_dir, expect=expect | {"hook_names": [hook_name]})
    except CacheError as e:
        raise CacheError(f"{e} (delete the folder to cache again)") from None


def _is_complete(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds a cache marked complete (unreadable: True, so that
    ``open_cache`` says what is wrong with it)."""
    path = out_dir / METADATA
    if not path.exists():
        return False
    try:
        return json.loads(path.read_text(encoding="utf-8"))["complete"] is True
    except (OSError, ValueError, KeyError, TypeError):
        return True
