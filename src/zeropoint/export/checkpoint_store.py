"""A checkpoint directory on disk: written as one atomic unit, read back verified.

Layout (format version 2)::

    ckpt/
      encodings.json                  the document (`checkpoint_format.Document`); names the
                                      tensor file and records every tensor's dtype, shape, SHA-256
      model-<16 hex>.safetensors      the tensors; the name is a digest of the tensor table

Saving (the directory may hold an older checkpoint, of this format or of version 1):

1. the tensor file is written under a temporary name, fsynced, renamed to its content-derived
   name (a name the current checkpoint does not use, unless its tensors are identical), and the
   directory is fsynced;
2. ``encodings.json`` is written under a temporary name, fsynced and renamed over the old one
   (``os.replace``: atomic on POSIX and Windows) — the commit point — and the directory fsynced;
3. files the new document does not name are removed: the previous tensor file, version 1's
   ``model.safetensors``, and the temporaries of saves that were killed.

A process killed at any instant therefore leaves ``encodings.json`` naming either the old tensor
file (still present: nothing is deleted before the commit) or the new one (complete and on disk
before the commit). Until step 3 of the next successful save the directory may hold leftovers;
they are never read. A save that fails (a full disk, say) removes what it wrote and leaves the
old checkpoint as it was. A writer holds an exclusive flock on the directory and readers a
shared one, so concurrent saves do not remove each other's files.

Reading checks everything before anything is used: the document's schema and field types, its
digests, the tensor file's readability, that it holds exactly the tensors the table lists, and
each tensor's dtype, shape and SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from zeropoint.export.checkpoint_format import (
    FORMAT,
    TENSOR_FILE,
    VERSION,
    Document,
    TensorEntry,
    TensorTable,
    digest,
    digests,
    verify_digests,
)
from zeropoint.export.json_codec import TypeResolver, from_json, to_json
from zeropoint.report.files import (
    atomic_path,
    atomic_write_text,
    check_writable_dir,
    fsync_dir,
    is_temporary,
    locked,
)

ENCODINGS = "encodings.json"
LEGACY_TENSORS = "model.safetensors"  # format version 1
_OURS = r"model-[0-9a-f]{16}\.safetensors|model\.safetensors|encodings\.json"


def dtype_name(t: Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def tensor_sha256(t: Tensor) -> str:
    """SHA-256 of a tensor's bytes in row-major order (as safetensors stores them)."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    return hashlib.sha256(flat.view(torch.uint8).numpy().data).hexdigest()


def tensor_table(tensors: dict[str, Tensor]) -> TensorTable:
    """Dtype, shape and SHA-256 of every tensor, and the tensor file's name (from their digest)."""
    entries = {
        k: TensorEntry(dtype_name(t), tuple(t.shape), tensor_sha256(t))
        for k, t in sorted(tensors.items())
    }
    name = f"model-{digest(to_json(entries, dict[str, TensorEntry]))[:16]}.safetensors"
    return TensorTable(name, entries)


# --------------------------------------------------------------------------- writing


def write_checkpoint(directory: Path, doc: Document, tensors: dict[str, Tensor]) -> Path:
    """Write ``doc`` (its tensor table describing ``tensors``) and the tensors to ``directory``
    as one atomic unit (see the module docstring)."""
    raw = to_json(doc, Document)
    raw["sha256"] = digests(raw)
    text = json.dumps(raw, indent=1, ensure_ascii=False, allow_nan=False)
    directory = check_writable_dir(directory)
    name = doc.tensors.file
    with locked(directory):
        try:
            with atomic_path(directory / name) as tmp:
                save_file(tensors, str(tmp), metadata={"format": FORMAT, "version": str(VERSION)})
            atomic_write_text(directory / ENCODINGS, text)  # the commit point
        except BaseException as exc:
            if _committed_file(directory) != name:
                (directory / name).unlink(missing_ok=True)
            if isinstance(exc, OSError | SafetensorError):
                raise _write_error(directory, exc) from exc
            raise
        _remove_leftovers(directory, keep=name)
    return directory


def _write_error(directory: Path, exc: OSError | SafetensorError) -> OSError:
    """An OSError with the errno of the failure (safetensors reports it in its message)."""
    message = (
        f"could not write the checkpoint to {directory} ({exc}); the checkpoint that was "
        "there before, if any, is unchanged"
    )
    errno = exc.errno if isinstance(exc, OSError) else None
    found = re.search(r"os error (\d+)", str(exc))
    if errno is None and found:
        errno = int(found.group(1))
    return OSError(errno, message) if errno is not None else OSError(message)


def _committed_file(directory: Path) -> str | None:
    """The tensor file the current encodings.json names (None if it cannot be read)."""
    try:
        raw = json.loads((directory / ENCODINGS).read_text(encoding="utf-8"))
        return str(raw["tensors"]["file"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remove_leftovers(directory: Path, keep: str) -> None:
    """Remove the tensor files the committed document does not name and killed saves'
    temporaries (files of ours only: other files in the directory are left alone)."""
    removed = False
    for entry in os.scandir(directory):
        n = entry.name
        stale = TENSOR_FILE.fullmatch(n) or n == LEGACY_TENSORS or is_temporary(n, _OURS)
        if n != keep and stale and entry.is_file(follow_symlinks=False):
            os.unlink(entry.path)
            removed = True
    if removed:
        fsync_dir(directory)


# --------------------------------------------------------------------------- reading


def read_checkpoint(directory: Path, resolve: TypeResolver) -> tuple[Document, dict[str, Tensor]]:
    """The verified document and tensors of the checkpoint in ``directory``."""
    if not directory.exists():
        raise FileNotFoundError(f"no checkpoint at {directory}: the directory does not exist")
    if not directory.is_dir():
        raise NotADirectoryError(f"{directory} is a file, not a checkpoint directory")
    with locked(directory, shared=True):
        path = directory / ENCODINGS
        if not path.is_file():
            raise FileNotFoundError(
                f"no checkpoint in {directory}: it has no {ENCODINGS} (a first save that was "
                "interrupted leaves none)"
            )
        raw = _parse(path)
        try:
            doc: Document = from_json(raw, Document, "", resolve)
            verify_digests(raw, doc.sha256)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{path}: {exc}") from exc
        tensors = _read_tensors(directory, doc.tensors)
    return doc, tensors


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"the key {k!r} appears twice in one object")
        out[k] = v
    return out


def _parse(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_bytes().decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(
            f"{path} is not a zeropoint checkpoint (a JSON {type(raw).__name__}, not an object)"
        )
    if raw.get("format") != FORMAT:
        raise ValueError(f"{path} is not a zeropoint checkpoint (format {raw.get('format')!r})")
    version = raw.get("version")
    if version == 1:
        raise ValueError(
            f"{path} is a version 1 checkpoint (written by an older zeropoint, without "
            f"checksums); this zeropoint reads version {VERSION}: save the model again"
        )
    if version != VERSION:
        raise ValueError(f"{path} has version {version!r}; this zeropoint reads {VERSION}")
    return raw


def _read_tensors(directory: Path, table: TensorTable) -> dict[str, Tensor]:
    path = directory / table.file
    if not path.is_file():
        raise FileNotFoundError(
            f"the checkpoint in {directory} is incomplete: {ENCODINGS} names the tensor file "
            f"{table.file}, which is missing"
        )
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path} is not a readable safetensors file: {exc}") from exc
    for key in sorted(table.entries.keys() - tensors.keys()):
        raise ValueError(f"{path} lacks the tensor {key!r} that {ENCODINGS} lists")
    for key in sorted(tensors.keys() - table.entries.keys()):
        raise ValueError(f"{path} holds a tensor {key!r} that {ENCODINGS} does not list")
    for key, entry in table.entries.items():
        t = tensors[key]
        if dtype_name(t) != entry.dtype or tuple(t.shape) != entry.shape:
            raise ValueError(
                f"tensor {key!r} in {path} is {dtype_name(t)} {list(t.shape)}, but {ENCODINGS} "
                f"records {entry.dtype} {list(entry.shape)}"
            )
        if tensor_sha256(t) != entry.sha256:
            raise ValueError(
                f"tensor {key!r} in {path} does not match its recorded SHA-256: the file was "
                "changed or corrupted after saving"
            )
    return tensors
