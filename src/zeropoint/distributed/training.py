"""Data-parallel QAT: every statistic a training step computes is the global batch's.

Under ``DistributedDataParallel`` each of W ranks runs the forward pass on its own batch of B
samples, and DDP averages the gradients. The single-process run this reproduces (to float
rounding) trains on the global batch of W·B samples, rank 0's first. Four things in a QAT model
depend on the batch beyond the gradients, and a `RankGroup` attached to the model
(`zeropoint.distributed.attach`, done by `zp.prepare_qat` when a process group is initialised)
reduces each over the ranks:

* **Batch norm folded into a convolution** (`zeropoint.nn.convbn.batch_moments`): the batch
  mean and variance are the global batch's — μ = Σ_r Σy / N, then σ² = Σ_r Σ(y − μ)² / N (two
  passes, float64 sums, N the global count) — through an all-reduce that passes gradients (its
  backward all-reduces them too), which is what ``SyncBatchNorm`` computes on GPUs and what CPU
  has no module for. The running statistics are updated with the global N.
* **Observers in mode "learn"** (moving-average min-max for ``learnable=None``): each update sees
  the global batch — its per-row min and max by a MAX all-reduce (a histogram observer: the
  batch's histogram reduced) — before the usual EMA step, so every rank holds the same range and
  it equals one process fed the global batches.
* **Learnable quantizers' initialisation** (`zeropoint.nn.learnable`): the sign (any negative
  value on any rank), the step floor (the global max |x|), mean |x| (LSQ, PACT) and LSQ+'s MSE fit
  come from the global first batch (float64 sums: the float32 values one process gets). Weight
  quantizers see identical weights and stay local.
* **LSQ's gradient scale** g = 1/√(N·Qp): N counts the global batch's elements (N_local · W,
  per-rank batches being equal, as DDP with a ``DistributedSampler`` makes them).

The learnable steps, offsets and clips are ordinary parameters: DDP averages their gradients and
FSDP2 shards them like any other (except PACT's 0-dimensional α, which ``fully_shard`` refuses).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from zeropoint.distributed.fingerprint import observer_options
from zeropoint.distributed.ranks import gloo_group, guarded
from zeropoint.distributed.sync import reduce_statistics
from zeropoint.observers.base import Observer, row_minmax
from zeropoint.observers.histogram import Histogram, HistogramObserver
from zeropoint.observers.registry import OBSERVERS, make_observer
from zeropoint.qparams import QParams, Scheme

_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}


class RankGroup:
    """The ranks a model's training statistics are reduced over: a process group (None: the
    default group). Modules hold it as ``rank_group``; copying a model shares it."""

    def __init__(self, group: Any = None) -> None:
        self.group = group

    @property
    def world_size(self) -> int:
        return int(dist.get_world_size(self.group))

    def all_reduce(self, t: Tensor, op: str, what: str = "QAT statistics") -> Tensor:
        """A reduced copy of ``t`` ("sum" or "max"), on its device: CPU tensors through gloo."""
        out = t.detach().clone()
        group = gloo_group(self.group) if out.device.type == "cpu" else self.group
        guarded(what, group, lambda: dist.all_reduce(out, _OPS[op], group=group))
        return out

    def all_gather_rows(self, t: Tensor, what: str = "statistics") -> list[Tensor]:
        """Every rank's ``t`` (CPU; the same trailing shape and dtype on every rank, any number
        of rows), in rank order."""
        group = gloo_group(self.group)
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world_size)]
        mine = torch.tensor([t.shape[0]], dtype=torch.int64)
        guarded(what, group, lambda: dist.all_gather(sizes, mine, group=group))
        rows = max(int(n) for n in sizes)
        padded = torch.zeros(rows, *t.shape[1:], dtype=t.dtype)
        padded[: t.shape[0]] = t
        out = [torch.empty_like(padded) for _ in sizes]
        guarded(what, group, lambda: dist.all_gather(out, padded, group=group))
        return [o[: int(n)] for o, n in zip(out, sizes, strict=True)]

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank."""
        return bool(self.all_reduce(torch.tensor([float(flag)]), "max")[0] > 0)

    def sum_with_grad(self, t: Tensor) -> Tensor:
        """Σ over the ranks of ``t``, differentiable: the backward pass sums the gradients of
        every rank's loss with respect to the total (as SyncBatchNorm's does)."""
        out: Tensor = _SumAcrossRanks.apply(t, self)
        return out

    def calibrate(self, rows: Tensor, scheme: Scheme, method: str) -> QParams:
        """`zp.calibrate` of every rank's ``rows`` together (the statistics are reduced, not
        the data)."""
        observer = global_batch(make_observer(method, scheme), self)
        observer.update(rows)
        return observer.qparams()

    def __deepcopy__(self, memo: dict[int, Any]) -> RankGroup:
        return self  # a process group is not copied with the model that uses it

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        if self.group is not None:
            raise TypeError(
                "a model attached to a custom process group cannot be pickled: "
                "zp.distributed.detach(model) first (or save with zp.save)"
            )
        return (RankGroup, ())

    def __repr__(self) -> str:
        name = "default group" if self.group is None else repr(self.group)
        return f"RankGroup({name})"


class _SumAcrossRanks(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, t: Tensor, ranks: RankGroup) -> Tensor:
        ctx.ranks = ranks
        return ranks.all_reduce(t, "sum")

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return ctx.ranks.all_reduce(grad, "sum", "QAT statistics (backward)"), None


# ------------------------------------------------------------------------------ observers
class GlobalBatch:
    """Mixin for observers whose every update sees the global batch (see the module doc)."""

    ranks: RankGroup
    reduced_type: type[Observer]


class _GlobalExtremes(GlobalBatch):
    def _update_rows(self, rows: Tensor) -> None:
        batch = SimpleNamespace()
        batch.lo, batch.hi = row_minmax(rows)
        reduce_statistics([batch], [], self.ranks.all_reduce, "moving-average observer")
        # the global batch as the two values that carry its range (float32 values: exact)
        both = torch.stack([batch.lo, batch.hi], dim=1).to(rows.dtype)
        super()._update_rows(both)  # type: ignore[misc]


class _GlobalHistogram(GlobalBatch):
    bins: int
    hist: Histogram | None

    def _update_rows(self, rows: Tensor) -> None:
        batch = Histogram(rows.shape[0], self.bins)
        batch.add(rows)
        reduce_statistics([], [batch], self.ranks.all_reduce, "histogram observer")
        if self.hist is None:
            self.hist = batch
        else:
            self.hist.merge(batch)


_CLASSES: dict[type[Observer], type[Observer]] = {}


def global_batch_class(base: type[Observer]) -> type[Observer]:
    """The global-batch variant of an observer class (one per class, picklable by name)."""
    if issubclass(base, GlobalBatch):
        return base
    if base not in _CLASSES:
        mixin = _GlobalHistogram if issubclass(base, HistogramObserver) else _GlobalExtremes
        name = f"GlobalBatch{base.__name__}"
        cls = type(name, (mixin, base), {"__module__": __name__, "__qualname__": name,
                                          "reduced_type": base})  # fmt: skip
        _CLASSES[base] = cls
        globals().setdefault(name, cls)
    return _CLASSES[base]


for _cls in OBSERVERS.values():
    global_batch_class(_cls)


def global_batch(observer: Observer, ranks: RankGroup) -> Observer:
    """A fresh observer with ``observer``'s type, scheme and options whose every update sees
    the global batch of ``ranks``."""
    cls = global_batch_class(type(observer))
    new = cls(observer.scheme, **observer_options(observer))  # type: ignore[call-arg]
    new.ranks = ranks  # type: ignore[attr-defined]
    return new


def local_observer(observer: Observer) -> Observer:
    """The plain observer a global-batch one wraps, with its statistics."""
    base = getattr(type(observer), "reduced_type", None)
    if base is None:
        return observer
    plain: Observer = base(observer.scheme, **observer_options(observer))  # type: ignore[call-arg]
    transfer(observer, plain)
    return plain


def transfer(source: Observer, target: Observer) -> None:
    """Give ``target`` (a fresh observer of the same kind) ``source``'s statistics."""
    own = {k: v for k, v in vars(target).items() if k == "ranks"}
    if source.num_batches:
        target._shape, target._rows = source._shape, source._rows
        target._copy_from(source)  # copies every attribute: drop those that are not statistics
        target.num_batches, target.num_values = source.num_batches, source.num_values
    for attr in ("ranks", "_zeropoint_rank_sync"):
        target.__dict__.pop(attr, None)
    target.__dict__.update(own)
