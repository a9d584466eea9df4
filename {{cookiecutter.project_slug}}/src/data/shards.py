"""Sharded activation caching: one cache's sequences split into N shards that N tasks (a
SLURM array, local processes, Modal) write independently, then merged into one cache.

A task writes only its own files into the cache folder: the safetensors files of its
sequences (``shard_{k:05d}.safetensors``, numbered as in the whole cache) and its record
``task_{i:05d}.json`` (the cache's settings and shapes, and the files done), each atomically
(a temporary file, then a rename), the record after each file. A killed task, run again,
keeps its complete files and computes the rest. ``merge_shards`` checks every record and file
against the others and writes ``metadata.json``; the folder then reads like the cache one
process writes (``open_cache``, the same metadata fields) and holds the same values. Its files
follow the one-process layout (``shard_tokens`` per file), split once more where a task's
range starts inside a file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from src.data.activation_cache import (
    _VOLATILE,
    _check_arguments,
    _describe_shapes,
    _new_metadata,
    _settings,
    _shard_buffers,
    check_settings,
)
from src.data.activation_store import (
    METADATA,
    SETTINGS,
    SHARD,
    TOKENS_KEY,
    CacheError,
    check_shard,
    open_cache,
    read_metadata,
    write_metadata,
)
from src.data.cache_writer import Capture, ShardWriter

TASK = "task_{:05d}.json"


def check_n_shards(n_shards: int, n_sequences: int) -> None:
    """ValueError unless ``n_shards`` is 1 to ``n_sequences`` (each shard holds whole
    sequences)."""
    if n_shards < 1:
        raise ValueError(f"--n-shards must be >= 1, got {n_shards}")
    if n_shards > n_sequences:
        raise ValueError(
            f"--n-shards {n_shards} is more than the {n_sequences} sequences to cache: "
            f"at most {n_sequences} (a shard holds whole sequences)"
        )


def shard_files(n_sequences: int, shard_sequences: int, n_shards: int) -> list[list[tuple]]:
    """Per shard, its files as ``(file index, first sequence, end sequence)``.

    Shard ``i`` holds sequences ``i * n // N`` to ``(i + 1) * n // N`` (sizes differ by at
    most one); files hold ``shard_sequences`` each, as in a one-process cache, and also end
    where a shard does. The plan depends on the three numbers only, so every task and the
    merge compute the same one.
    """
    check_n_shards(n_shards, n_sequences)
    starts = [i * n_sequences // n_shards for i in range(n_shards)]
    bounds = sorted({*range(0, n_sequences, shard_sequences), *starts, n_sequences})
    plan: list[list[tuple]] = [[] for _ in range(n_shards)]
    shard = 0
    for index, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        while shard + 1 < n_shards and lo >= starts[shard + 1]:
            shard += 1
        plan[shard].append((index, lo, hi))
    return plan


def cache_shard(
    model: Any,
    tokens: Tensor,
    hook_names: list[str],
    out_dir: str | Path,
    index: int,
    n_shards: int,
    *,
    batch_size: int = 32,
    dtype: torch.dtype | None = None,
    shard_tokens: int = 2**16,
    metadata: dict[str, Any] | None = None,
    progress: bool = False,
) -> Path:
    """Write shard ``index`` of ``n_shards`` of the cache that ``cache_activations`` would
    write with the same arguments (``tokens`` is the whole cache's [n_seq, ctx]: every task
    gets the same tokens and stores its slice); return its record's path.

    Resumes a killed run of the same shard; returns at once when the shard is complete or the
    folder holds the merged cache. Raises CacheError, naming the field, when the folder holds
    shards (or a cache) made with other settings or another ``n_shards``.
    """
    out_dir = Path(out_dir)
    dtype = _check_arguments(model, tokens, hook_names, batch_size, shard_tokens, dtype)
    tokens = tokens.cpu().contiguous()
    n_seq, ctx = tokens.shape
    if not 0 <= index < n_shards:
        raise ValueError(f"--shard {index} is out of range: 0-{n_shards - 1} for {n_shards} shards")
    shard_seqs = max(1, shard_tokens // ctx)
    files = shard_files(n_seq, shard_seqs, n_shards)[index]
    metadata = metadata or {}
    settings = _settings(model, tokens, hook_names, dtype, shard_seqs, metadata)
    record_path = out_dir / TASK.format(index)
    if (out_dir / METADATA).exists():  # merged already (or a one-process cache)
        meta = read_metadata(out_dir)
        check_settings(out_dir, meta, settings)
        if meta["complete"]:
            return out_dir / METADATA
        raise CacheError(f"{out_dir}: holds an incomplete one-process cache; resume that instead")
    record = _resume_record(out_dir, index, n_shards, settings, files)
    if record is None:
        record = _new_metadata(settings, metadata.get("command", " ".join(sys.argv)))
        record["task"] = {"index": index, "n_shards": n_shards}
    n_tokens = (files[-1][2] - files[0][1]) * ctx
    if record["tokens_done"] == n_tokens:
        return record_path

    record["complete"] = False
    done = {entry["file"] for entry in record["shards"]}
    bar = tqdm(
        total=n_tokens,
        initial=record["tokens_done"],
        unit="tok",
        unit_scale=True,
        desc=f"shard {index}/{n_shards}",
        disable=not progress,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    write_metadata(out_dir, record, record_path.name)
    writer = ShardWriter(out_dir, record, record_path.name, n_tokens)
    ok = False
    try:
        with torch.no_grad(), Capture(model.hook_dict, hook_names) as capture:
            for file_index, lo, hi in files:
                if SHARD.format(file_index) in done:
                    continue
                buffers = _shard_buffers(model, capture, tokens, lo, hi, record, batch_size, bar)
                if record["shapes"] is None:
                    _describe_shapes(record, buffers, n_seq)
                writer.put(file_index, buffers | {TOKENS_KEY: tokens[lo:hi].clone()})
        ok = True
    finally:
        bar.close()
        writer.close(raise_error=ok)  # a killed task still finishes the file it queued
    return record_path


def _resume_record(
    out_dir: Path, index: int, n_shards: int, settings: dict, files: list[tuple]
) -> dict[str, Any] | None:
    """The record of shard ``index`` to continue (None: none yet), after checking that the
    folder's other shards agree (settings, ``n_shards``) and removing the temporary files a
    killed run of this shard left. Its record keeps the files that are complete; the others
    (not yet recorded, missing, damaged) are computed again and replaced."""
    record = None
    for path in sorted(out_dir.glob("task_*.json")):
        other = _read_record(path)
        if other["task"]["n_shards"] != n_shards:
            raise CacheError(
                f"{out_dir}: holds shards of a split into {other['task']['n_shards']} "
                f"({path.name}), not {n_shards}; use --n-shards {other['task']['n_shards']} "
                "or delete the folder"
            )
        check_settings(out_dir, other, settings)
        if other["task"]["index"] == index:
            record = other
    mine = {SHARD.format(file_index) for file_index, _, _ in files}
    for name in [*mine, TASK.format(index)]:
        for tmp in out_dir.glob(f".{name}.*.tmp"):  # only this shard's: others may be running
            tmp.unlink(missing_ok=True)
    kept = []
    for entry in record["shards"] if record else []:
        try:
            if entry["file"] in mine:
                check_shard(out_dir, record, entry)
                kept.append(entry)
        except CacheError:
            pass  # missing or damaged: computed again
    if record is not None:
        record["shards"] = kept
        record["tokens_done"] = sum(entry["n_sequences"] for entry in kept) * record["context_size"]
    return record


def _read_record(path: Path) -> dict[str, Any]:
    """A shard task's record; CacheError when unreadable."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CacheError(f"{path}: unreadable shard record ({error})") from None
    task = record.get("task") if isinstance(record, dict) else None
    if not isinstance(task, dict) or not {"index", "n_shards"} <= task.keys():
        raise CacheError(f"{path}: not a shard record (no task index and n_shards)")
    return record


def merge_shards(out_dir: str | Path, command: str | None = None) -> Path:
    """Check the shards in ``out_dir`` and write the merged cache's ``metadata.json`` (then
    remove the shard records); return ``out_dir``.

    Checked: every shard 0..N-1 present and complete, all made with the same settings (model,
    hooks, dataset, seed, tokens, dtype, ...) and shapes, each listing the files the plan
    gives it, each file's header (dtype, shapes, size) as recorded, no stray files. Raises
    CacheError naming the shard (and file) and what is wrong; writes nothing then. A folder
    merged already is checked (``open_cache``) and left as it is.
    """
    out_dir = Path(out_dir)
    paths = sorted(out_dir.glob("task_*.json"))
    if not paths:
        if (out_dir / METADATA).exists():
            open_cache(out_dir)
            return out_dir
        raise CacheError(f"{out_dir}: no shards to merge (no task_*.json)")
    records = [_read_record(path) for path in paths]
    first = records[0]
    n_shards = first["task"]["n_shards"]
    by_index = {}
    for path, record in zip(paths, records, strict=True):
        if record["task"]["n_shards"] != n_shards:
            raise CacheError(
                f"{out_dir}: {path.name} is a shard of a split into "
                f"{record['task']['n_shards']}, {paths[0].name} of one into {n_shards}"
            )
        by_index[record["task"]["index"]] = record
    plan = shard_files(first["n_sequences"], first["shard_sequences"], n_shards)
    keys = list(SETTINGS) + [k for k in first if k not in SETTINGS and k not in _NOT_SETTINGS]
    entries = []
    for index in range(n_shards):
        entries += _check_shard_task(out_dir, by_index.get(index), index, plan, first, keys)
    planned = {entry["file"] for entry in entries}
    stray = sorted(p.name for p in out_dir.glob("shard_*.safetensors") if p.name not in planned)
    if stray:
        raise CacheError(f"{out_dir}: file {stray[0]} belongs to no shard; delete it")
    meta = {key: value for key, value in first.items() if key != "task"}
    meta |= {"tokens_done": meta["n_tokens"], "complete": True, "shards": entries}
    if command is not None:
        meta["command"] = command
    write_metadata(out_dir, meta)
    for path in paths:
        path.unlink()
    return out_dir


# record fields that are not settings: they may differ between shards
_NOT_SETTINGS = {*_VOLATILE, "shapes", "shape", "d", "tokens_done", "complete", "shards", "task"}


def _check_shard_task(
    out_dir: Path,
    record: dict | None,
    index: int,
    plan: list[list[tuple]],
    first: dict,
    keys: list[str],
) -> list[dict]:
    """The file entries of shard ``index`` after checking it; CacheError naming it if not."""
    n_shards = len(plan)
    where = f"{out_dir}: shard {index} of {n_shards} ({TASK.format(index)})"
    rerun = f"run it again: --shard {index} --n-shards {n_shards}"
    if record is None:
        raise CacheError(f"{where} is missing; {rerun}")
    for key in keys:
        if record.get(key) != first.get(key):
            raise CacheError(
                f"{where} was made with a different {key}: {record.get(key)!r}, "
                f"shard {first['task']['index']} has {first.get(key)!r}"
            )
    files = plan[index]
    n_tokens = (files[-1][2] - files[0][1]) * record["context_size"]
    if not record["complete"] or record["tokens_done"] != n_tokens:
        raise CacheError(
            f"{where} is incomplete ({record['tokens_done']} of {n_tokens} tokens); {rerun}"
        )
    if record["shapes"] != first["shapes"]:
        raise CacheError(
            f"{where} has activations of shapes {record['shapes']}, "
            f"shard {first['task']['index']} {first['shapes']}"
        )
    entries = sorted(record["shards"], key=lambda entry: entry["file"])
    expected = [(SHARD.format(k), hi - lo) for k, lo, hi in files]
    if [(entry["file"], entry["n_sequences"]) for entry in entries] != expected:
        raise CacheError(
            f"{where} lists files {[entry['file'] for entry in entries]}, "
            f"not {[name for name, _ in expected]}; {rerun}"
        )
    for entry in entries:
        try:
            check_shard(out_dir, record, entry)
        except CacheError as error:
            what = str(error).removeprefix(f"{out_dir}: ")
            raise CacheError(f"{where}: {what}; {rerun}") from None
    return entries
