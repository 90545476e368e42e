"""Atomic, durable file writes: a file is either its old self or completely new, never half
written — also across a crash or power loss.

Everything is written to a temporary file in the destination's directory (named
``.<name>.<random>.tmp``), flushed to disk (fsync), and moved into place with os.replace, which
is atomic on POSIX and Windows within one file system; the directory is then fsynced so that the
rename itself survives a power loss. On any error the temporary file is removed and the
destination is untouched. A process killed mid-write (kill -9) leaves its temporary file behind:
`is_temporary` recognises such files so that the next writer can remove them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def check_writable_dir(directory: Path) -> Path:
    """Create ``directory`` if needed; raise a clear error if it cannot be written to."""
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"{directory} exists and is a file, not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PermissionError(
            f"cannot create output directory {directory}: {exc.strerror}"
        ) from exc
    if not os.access(directory, os.W_OK):
        raise PermissionError(f"output directory {directory} is not writable")
    return directory


def fsync_file(path: Path) -> None:
    """Flush a closed file's data to disk."""
    fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    """Flush a directory's entries (renames, new and removed files) to disk. POSIX only: on
    Windows a directory cannot be opened, and NTFS journals its metadata itself."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_temporary(name: str, target: str) -> bool:
    """True if ``name`` is a temporary file that `atomic_path` creates for ``target`` (a name
    or a regular expression for names)."""
    return re.fullmatch(rf"\.(?:{target})\.[^/\\]+{re.escape(TEMP_SUFFIX)}", name) is not None


def _create_temporary(parent: Path, name: str) -> Path:
    # Created with mode 0o666 (less the umask) like any new file, not mkstemp's 0o600: the file
    # keeps these permissions after the rename.
    while True:
        tmp = parent / f".{name}.{secrets.token_hex(6)}{TEMP_SUFFIX}"
        try:
            fd = os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666
            )
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue
        os.close(fd)
        return tmp


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block succeeds, flush it to disk and
    move it onto ``path`` (then flush the directory entry)."""
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    check_writable_dir(parent)
    tmp_path = _create_temporary(parent, target.name)
    try:
        yield tmp_path
        fsync_file(tmp_path)
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    fsync_dir(parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


@contextlib.contextmanager
def locked(directory: Path, shared: bool = False) -> Iterator[None]:
    """Hold an advisory lock on ``directory`` for the block: exclusive for a writer, shared for
    readers (flock on the directory itself, so no lock file is left behind; the kernel releases
    it when the process dies, even by kill -9). A no-op where flock does not exist (Windows)
    or the file system does not support it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        except OSError as exc:  # a file system without locks (some network mounts)
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
