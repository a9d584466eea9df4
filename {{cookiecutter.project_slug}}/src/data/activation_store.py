"""Activation caches on disk: their format, and reading them after checking them.

A cache is a folder (by default ``data/activations/<cache_name(...)>``) holding
``shard_00000.safetensors``, ``shard_00001.safetensors``, ... (keys: each hook name ->
``[n_seq_in_shard, ctx, *act_shape]`` and ``"tokens"`` -> ``[n_seq_in_shard, ctx]`` int64)
and ``metadata.json`` (model, hook names, dataset, n tokens, dtype, shapes, seed, git commit,
created, command, how far it got). ``src.data.activation_cache`` writes them;
``open_cache`` checks one against its metadata and returns an ``ActivationStore`` to read it.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from src.data.text_sources import source_short_name
from src.utils.files import write_text_atomic

METADATA = "metadata.json"
SHARD = "shard_{:05d}.safetensors"
TOKENS_KEY = "tokens"

# Fields that must agree for a run to resume into an existing cache (and extra metadata keys
# the caller passes, except volatile ones), in the order they are checked.
SETTINGS = (
    "model",
    "hook_names",
    "dataset",
    "seed",
    "n_tokens",
    "n_sequences",
    "context_size",
    "dtype",
    "shard_sequences",
    "tokens_sha256",
)
SAFETENSORS_DTYPES = {
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float64": "F64",
    "int64": "I64",
}


class CacheError(ValueError):
    """A cache that cannot be used: missing, incomplete, corrupt, or made with other settings."""


def cache_name(model: str, layer: int, dataset: str, n_tokens: int) -> str:
    """The cache folder's name, ``{model}_{layer}_{dataset}_{n_tokens}``, with any character
    outside ``[A-Za-z0-9._-]`` replaced by ``-``. A model given as a local checkpoint folder
    is named by that folder, never by its path; a dataset given as a path or a Hugging Face
    id by its short name (``Skylion007/openwebtext`` -> ``openwebtext``; see
    ``src.data.text_sources.dataset_short_name`` for the name of a text dataset)."""
    name = f"{model_short_name(model)}_{layer}_{source_short_name(dataset)}_{n_tokens}"
    return re.sub(r"[^A-Za-z0-9._-]", "-", name)


def model_short_name(model: str) -> str:
    """``model`` as names of files show it: a local checkpoint folder's own name (never its
    path), any other name as it is (a Hugging Face id keeps its ``/``)."""
    path = Path(model).expanduser()
    if path.is_absolute() or model.startswith((".", "~")) or path.is_dir():
        return path.resolve().name
    return model


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``, as the metadata stores it."""
    return str(dtype).removeprefix("torch.")


def write_metadata(out_dir: Path, meta: dict, name: str = METADATA) -> None:
    """Write ``meta`` as the cache's metadata.json (or the file ``name``), atomically."""
    write_text_atomic(out_dir / name, json.dumps(meta, indent=2) + "\n")


def read_metadata(out_dir: Path) -> dict[str, Any]:
    """The metadata of the cache in ``out_dir``; CacheError when missing or unreadable."""
    path = out_dir / METADATA
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CacheError(f"{out_dir}: no activation cache here (no {METADATA})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CacheError(f"{path}: unreadable metadata ({error})") from None
    if not isinstance(meta, dict):
        raise CacheError(f"{path}: metadata must be a JSON object")
    needed = (*SETTINGS, "shapes", "tokens_done", "complete", "shards")
    missing = [key for key in needed if key not in meta]
    if missing:
        raise CacheError(f"{path}: metadata lacks field(s) {missing}")
    return meta


def open_cache(out_dir: str | Path, *, expect: dict[str, Any] | None = None) -> ActivationStore:
    """Open the cache in ``out_dir``, checking its metadata against the shards on disk.

    ``expect``: metadata values the caller needs, e.g. ``{"model": "toy-induction",
    "hook_names": ["blocks.0.hook_resid_pre"]}`` (for ``hook_names``, the listed hooks must be
    cached; other keys must be equal). Raises CacheError saying what is wrong: no cache,
    an incomplete one, a field that differs from ``expect`` (named), a missing or corrupt
    shard (named), or shard files that do not match the metadata.
    """
    out_dir = Path(out_dir)
    meta = read_metadata(out_dir)
    for key, wanted in (expect or {}).items():
        if isinstance(wanted, torch.dtype):
            wanted = dtype_name(wanted)
        have = meta.get(key)
        if key == "hook_names":
            missing = [name for name in wanted if name not in have]
            if missing:
                raise CacheError(
                    f"{out_dir}: hook_names differ: the cache holds {have}, not {missing}"
                )
        elif have != wanted:
            raise CacheError(f"{out_dir}: {key} differs: the cache has {have!r}, wanted {wanted!r}")
    if not meta["complete"]:
        raise CacheError(
            f"{out_dir}: incomplete cache ({meta['tokens_done']} of {meta['n_tokens']} tokens); "
            f"rerun the command that made it to resume: {meta.get('command')}"
        )
    on_disk = sorted(path.name for path in out_dir.glob("shard_*.safetensors"))
    listed = [entry["file"] for entry in meta["shards"]]
    for name in listed:
        if name not in on_disk:
            raise CacheError(f"{out_dir}: missing shard {name}")
    n_listed = sum(entry["n_sequences"] for entry in meta["shards"])
    if len(on_disk) != len(listed) or n_listed != meta["n_sequences"]:
        raise CacheError(
            f"{out_dir}: the metadata lists {len(listed)} shards with {n_listed} sequences, "
            f"but the folder has {len(on_disk)} shard files and n_sequences is "
            f"{meta['n_sequences']}"
        )
    for entry in meta["shards"]:
        check_shard(out_dir, meta, entry)
    return ActivationStore(out_dir, meta)


def check_shard(out_dir: Path, meta: dict, entry: dict) -> None:
    """Check a shard's size and safetensors header (keys, dtypes, shapes) against the
    metadata, without reading its data; raise CacheError naming the shard."""
    path = out_dir / entry["file"]
    if not path.is_file():
        raise CacheError(f"{out_dir}: missing shard {entry['file']}")
    size = path.stat().st_size
    n = entry["n_sequences"]
    expected = {
        name: (SAFETENSORS_DTYPES[meta["dtype"]], [n, *meta["shapes"][name][1:]])
        for name in meta["hook_names"]
    }
    expected[TOKENS_KEY] = ("I64", [n, meta["context_size"]])
    try:
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > size:
                raise ValueError("bad header length")
            header = json.loads(f.read(header_len))
        header.pop("__metadata__", None)
        found = {key: (info["dtype"], info["shape"]) for key, info in header.items()}
        end = 8 + header_len + max(info["data_offsets"][1] for info in header.values())
    except (ValueError, KeyError, TypeError, AttributeError, struct.error) as error:
        raise CacheError(f"{out_dir}: corrupt shard {path.name} (bad header: {error})") from None
    if found != expected:
        raise CacheError(
            f"{out_dir}: corrupt shard {path.name}: holds {found}, the metadata says {expected}"
        )
    if size != entry["bytes"] or size != end:
        raise CacheError(
            f"{out_dir}: corrupt shard {path.name}: {size} bytes, expected {entry['bytes']}"
        )


class ActivationStore:
    """A complete, validated cache on disk (made by ``open_cache``); reads shards lazily."""

    def __init__(self, path: Path, metadata: dict[str, Any]) -> None:
        self.path = path
        self.metadata = metadata

    def __repr__(self) -> str:
        return f"ActivationStore({str(self.path)!r}, {self.n_tokens} tokens, {self.hook_names})"

    @property
    def n_tokens(self) -> int:
        """Tokens cached (sequences x context size)."""
        return self.metadata["n_tokens"]

    @property
    def hook_names(self) -> list[str]:
        """The hook points cached."""
        return list(self.metadata["hook_names"])

    @property
    def shard_paths(self) -> list[Path]:
        """The shard files, in order."""
        return [self.path / entry["file"] for entry in self.metadata["shards"]]

    def iter_batches(
        self,
        hook_name: str,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        device: str | torch.device = "cpu",
        loop: bool = False,
        dtype: torch.dtype | None = None,
    ) -> Iterator[Tensor]:
        """Batches [batch_size, d] of per-token activations at ``hook_name`` (trailing
        dimensions flattened: ``d`` = ``metadata["d"]`` for the first hook), one shard in memory
        at a time.

        Each epoch yields every token exactly once; with ``shuffle``, shards come in a random
        order and tokens are shuffled within each shard (seeded by ``seed``). ``loop=False``:
        one epoch, the last batch may be smaller. ``loop=True``: epochs repeat forever, each
        reshuffled, and every batch is full. ``dtype``: convert (None: the stored dtype).
        """
        self._check_hook(hook_name)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        generator = torch.Generator().manual_seed(seed)
        paths = self.shard_paths
        leftover: Tensor | None = None
        while True:
            order = (
                torch.randperm(len(paths), generator=generator) if shuffle else range(len(paths))
            )
            for i in order:
                acts = self._read(paths[int(i)], hook_name).flatten(0, 1).flatten(1)
                if shuffle:
                    acts = acts[torch.randperm(len(acts), generator=generator)]
                if leftover is not None:
                    acts = torch.cat([leftover, acts])
                n_full = len(acts) // batch_size * batch_size
                for start in range(0, n_full, batch_size):
                    yield acts[start : start + batch_size].to(device=device, dtype=dtype)
                leftover = acts[n_full:] if n_full < len(acts) else None
            if not loop:
                if leftover is not None:
                    yield leftover.to(device=device, dtype=dtype)
                return

    def load(self, hook_name: str) -> Tensor:
        """All activations at ``hook_name`` [n_seq, ctx, ...] in memory (small caches only)."""
        self._check_hook(hook_name)
        return torch.cat([self._read(path, hook_name) for path in self.shard_paths])

    def tokens(self) -> Tensor:
        """The cached token ids [n_seq, ctx] (int64)."""
        return torch.cat([self._read(path, TOKENS_KEY) for path in self.shard_paths])

    def _check_hook(self, hook_name: str) -> None:
        if hook_name not in self.metadata["hook_names"]:
            raise CacheError(
                f"{self.path}: hook {hook_name!r} is not cached; it holds {self.hook_names}"
            )

    def _read(self, path: Path, key: str) -> Tensor:
        try:
            with safe_open(path, framework="pt") as f:
                return f.get_tensor(key)
        except (OSError, RuntimeError, ValueError) as error:  # changed since open_cache
            raise CacheError(f"{self.path}: cannot read shard {path.name} ({error})") from None
