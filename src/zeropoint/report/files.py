"""Atomic file writes: a file is either its old self or completely new, never half written.

Everything is written to a temporary file in the destination's directory and moved into place
with os.replace (atomic on POSIX and Windows within one file system); on any error the temporary
file is removed and the destination is untouched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def check_writable_dir(directory: Path) -> Path:
    """Create ``directory`` if needed; raise a clear error if it cannot be written to."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PermissionError(
            f"cannot create output directory {directory}: {exc.strerror}"
        ) from exc
    if not os.access(directory, os.W_OK):
        raise PermissionError(f"output directory {directory} is not writable")
    return directory


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` when the block succeeds."""
    target = Path(path)
    check_writable_dir(target.parent if str(target.parent) else Path("."))
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
