"""Activation caches: a model's activations at chosen hook points, stored as safetensors shards.

A cache is a folder (by default ``data/activations/<cache_name(...)>``) holding
``shard_00000.safetensors``, ``shard_00001.safetensors``, ... (keys: each hook name ->
``[n_seq_in_shard, ctx, *act_shape]`` and ``"tokens"`` -> ``[n_seq_in_shard, ctx]`` int64)
and ``metadata.json`` (model, hook names, dataset, n tokens, dtype, shapes, seed, git commit,
created, command, how far it got).

Writing streams: shards are filled one at a time and written by a background thread, so
memory stays flat however many tokens are cached. Every file is written to a temporary name
and renamed; the metadata is rewritten after each shard, so an interrupted run leaves complete
shards plus metadata that says how far it got, and calling ``cache_activations`` again with the
same settings resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import queue
import re
import struct
import sys
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from src.utils.files import write_atomic, write_text_atomic

METADATA = "metadata.json"
SHARD = "shard_{:05d}.safetensors"
TOKENS_KEY = "tokens"

# Fields that must agree for a run to resume into an existing cache (and extra metadata keys
# the caller passes, except _VOLATILE ones), in the order they are checked.
_SETTINGS = (
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
_VOLATILE = {"command", "created", "git_commit", "git_dirty"}
_SAFETENSORS_DTYPES = {
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float64": "F64",
    "int64": "I64",
}
_LEVELS = itertools.count(start=-(2 * 10**9), step=-1)  # hook levels of our own


class CacheError(ValueError):
    """A cache that cannot be used: missing, incomplete, corrupt, or made with other settings."""


def cache_name(model: str, layer: int, dataset: str, n_tokens: int) -> str:
    """The cache folder's name, ``{model}_{layer}_{dataset}_{n_tokens}``, with any character
    outside ``[A-Za-z0-9._-]`` replaced by ``-`` (Hugging Face ids contain ``/``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", f"{model}_{layer}_{dataset}_{n_tokens}")


# --- writing ------------------------------------------------------------------------------


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
    if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.dtype != torch.long:
        raise ValueError("tokens must be a [n_seq, ctx] torch.long tensor")
    if tokens.numel() == 0:
        raise ValueError("tokens is empty: nothing to cache")
    if not hook_names or len(set(hook_names)) != len(hook_names):
        raise ValueError(f"hook_names must be a non-empty list without repeats: {hook_names}")
    if batch_size < 1 or shard_tokens < 1:
        raise ValueError("batch_size and shard_tokens must be >= 1")
    points = model.hook_dict  # resolved once: a bridge resolves aliases at every access
    unknown = [name for name in hook_names if name not in points]
    if unknown:
        raise ValueError(f"unknown hook name(s) {unknown} for this model")
    param = next(model.parameters())
    dtype = dtype or param.dtype
    if not dtype.is_floating_point or _dtype_name(dtype) not in _SAFETENSORS_DTYPES:
        raise ValueError(f"cannot store activations as {dtype}; use float32, bfloat16, ...")
    tokens = tokens.cpu().contiguous()
    n_seq, ctx = tokens.shape
    shard_seqs = max(1, shard_tokens // ctx)

    settings = _settings(model, tokens, hook_names, dtype, shard_seqs, metadata or {})
    meta = _resume_metadata(out_dir, settings)
    if meta is None:
        meta = _new_metadata(settings, (metadata or {}).get("command", " ".join(sys.argv)))
    elif meta["complete"]:
        return out_dir

    first_shard = len(meta["shards"])
    n_shards = math.ceil(n_seq / shard_seqs)
    bar = tqdm(
        total=n_seq * ctx,
        initial=meta["tokens_done"],
        unit="tok",
        unit_scale=True,
        desc="caching",
        disable=not progress,
    )
    writer = _ShardWriter(out_dir, meta)
    ok = False
    try:
        with torch.no_grad(), _Capture(points, hook_names) as capture:
            for index in range(first_shard, n_shards):
                lo, hi = index * shard_seqs, min(n_seq, (index + 1) * shard_seqs)
                buffers: dict[str, Tensor] = {}
                for start in range(lo, hi, batch_size):
                    end = min(hi, start + batch_size)
                    acts = capture.run(model, tokens[start:end].to(param.device))
                    for name in hook_names:
                        if name not in buffers:
                            buffers[name] = _new_buffer(meta, name, acts[name], hi - lo, dtype)
                        buffers[name][start - lo : end - lo].copy_(acts[name])
                    bar.update((end - start) * ctx)
                if meta["shapes"] is None:  # first shard of a new cache: describe it
                    _describe_shapes(meta, buffers, n_seq)
                    out_dir.mkdir(parents=True, exist_ok=True)
                    _write_metadata(out_dir, meta)
                writer.put(index, buffers | {TOKENS_KEY: tokens[lo:hi].clone()})
        ok = True
    finally:
        bar.close()
        writer.close(raise_error=ok)  # an interrupted run still finishes the shards it queued
    return out_dir


def _settings(
    model: Any,
    tokens: Tensor,
    hook_names: list[str],
    dtype: torch.dtype,
    shard_seqs: int,
    metadata: dict[str, Any],
) -> dict[str, Any]:
    """What must agree for a run to resume into a cache: ``_SETTINGS`` and the caller's
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
        "dtype": _dtype_name(dtype),
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


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _new_buffer(meta: dict, name: str, act: Tensor, n_rows: int, dtype: torch.dtype) -> Tensor:
    """An empty shard buffer for ``name``; on resume, the shape is checked against the cache."""
    shape = [n_rows, *act.shape[1:]]
    if meta["shapes"] is not None and meta["shapes"][name][1:] != shape[1:]:
        raise CacheError(
            f"shape: the cache holds {name} of shape {meta['shapes'][name][1:]} per sequence, "
            f"this model gives {shape[1:]}"
        )
    return torch.empty(shape, dtype=dtype)


def _describe_shapes(meta: dict, buffers: dict[str, Tensor], n_seq: int) -> None:
    meta["shapes"] = {name: [n_seq, *buf.shape[1:]] for name, buf in buffers.items()}
    meta["shape"] = meta["shapes"][meta["hook_names"][0]]
    meta["d"] = math.prod(meta["shape"][2:])


class _CaptureDone(Exception):
    """Raised by the last capture hook: the rest of the forward is not needed."""


class _Capture:
    """Forward hooks at ``names`` that keep the activations and stop the forward once all
    have fired (as in ``src.analysis.forward``); only these hooks are removed at exit."""

    def __init__(self, points: dict[str, Any], names: list[str]) -> None:
        self.points, self.names, self.store = points, names, {}
        self.level = next(_LEVELS)

    def __enter__(self) -> _Capture:
        for name in self.names:
            self.points[name].add_hook(self._hook(name), level=self.level)
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self.names:
            self.points[name].remove_hooks("fwd", level=self.level)

    def _hook(self, name: str) -> Any:
        def hook(act: Tensor, hook: Any) -> None:
            self.store[name] = act.detach()
            if len(self.store) == len(self.names):
                raise _CaptureDone

        return hook

    def run(self, model: Any, tokens: Tensor) -> dict[str, Tensor]:
        self.store = {}
        try:
            model(tokens)
        except _CaptureDone:
            return self.store
        missing = [name for name in self.names if name not in self.store]
        raise RuntimeError(f"hook(s) {missing} did not fire in the forward pass")


class _ShardWriter:
    """Writes shards (atomically, then metadata.json) on a background thread, so disk writes
    overlap the next forwards. At most one full shard waits in the queue: memory stays flat.
    The thread is not a daemon: a shard being written is finished even on Ctrl-C."""

    def __init__(self, out_dir: Path, meta: dict) -> None:
        self.out_dir, self.meta = out_dir, meta
        self.error: BaseException | None = None
        self.queue: queue.Queue = queue.Queue(maxsize=1)
        self.thread = threading.Thread(target=self._run, name="shard-writer")
        self.thread.start()

    def put(self, index: int, tensors: dict[str, Tensor]) -> None:
        self._raise()
        self.queue.put((index, tensors))

    def close(self, raise_error: bool = True) -> None:
        self.queue.put(None)
        self.thread.join()
        if raise_error:
            self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error  # e.g. OSError: no space left on device

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is None:  # after an error, drain the queue so put() never blocks
                try:
                    self._write(*item)
                except BaseException as error:
                    self.error = error

    def _write(self, index: int, tensors: dict[str, Tensor]) -> None:
        path = self.out_dir / SHARD.format(index)

        def write(tmp: str) -> None:
            save_file(tensors, tmp)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        write_atomic(path, write)
        n = len(tensors[TOKENS_KEY])
        meta = self.meta
        meta["shards"].append({"file": path.name, "n_sequences": n, "bytes": path.stat().st_size})
        meta["tokens_done"] += n * meta["context_size"]
        meta["complete"] = meta["tokens_done"] == meta["n_tokens"]
        _write_metadata(self.out_dir, meta)


def _write_metadata(out_dir: Path, meta: dict) -> None:
    write_text_atomic(out_dir / METADATA, json.dumps(meta, indent=2) + "\n")


def _read_metadata(out_dir: Path) -> dict[str, Any]:
    path = out_dir / METADATA
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CacheError(f"{out_dir}: no activation cache here (no {METADATA})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CacheError(f"{path}: unreadable metadata ({error})") from None
    if not isinstance(meta, dict):
        raise CacheError(f"{path}: metadata must be a JSON object")
    needed = (*_SETTINGS, "shapes", "tokens_done", "complete", "shards")
    missing = [key for key in needed if key not in meta]
    if missing:
        raise CacheError(f"{path}: metadata lacks field(s) {missing}")
    return meta


def _resume_metadata(out_dir: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The metadata of the cache in ``out_dir`` to continue (None: start a new one), after
    checking its settings and shards and removing what an interrupted run left behind."""
    if not (out_dir / METADATA).exists():
        if out_dir.is_dir() and any(out_dir.glob("shard_*.safetensors")):
            raise CacheError(
                f"{out_dir}: has shard files but no {METADATA}; delete the folder to start over"
            )
        return None
    meta = _read_metadata(out_dir)
    keys = list(_SETTINGS) + [k for k in settings if k not in _SETTINGS]
    for key in keys:
        if meta.get(key) != settings.get(key):
            if key == "tokens_sha256":
                what = "different token ids (tokens_sha256)"
            else:
                what = f"a different {key} ({meta.get(key)!r}, now {settings.get(key)!r})"
            raise CacheError(
                f"{out_dir}: holds a cache made with {what}; delete it or choose another folder"
            )
    for tmp in out_dir.glob(".*.tmp"):  # left by a killed run
        tmp.unlink(missing_ok=True)
    listed = {entry["file"] for entry in meta["shards"]}
    for shard in out_dir.glob("shard_*.safetensors"):  # written, but not yet in the metadata
        if shard.name not in listed:
            shard.unlink()
    for entry in meta["shards"]:
        _check_shard(out_dir, meta, entry)
    return meta


# --- reading ------------------------------------------------------------------------------


def open_cache(out_dir: str | Path, *, expect: dict[str, Any] | None = None) -> ActivationStore:
    """Open the cache in ``out_dir``, checking its metadata against the shards on disk.

    ``expect``: metadata values the caller needs, e.g. ``{"model": "toy-induction",
    "hook_names": ["blocks.0.hook_resid_pre"]}`` (for ``hook_names``, the listed hooks must be
    cached; other keys must be equal). Raises CacheError saying what is wrong: no cache,
    an incomplete one, a field that differs from ``expect`` (named), a missing or corrupt
    shard (named), or shard files that do not match the metadata.
    """
    out_dir = Path(out_dir)
    meta = _read_metadata(out_dir)
    for key, wanted in (expect or {}).items():
        if isinstance(wanted, torch.dtype):
            wanted = _dtype_name(wanted)
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
        _check_shard(out_dir, meta, entry)
    return ActivationStore(out_dir, meta)


def _check_shard(out_dir: Path, meta: dict, entry: dict) -> None:
    """Check a shard's size and safetensors header (keys, dtypes, shapes) against the
    metadata, without reading its data; raise CacheError naming the shard."""
    path = out_dir / entry["file"]
    if not path.is_file():
        raise CacheError(f"{out_dir}: missing shard {entry['file']}")
    size = path.stat().st_size
    n = entry["n_sequences"]
    expected = {
        name: (_SAFETENSORS_DTYPES[meta["dtype"]], [n, *meta["shapes"][name][1:]])
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
