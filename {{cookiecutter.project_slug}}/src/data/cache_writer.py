"""The two halves of writing a cache: hooks that capture a forward's activations, and a
thread that writes finished shards (used by ``src.data.activation_cache``)."""

from __future__ import annotations

import itertools
import os
import queue
import threading
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import Tensor

from src.data.activation_store import METADATA, SHARD, TOKENS_KEY, write_metadata
from src.utils.files import write_atomic

_LEVELS = itertools.count(start=-(2 * 10**9), step=-1)  # hook levels of our own


class CaptureDone(Exception):
    """Raised by the last capture hook: the rest of the forward is not needed."""


class Capture:
    """Forward hooks at ``names`` that keep the activations and stop the forward once all
    have fired (as in ``src.analysis.forward``); only these hooks are removed at exit."""

    def __init__(self, points: dict[str, Any], names: list[str]) -> None:
        self.points, self.names, self.store = points, names, {}
        self.level = next(_LEVELS)

    def __enter__(self) -> Capture:
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
                raise CaptureDone

        return hook

    def run(self, model: Any, tokens: Tensor) -> dict[str, Tensor]:
        self.store = {}
        try:
            model(tokens)
        except CaptureDone:
            return self.store
        missing = [name for name in self.names if name not in self.store]
        raise RuntimeError(f"hook(s) {missing} did not fire in the forward pass")


class ShardWriter:
    """Writes shards (atomically, then metadata.json) on a background thread, so disk writes
    overlap the next forwards. At most one full shard waits in the queue: memory stays flat.
    The thread is not a daemon: a shard being written is finished even on Ctrl-C."""

    def __init__(
        self, out_dir: Path, meta: dict, name: str = METADATA, n_tokens: int | None = None
    ) -> None:
        """``meta`` is written to ``out_dir / name`` after each shard, ``complete`` once it
        lists ``n_tokens`` tokens (default: ``meta["n_tokens"]``; a shard task's are fewer)."""
        self.out_dir, self.meta, self.name = out_dir, meta, name
        self.n_tokens = meta["n_tokens"] if n_tokens is None else n_tokens
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
        meta["complete"] = meta["tokens_done"] == self.n_tokens
        write_metadata(self.out_dir, meta, self.name)
