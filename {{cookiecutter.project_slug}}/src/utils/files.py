"""The project's files: its root (``PROJECT_ROOT``, defined here once for ``src``), paths
relative to it, and atomic writes (a file appears complete or not at all, never truncated)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def write_atomic(path: Path, write: Callable[[str], object]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it into place.

    An interrupted run (Ctrl-C, kill, full disk) leaves the old file or none, plus no temp file
    when Python gets to clean up. The file is world-readable: caches may be shared.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """`write_atomic` for text, flushed to disk before the rename."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    write_atomic(path, write)


def project_path(path: str | Path) -> str:
    """``path`` relative to the project root when inside it, else absolute (for logs)."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)
