"""Process groups as zeropoint uses them: who takes part, how long to wait, what went wrong.

Two kinds of communication:

* **Synchronisations** (`sync_observers`, `sync_model`, the one `zp.convert` runs): a handful of
  collectives on CPU tensors through a `Channel` — a gloo group over the same ranks (the group
  itself when it is gloo, else one created once per group, e.g. beside NCCL). Each starts with
  gloo's ``monitored_barrier``, so a rank that failed or never arrives is named by the others.
* **Per-step reductions** while training (QAT: batch-norm statistics, moving-average ranges, the
  first batch that initialises a learnable quantizer): through a `RankGroup`, on the tensors'
  own device with the group's own backend, like ``SyncBatchNorm`` (and in the same order on every
  rank, since every rank runs the same forward).

**Timeouts** are the process group's: ``dist.init_process_group(..., timeout=timedelta(s))``
bounds every collective here (torch's default is 30 minutes). A rank whose peer fails or stops
answering raises `RankFailureError` within that time — never a hang: a peer that exited is
noticed at once (its sockets close), one that hangs after the timeout.
"""

from __future__ import annotations

import datetime
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

T = TypeVar("T")


class RankFailureError(RuntimeError):
    """Another rank failed, exited, or did not arrive within the process group's timeout."""


class RankMismatchError(ValueError):
    """The ranks disagree on what they synchronise (configs, layers, observers, shapes)."""


def is_distributed(group: Any = None) -> bool:
    """True when a process group is initialised and ``group`` (None: the default one) has more
    than one rank — the condition under which zeropoint synchronises statistics."""
    return bool(dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1)


def group_timeout(group: Any = None) -> datetime.timedelta:
    """The timeout the process group's collectives use (``init_process_group(timeout=...)``)."""
    pg = group if group is not None else dist.distributed_c10d._get_default_group()
    for device in (torch.device("cpu"), torch.device("cuda")):
        try:
            timeout = pg._get_backend(device).options._timeout
        except (RuntimeError, AttributeError, ValueError):
            continue
        if isinstance(timeout, datetime.timedelta):
            return timeout
    return dist.default_pg_timeout


# One gloo group per non-gloo group (created once, collectively, the first time a synchronisation
# needs it; keyed weakly so that a destroyed group's entry goes with it).
_GLOO_GROUPS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def gloo_group(group: Any = None) -> Any:
    """``group`` itself when its backend is gloo, else a gloo group over the same ranks with the
    same timeout (the statistics live on the CPU; NCCL moves only CUDA tensors)."""
    pg = group if group is not None else dist.distributed_c10d._get_default_group()
    if dist.get_backend(pg) == "gloo":
        return pg
    if pg not in _GLOO_GROUPS:
        _GLOO_GROUPS[pg] = dist.new_group(
            ranks=dist.get_process_group_ranks(pg),
            timeout=group_timeout(pg),
            backend="gloo",
            use_local_synchronization=True,
        )
    return _GLOO_GROUPS[pg]


def _failure(what: str, group: Any, err: BaseException) -> RankFailureError:
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    seconds = group_timeout(group).total_seconds()
    return RankFailureError(
        f"{what} failed on rank {rank} of {world}: another rank failed, exited, or did not "
        f"reach the same point within the process group's timeout ({seconds:g} s, set by "
        f"init_process_group(timeout=...) or new_group(timeout=...)). Every rank must make the "
        f"same calls (zp.convert synchronises calibration statistics under a process group). "
        f"Cause: {err}"
    )


def guarded(what: str, group: Any, fn: Callable[[], T]) -> T:
    """Run a collective; turn the backend's error (timeout, closed connection) into a
    `RankFailureError` that says what was being synchronised."""
    try:
        return fn()
    except RankMismatchError:
        raise
    except RuntimeError as err:
        raise _failure(what, group, err) from err


class Channel:
    """The collectives of one synchronisation, on CPU tensors through a gloo group, with the bytes
    this rank puts in (``bytes_sent``: each tensor's size once per collective — an all-reduce's
    input, an all-gather's contribution) and the number of collectives."""

    def __init__(self, group: Any = None) -> None:
        self.group = gloo_group(group)
        self.rank = dist.get_rank(self.group)
        self.world = dist.get_world_size(self.group)
        self.bytes_sent = 0
        self.collectives = 0

    def barrier(self, what: str) -> None:
        """gloo's monitored barrier: rank 0 names the ranks that do not arrive in time."""
        timeout = group_timeout(self.group)
        guarded(
            what,
            self.group,
            lambda: dist.monitored_barrier(self.group, timeout=timeout, wait_all_ranks=True),
        )
        self.collectives += 1

    def all_reduce(self, t: Tensor, op: str, what: str) -> Tensor:
        """``t`` reduced over the ranks by "sum" or "max" (in place; returned)."""
        reduce_op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op]
        guarded(what, self.group, lambda: dist.all_reduce(t, reduce_op, group=self.group))
        self.bytes_sent += t.numel() * t.element_size()
        self.collectives += 1
        return t

    def all_gather(self, t: Tensor, what: str) -> list[Tensor]:
        """Every rank's ``t`` (same shape and dtype on every rank), in rank order."""
        out = [torch.empty_like(t) for _ in range(self.world)]
        guarded(what, self.group, lambda: dist.all_gather(out, t.contiguous(), group=self.group))
        self.bytes_sent += t.numel() * t.element_size()
        self.collectives += 1
        return out

    def all_gather_bytes(self, data: bytes, what: str) -> list[bytes]:
        """Every rank's byte string (any lengths), in rank order."""
        size = torch.tensor([len(data)], dtype=torch.int64)
        sizes = [int(s) for s in self.all_gather(size, what)]
        buf = torch.zeros(max(sizes), dtype=torch.uint8)
        buf[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return [
            bytes(b[:n].tolist()) for b, n in zip(self.all_gather(buf, what), sizes, strict=True)
        ]
