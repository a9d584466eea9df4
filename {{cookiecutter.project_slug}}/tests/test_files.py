"""Atomic writes leave the old file or the complete new one, never a partial file."""

from pathlib import Path

import pytest

from src.utils.files import write_atomic, write_text_atomic


def test_interrupted_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    write_text_atomic(path, '{"complete": true}')

    def interrupted(tmp: str) -> None:
        Path(tmp).write_text('{"comp')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, interrupted)
    assert path.read_text() == '{"complete": true}'
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temp file left


def test_new_file_is_readable_by_others(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    write_atomic(path, lambda tmp: Path(tmp).write_bytes(b"\0" * 8))
    assert path.read_bytes() == b"\0" * 8 and path.stat().st_mode & 0o777 == 0o644
