"""Writing activation caches: a model's activations at chosen hook points, stored as
safetensors shards. The format and the reading side are ``src.data.activation_store``, whose
public names are importable from here too.

Writing streams: shards are filled one at a time and written by a background thread, so
memory stays flat however many tokens are cached. Every file is written to a temporary name
and renamed; the metadata is rewritten after each shard, so an interrupted run leaves complete
shards plus metadata that says how far it got, and calling ``cache_activations`` again with the
same settings resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from src.data.activation_store import (
    METADATA,
    SAFETENSORS_DTYPES,
    SETTINGS,
    SHARD,
    TOKENS_KEY,
    ActivationStore,
    CacheError,
    cache_name,
    check_shard,
    dtype_name,
    open_cache,
    read_metadata,
    write_metadata,
)
from src.data.cache_writer import Capture, ShardWriter

__all__ = [
    "METADATA",
    "SHARD",
    "TOKENS_KEY",
    "ActivationStore",
    "CacheError",
    "cache_activations",
    "cache_name",
    "open_cache",
]

_VOLATILE = {"command", "created", "git_commit", "git_dirty"}  # metadata that may differ


def cache_activations(
    model: Any,
    tokens: Tensor,
    hook_names: list[str],
    out_dir: str | Path,
    *,
    batch_size: int = 32,
    dtype: torch.dtype | None = None,
    shard_tokens: int = 2**16,
    metadata: dict[str, Any] | None = None,
    progress: bool = False,
) -> Path:
    """Run ``model`` over ``tokens`` [n_seq, ctx] and store the activations at ``hook_names``
    in ``out_dir``; return ``out_dir``.

    ``dtype``: stored dtype (None: the model's). ``shard_tokens``: tokens per shard (whole
    sequences, at least one). ``metadata``: entries for metadata.json, e.g. ``model``,
    ``dataset``, ``seed``, ``command`` (default: ``" ".join(sys.argv)``). The forward stops
    after the last hook needed (no logits are computed).

    Resumes when ``out_dir`` holds an incomplete cache made with the same settings (only the
    missing shards are computed); returns at once when it is complete. Raises CacheError,
    naming the field, when ``out_dir`` holds a cache made with different settings.
    """
    out_dir = Path(out_dir)
    dtype = _check_arguments(model, tokens, hook_names, batch_size, shard_tokens, dtype)
    tokens = tokens.cpu().contiguous()
    n_seq, ctx = tokens.shape
    shard_seqs = max(1, shard_tokens // ctx)

    settings = _settings(model, tokens, hook_names, dtype, shard_seqs, metadata or {})
    meta = _resume_metadata(out_dir, settings)
    if meta is None:
        meta = _new_metadata(settings, (metadata or {}).get("command", " ".join(sys.argv)))
    elif meta["complete"]:
        return out_dir

    bar = tqdm(
        total=n_seq * ctx,
        initial=meta["tokens_done"],
        unit="tok",
        unit_scale=True,
        desc="caching",
        disable=not progress,
    )
    writer = ShardWriter(out_dir, meta)
    ok = False
    try:
        with torch.no_grad(), Capture(model.hook_dict, hook_names) as capture:
            for index in range(len(meta["shards"]), math.ceil(n_seq / shard_seqs)):
                lo, hi = index * shard_seqs, min(n_seq, (index + 1) * shard_seqs)
                buffers = _shard_buffers(model, capture, tokens, lo, hi, meta, batch_size, bar)
                if meta["shapes"] is None:  # first shard of a new cache: describe it
                    _describe_shapes(meta, buffers, n_seq)
                    out_dir.mkdir(parents=True, exist_ok=True)
                    write_metadata(out_dir, meta)
                writer.put(index, buffers | {TOKENS_KEY: tokens[lo:hi].clone()})
        ok = True
    finally:
        bar.close()
        writer.close(raise_error=ok)  # an interrupted run still finishes the shards it queued
    return out_dir


def _check_arguments(
    model: Any,
    tokens: Tensor,
    hook_names: list[str],
    batch_size: int,
    shard_tokens: int,
    dtype: torch.dtype | None,
) -> torch.dtype:
    """Raise ValueError for arguments ``cache_activations`` cannot use; return the dtype to
    store (the model's when ``dtype`` is None)."""
    if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.dtype != torch.long:
        raise ValueError("tokens must be a [n_seq, ctx] torch.long tensor")
    if tokens.numel() == 0:
        raise ValueError("tokens is empty: nothing to cache")
    if not hook_names or len(set(hook_names)) != len(hook_names):
        raise ValueError(f"hook_names must be a non-empty list without repeats: {hook_names}")
    if batch_size < 1 or shard_tokens < 1:
        raise ValueError("batch_size and shard_tokens must be >= 1")
    unknown = [name for name in hook_names if name not in model.hook_dict]
    if unknown:
        raise ValueError(f"unknown hook name(s) {unknown} for this model")
    dtype = dtype or next(model.parameters()).dtype
    if not dtype.is_floating_point or dtype_name(dtype) not in SAFETENSORS_DTYPES:
        raise ValueError(f"cannot store activations as {dtype}; use float32, bfloat16, ...")
    return dtype


def _shard_buffers(
    model: Any,
    capture: Capture,
    tokens: Tensor,
    lo: int,
    hi: int,
    meta: dict,
    batch_size: int,
    bar: Any,
) -> dict[str, Tensor]:
    """The activations of sequences ``lo:hi`` (one shard), in batches of ``batch_size``."""
    device = next(model.parameters()).device
    ctx = tokens.shape[1]
    buffers: dict[str, Tensor] = {}
    for start in range(lo, hi, batch_size):
        end = min(hi, start + batch_size)
        acts = capture.run(model, tokens[start:end].to(device))
        for name in capture.names:
            if name not in buffers:
                buffers[name] = _new_buffer(meta, name, acts[name], hi - lo)
            buffers[name][start - lo : end - lo].copy_(acts[name])
        bar.update((end - start) * ctx)
    return buffers


def _settings(
    model: Any,
    tokens: Tensor,
    hook_names: list[str],
    dtype: torch.dtype,
    shard_seqs: int,
    metadata: dict[str, Any],
) -> dict[str, Any]:
    """What must agree for a run to resume into a cache: ``SETTINGS`` and the caller's
    metadata (except ``_VOLATILE`` keys), as JSON will read them back."""
    n_seq, ctx = tokens.shape
    settings = {
        "model": metadata.get("model", getattr(model.cfg, "model_name", None)),
        "hook_names": list(hook_names),
        "dataset": metadata.get("dataset"),
        "seed": metadata.get("seed"),
        "n_tokens": n_seq * ctx,
        "n_sequences": n_seq,
        "context_size": ctx,
        "dtype": dtype_name(dtype),
        "shard_sequences": shard_seqs,
        "tokens_sha256": hashlib.sha256(tokens.numpy().data).hexdigest(),
    }
    settings |= {k: v for k, v in metadata.items() if k not in settings and k not in _VOLATILE}
    return json.loads(json.dumps(settings, default=str))


def _new_metadata(settings: dict[str, Any], command: str) -> dict[str, Any]:
    """Metadata of a new cache: its settings, provenance, and progress (none yet); the
    shapes are filled in from the first batch."""
    from src.utils.tracking import git_state

    commit, dirty = git_state()
    return settings | {
        "shapes": None,
        "shape": None,
        "d": None,
        "git_commit": commit,
        "git_dirty": dirty,
        "created": datetime.now().isoformat(timespec="seconds"),
        "command": command,
        "tokens_done": 0,
        "complete": False,
        "shards": [],
    }


def _new_buffer(meta: dict, name: str, act: Tensor, n_rows: int) -> Tensor:
    """An empty shard buffer for ``name``; on resume, the shape is checked against the cache."""
    shape = [n_rows, *act.shape[1:]]
    if meta["shapes"] is not None and meta["shapes"][name][1:] != shape[1:]:
        raise CacheError(
            f"shape: the cache holds {name} of shape {meta['shapes'][name][1:]} per sequence, "
            f"this model gives {shape[1:]}"
        )
    return torch.empty(shape, dtype=getattr(torch, meta["dtype"]))


def _describe_shapes(meta: dict, buffers: dict[str, Tensor], n_seq: int) -> None:
    meta["shapes"] = {name: [n_seq, *buf.shape[1:]] for name, buf in buffers.items()}
    meta["shape"] = meta["shapes"][meta["hook_names"][0]]
    meta["d"] = math.prod(meta["shape"][2:])


def _resume_metadata(out_dir: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The metadata of the cache in ``out_dir`` to continue (None: start a new one), after
    checking its settings and shards and removing what an interrupted run left behind."""
    if not (out_dir / METADATA).exists():
        if out_dir.is_dir() and any(out_dir.glob("task_*.json")):
            raise CacheError(
                f"{out_dir}: holds the shards of a sharded cache (task_*.json); finish them and "
                "merge (cache_activations.py --merge), or delete the folder to start over"
            )
        if out_dir.is_dir() and any(out_dir.glob("shard_*.safetensors")):
            raise CacheError(
                f"{out_dir}: has shard files but no {METADATA}; delete the folder to start over"
            )
        return None
    meta = read_metadata(out_dir)
    check_settings(out_dir, meta, settings)
    for tmp in out_dir.glob(".*.tmp"):  # left by a killed run
        tmp.unlink(missing_ok=True)
    listed = {entry["file"] for entry in meta["shards"]}
    for shard in out_dir.glob("shard_*.safetensors"):  # written, but not yet in the metadata
        if shard.name not in listed:
            shard.unlink()
    for entry in meta["shards"]:
        check_shard(out_dir, meta, entry)
    return meta


def check_settings(out_dir: Path, meta: dict[str, Any], settings: dict[str, Any]) -> None:
    """Raise CacheError, naming the first field that differs, unless the cache (or shard
    task) metadata ``meta`` in ``out_dir`` was made with ``settings`` (see ``_settings``)."""
    keys = list(SETTINGS) + [k for k in settings if k not in SETTINGS]
    for key in keys:
        if meta.get(key) != settings.get(key):
            if key == "tokens_sha256":
                what = "different token ids (tokens_sha256)"
            else:
                what = f"a different {key} ({meta.get(key)!r}, now {settings.get(key)!r})"
            raise CacheError(
                f"{out_dir}: holds a cache made with {what}; delete it or choose another folder"
            )
