"""Checking that the ranks agree before anything is reduced.

Every synchronisation first compares a *fingerprint* of what each rank is about to reduce — for
every observer its name, type, scheme and options; for a model also the names and values of its
parameters and buffers (a digest each). Only a 32-byte digest of the fingerprint travels when the
ranks agree; when they do not, the full fingerprints are gathered and every rank raises the same
`RankMismatchError`, naming what differs and on which ranks. Nothing has been reduced by then, so
no statistics were mixed.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from zeropoint.distributed.ranks import Channel, RankMismatchError
from zeropoint.observers.base import Observer

#: At most this many differences are listed in a mismatch report.
MAX_REPORTED = 12


def observer_options(observer: Observer) -> dict[str, Any]:
    """The constructor options of an observer (what ``reset`` keeps), by name."""
    params = inspect.signature(type(observer).__init__).parameters
    return {
        name: getattr(observer, name)
        for name, p in params.items()
        if name not in ("self", "scheme") and p.kind is p.POSITIONAL_OR_KEYWORD
        and hasattr(observer, name)
    }  # fmt: skip


def observer_fingerprint(observer: Observer) -> dict[str, str]:
    """What two ranks' observers must share to be reduced together."""
    base = getattr(type(observer), "reduced_type", type(observer))
    options = observer_options(observer)
    return {
        "observer": f"{base.__module__}.{base.__qualname__}",
        "scheme": repr(observer.scheme),
        "options": ", ".join(f"{k}={v!r}" for k, v in sorted(options.items())),
    }


def tensor_digest(t: Tensor) -> str:
    """A digest of a tensor's dtype, shape and bytes."""
    h = hashlib.blake2b(digest_size=12)
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    data = t.detach().cpu().contiguous()
    if data.numel():
        h.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_fingerprint(model: nn.Module) -> dict[str, str]:
    """Every parameter and buffer of ``model`` by name: a digest of its value. Ranks that convert
    a model independently must hold the same weights, or their converted models would differ."""
    out = {}
    for kind, items in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in items:
            out[f"{kind} {name!r}"] = tensor_digest(t)
    return out


def agree(channel: Channel, fingerprint: Mapping[str, Mapping[str, str]], what: str) -> None:
    """Raise `RankMismatchError` on every rank unless every rank has the same ``fingerprint``
    (sections → entry names → descriptions)."""
    text = json.dumps(fingerprint, sort_keys=True).encode()
    digest = torch.frombuffer(bytearray(hashlib.sha256(text).digest()), dtype=torch.uint8)
    digests = channel.all_gather(digest, f"{what} (comparing the ranks' configurations)")
    if all(torch.equal(d, digests[0]) for d in digests):
        return
    texts = channel.all_gather_bytes(text, f"{what} (gathering the differing configurations)")
    prints = [json.loads(t) for t in texts]
    raise RankMismatchError(f"{what}: the ranks differ\n" + "\n".join(differences(prints)))


def differences(prints: list[dict[str, dict[str, Any]]]) -> list[str]:
    """Human-readable differences between the ranks' fingerprints (rank by rank)."""
    lines: list[str] = []
    sections = sorted({s for p in prints for s in p})
    for section in sections:
        entries = [p.get(section, {}) for p in prints]
        names = sorted({n for e in entries for n in e})
        for name in names:
            present = [r for r, e in enumerate(entries) if name in e]
            if len(present) < len(entries):
                absent = [r for r in range(len(entries)) if r not in present]
                lines.append(f"  {section} {name}: on ranks {present}, missing on ranks {absent}")
                continue
            values = [entries[r][name] for r in present]
            if all(v == values[0] for v in values):
                continue
            if isinstance(values[0], dict):
                keys = sorted({k for v in values for k in v})
                for key in keys:
                    got = [v.get(key) for v in values]
                    if any(g != got[0] for g in got):
                        by_rank = "; ".join(f"rank {r}: {g}" for r, g in enumerate(got))
                        lines.append(f"  {section} {name}: {key} differs ({by_rank})")
            else:
                groups: dict[str, list[int]] = {}
                for r, v in enumerate(values):
                    groups.setdefault(str(v), []).append(r)
                split = " vs ".join(f"ranks {g}" for g in groups.values())
                lines.append(f"  {section} {name}: differs ({split})")
    if len(lines) > MAX_REPORTED:
        lines = [*lines[:MAX_REPORTED], f"  ... and {len(lines) - MAX_REPORTED} more"]
    return lines or ["  (the fingerprints differ only in their encoding)"]
