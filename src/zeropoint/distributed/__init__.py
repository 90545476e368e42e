"""Calibration, QAT and post-training statistics across processes and machines (torch.distributed).

Launch with ``torchrun`` (gloo on CPU, NCCL on GPUs) and use zeropoint as in one process:

* **Static PTQ**: each rank calibrates on its shard (a ``DistributedSampler``); ``zp.convert``
  (run by ``zp.quantize_static``) reduces the observers over the ranks first, so every rank
  converts to the model one process calibrated on all the data gives — bit for bit
  (`sync_model`, `sync_observers`; `zeropoint.distributed.sync` says how each observer reduces).
* **QAT** under DDP / FSDP2: ``zp.prepare_qat`` attaches the model to the ranks
  (`attach`): batch-norm folding, "learn"-mode observers and the learnable quantizers'
  initialisation see the global batch (`zeropoint.distributed.training`).
* **Post-training algorithms**: `all_reduce_sum` sums a statistic over the ranks (identity in
  one process).

Nothing is exchanged unless a process group with more than one rank is initialised
(`is_distributed`). Ranks that disagree on what they reduce raise `RankMismatchError` before
anything is reduced; a rank that fails or never arrives makes the others raise
`RankFailureError` within the process group's timeout (``init_process_group(timeout=...)``).
"""

from typing import Any

from torch import Tensor

from zeropoint.distributed.model import attach, detach, sync_calibration, sync_model
from zeropoint.distributed.ranks import (
    RankFailureError,
    RankMismatchError,
    group_timeout,
    is_distributed,
)
from zeropoint.distributed.sync import SyncStats, sync_observers
from zeropoint.distributed.training import RankGroup


def all_reduce_sum(t: Tensor, group: Any = None) -> Tensor:
    """Σ over the ranks of ``t`` (a new tensor; ``t`` itself when not distributed): the one
    call a data-parallel statistic needs (a Gram matrix, a gradient, a count)."""
    if not is_distributed(group):
        return t
    return RankGroup(group).all_reduce(t, "sum", "zeropoint.distributed.all_reduce_sum")


__all__ = [
    "RankFailureError",
    "RankGroup",
    "RankMismatchError",
    "SyncStats",
    "all_reduce_sum",
    "attach",
    "detach",
    "group_timeout",
    "is_distributed",
    "sync_calibration",
    "sync_model",
    "sync_observers",
]
