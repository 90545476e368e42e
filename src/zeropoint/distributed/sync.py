"""Observers across ranks: every rank ends with the statistics of all the ranks' data.

After `sync_observers` every rank holds identical statistics, and ``qparams()`` is bit for bit
what one process computes from one observer fed every rank's batches:

* **MinMax**: α = MIN, β = MAX over the ranks (one MAX all-reduce of (−α, β)).
* **Histograms** (Percentile, Entropy, MSE, ACIQ): each row's range 2^e is agreed by a MAX
  all-reduce of the exponents; every rank re-bins its counts to it (exactly: merging pairs of
  bins, `zeropoint.observers.histogram`) and the counts, the number of values and of exact zeros,
  and the exact moments Σx, Σx² (integer limbs, `zeropoint.observers.exact`) are summed by one
  int64 SUM all-reduce; the extremes go with the MAX. The estimators then run on the merged
  histogram. Only counts travel — a fixed size per observer (rows × bins × 8 bytes), however many
  activations were seen.
* **MovingAverageMinMax**: an EMA depends on the order of its batches, and sharded batches have
  no single order. Its cross-rank meaning is `Observer.merge`'s: the ranks' averages weighted by
  their batch counts, merged in rank order — exactly what one process computes by merging one
  observer per shard (``acc.merge(rank0).merge(rank1)...``). (During QAT, where every step must
  see the global batch, `zeropoint.distributed.training` reduces each batch's range instead.)

Each observer also gets the global ``num_batches`` / ``num_values``, and the shape of the first
batch of the lowest rank that saw data (rank 0's first batch is the first of a sampler that deals
batches to the ranks in turn).

Bit-identity assumes the ranks run the same build of torch with the same number of intra-op
threads (a float32 sum over a batch is rounded the same way only then).

Order of work: the monitored barrier (a rank that failed or never arrives is named), the
fingerprint (configurations compared, `zeropoint.distributed.fingerprint`), one all-gather of
each observer's layout (rows, shape, batch counts: a rank without data takes the others'), then
the reductions. A second synchronisation of unchanged observers is a no-op, so `sync_model`
followed by `zp.convert` (which synchronises) counts nothing twice; data fed after a
synchronisation is refused (the global part would be counted once per rank).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from zeropoint.distributed.fingerprint import agree, observer_fingerprint
from zeropoint.distributed.ranks import Channel, RankMismatchError
from zeropoint.observers.base import Observer
from zeropoint.observers.histogram import Histogram, HistogramObserver
from zeropoint.observers.minmax import MeanMinMax, MinMax, MovingAverageMinMax

#: Attribute holding (digest of the statistics, num_batches) after a synchronisation.
MARK = "_zeropoint_rank_sync"
MAX_DIMS = 16
_FRESH, _SYNCED, _FED_AFTER = 0, 1, 2


@dataclass(frozen=True)
class SyncStats:
    """What one synchronisation did on this rank: observers reduced and skipped (already
    synchronised, or without data on every rank), the bytes this rank put into collectives
    (each tensor once per collective), the number of collectives, and the wall time."""

    observers: int
    skipped: int
    bytes_sent: int
    collectives: int
    seconds: float


def kind_of(observer: Observer) -> str:
    """Which reduction an observer takes: "minmax", "moving_average", "samples" or
    "histogram"."""
    if isinstance(observer, MeanMinMax):
        return "samples"
    if isinstance(observer, MovingAverageMinMax):
        return "moving_average"
    if isinstance(observer, MinMax):
        return "minmax"
    if isinstance(observer, HistogramObserver):
        return "histogram"
    raise TypeError(
        f"zeropoint.distributed cannot reduce a {type(observer).__name__} across ranks: "
        "supported are MinMax, MovingAverageMinMax, MeanMinMax and histogram observers (HistogramObserver "
        "subclasses: Percentile, Entropy, MSE, ACIQ and your own estimators)"
    )


def state_tensors(observer: Observer) -> list[Tensor]:
    """The statistics an observer's ``qparams`` depend on (empty without data)."""
    if observer.num_batches == 0:
        return []
    if isinstance(observer, HistogramObserver):
        h = observer.hist
        assert h is not None
        h.moments.normalize()
        return [h.counts, h.exponent, h.lo, h.hi, h.count, h.zeros, h.moments.limbs,
                h.moments.special]  # fmt: skip
    lo, hi = getattr(observer, "lo", None), getattr(observer, "hi", None)
    assert isinstance(lo, Tensor) and isinstance(hi, Tensor)
    if isinstance(observer, MeanMinMax):  # a multiset of samples: their order is not state
        return [lo.sort(1).values, hi.sort(1).values]
    return [lo, hi]


def state_digest(observer: Observer) -> str:
    h = hashlib.sha256(f"{observer.num_batches},{observer.num_values}".encode())
    for t in state_tensors(observer):
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _sync_state(observer: Observer) -> int:
    mark = getattr(observer, MARK, None)
    if mark is None:
        return _FRESH
    digest, batches = mark
    if observer.num_batches == batches and state_digest(observer) == digest:
        return _SYNCED
    return _FED_AFTER if observer.num_batches > batches else _FRESH


def named_observers(observers: Mapping[str, Observer] | Sequence[Observer]) -> dict[str, Observer]:
    """Observers by name (a sequence is named by position), validated."""
    if isinstance(observers, Mapping):
        named = dict(observers)
    elif isinstance(observers, Sequence) and not isinstance(observers, str):
        named = {f"observer[{i}]": o for i, o in enumerate(observers)}
    else:
        raise TypeError(
            f"expected a mapping of names to observers or a sequence of observers, got "
            f"{type(observers).__name__}"
        )
    for name, o in named.items():
        if not isinstance(o, Observer):
            raise TypeError(f"{name!r} is a {type(o).__name__}, not a zeropoint Observer")
        kind_of(o)
    return named


def sync_observers(
    observers: Mapping[str, Observer] | Sequence[Observer] | Observer, group: Any = None
) -> SyncStats:
    """Make every rank's observers hold the statistics of all the ranks' data (in place), so
    that ``qparams()`` is identical on every rank and bit-identical to one process fed all the
    data (see the module docstring; the moving average: to merging the ranks' observers in rank
    order). Collective: every rank of ``group`` (None: the default group) calls it with
    observers of the same names, types, schemes and options — a difference raises
    `RankMismatchError` on every rank before anything is reduced. A rank that fails or never
    arrives makes the others raise `RankFailureError` within the process group's timeout."""
    if isinstance(observers, Observer):
        observers = [observers]
    return synchronize(named_observers(observers), Channel(group), "sync_observers", {})


def synchronize(
    named: dict[str, Observer],
    channel: Channel,
    what: str,
    extra: Mapping[str, Mapping[str, Any]],
) -> SyncStats:
    """The synchronisation itself (see the module docstring for the order of work)."""
    start = time.perf_counter()
    channel.barrier(what)
    names = sorted(named)
    fingerprint = {"observer": {n: observer_fingerprint(named[n]) for n in names}, **extra}
    agree(channel, fingerprint, what)
    metas = _gather_layouts(channel, [named[n] for n in names], what)
    todo: list[tuple[str, Observer, Tensor]] = []
    problems: list[str] = []
    skipped = 0
    for i, name in enumerate(names):
        meta = metas[:, i]  # (ranks, columns)
        states = meta[:, -1].tolist()
        if all(s == _SYNCED for s in states):
            skipped += 1
            continue
        if any(s != _FRESH for s in states):
            problems.append(_state_problem(name, states))
            continue
        with_data = [r for r in range(channel.world) if meta[r, 0] > 0]
        if not with_data:
            skipped += 1
            continue
        problems += _layout_problems(name, named[name], meta, with_data)
        todo.append((name, named[name], meta))
    if problems:
        raise RankMismatchError(f"{what}: the ranks differ\n" + "\n".join(problems[:12]))
    _reduce(channel, todo, what)
    for _, observer, _ in todo:
        setattr(observer, MARK, (state_digest(observer), observer.num_batches))
    return SyncStats(
        observers=len(todo),
        skipped=skipped,
        bytes_sent=channel.bytes_sent,
        collectives=channel.collectives,
        seconds=time.perf_counter() - start,
    )


# ------------------------------------------------------------------------------ layouts
def _layout(observer: Observer) -> list[int]:
    shape = list(observer._shape or ())
    if len(shape) > MAX_DIMS:
        raise ValueError(f"observed tensors of more than {MAX_DIMS} dimensions: {shape}")
    rows = observer._rows if observer.num_batches else 0
    padded = shape + [-1] * (MAX_DIMS - len(shape))
    return [observer.num_batches, observer.num_values, rows, len(shape), *padded,
            _sync_state(observer)]  # fmt: skip


def _gather_layouts(channel: Channel, observers: list[Observer], what: str) -> Tensor:
    """(ranks, observers, columns): batches, values, rows, ndim, shape…, sync state."""
    local = torch.tensor([_layout(o) for o in observers], dtype=torch.int64)
    local = local.reshape(len(observers), 5 + MAX_DIMS)
    return torch.stack(channel.all_gather(local, f"{what} (observer layouts)"))


def _state_problem(name: str, states: list[int]) -> str:
    label = {_FRESH: "new statistics", _SYNCED: "synchronised statistics",
             _FED_AFTER: "data fed after its last synchronisation"}  # fmt: skip
    by_rank = "; ".join(f"rank {r}: {label[s]}" for r, s in enumerate(states))
    return (
        f"  observer {name!r}: {by_rank} — synchronise once, after all the calibration data "
        "(zp.convert does it), or reset the observers before calibrating again"
    )


def _layout_problems(
    name: str, observer: Observer, meta: Tensor, with_data: list[int]
) -> list[str]:
    rows = {r: int(meta[r, 2]) for r in with_data}
    ndims = {r: int(meta[r, 3]) for r in with_data}
    out = []
    if len(set(rows.values())) > 1:
        out.append(f"  observer {name!r}: slices (channels/groups) differ by rank {rows}")
    elif len(set(ndims.values())) > 1:
        out.append(f"  observer {name!r}: tensor dimensions differ by rank {ndims}")
    elif observer.scheme.granularity == "per_group":
        shapes = {r: tuple(meta[r, 4 : 4 + ndims[r]].tolist()) for r in with_data}
        if len(set(shapes.values())) > 1:
            out.append(f"  observer {name!r}: group-wise shapes differ by rank {shapes}")
    return out


# ------------------------------------------------------------------------------ reductions
def _reduce(channel: Channel, todo: list[tuple[str, Observer, Tensor]], what: str) -> None:
    if not todo:
        return
    # empty local state where this rank saw nothing, so that every rank packs the same sizes
    for _, observer, meta in todo:
        first = next(r for r in range(channel.world) if meta[r, 0] > 0)
        rows = int(meta[first, 2])
        if observer.num_batches == 0:
            _empty_state(observer, rows)
        ndim = int(meta[first, 3])
        observer._shape = tuple(int(d) for d in meta[first, 4 : 4 + ndim])
        observer._rows = rows
    hist = [o for _, o, _ in todo if kind_of(o) == "histogram"]
    extremes = [o for _, o, _ in todo if kind_of(o) == "minmax"]
    averages = [(o, m) for _, o, m in todo if kind_of(o) == "moving_average"]

    reduce_statistics(extremes, [_hist(o) for o in hist], channel.all_reduce, what)

    # moving averages: every rank's (α, β), merged in rank order as Observer.merge does
    if averages:
        local = torch.cat([torch.cat([o.lo, o.hi]) for o, _ in averages])  # type: ignore[attr-defined]
        gathered = channel.all_gather(local, f"{what} (moving averages)")
        at = 0
        for o, meta in averages:
            n = o._rows
            merged: MovingAverageMinMax | None = None
            for r in range(channel.world):
                if meta[r, 0] == 0:
                    continue
                part = _moving_average_like(
                    o, gathered[r][at : at + n], gathered[r][at + n : at + 2 * n]
                )
                part.num_batches, part.num_values = int(meta[r, 0]), int(meta[r, 1])
                merged = part if merged is None else merged.merge(part)
            assert merged is not None
            o.lo, o.hi = merged.lo, merged.hi  # type: ignore[attr-defined]
            at += 2 * n

    # per-sample extremes (MeanMinMax): every rank's samples, in rank order
    for _, o, _ in todo:
        if kind_of(o) == "samples":
            assert isinstance(o, MeanMinMax) and o.lo is not None and o.hi is not None
            both = torch.cat([o.lo, o.hi], 0)
            parts = _gather_columns(channel, both, f"{what} (per-sample extremes)")
            extremes_all = torch.cat(parts, 1)
            o.lo, o.hi = extremes_all[: o._rows].clone(), extremes_all[o._rows :].clone()

    # observers that also keep their values exactly while they are few (OMSE): every rank's
    # values, in rank order, or none anywhere once any rank (or the total) is past the cap
    for _, o, _ in todo:
        if hasattr(o, "adopt_values"):
            values = getattr(o, "values", None)
            dropped = torch.tensor([0.0 if values is not None else 1.0])
            if float(channel.all_reduce(dropped, "sum", f"{what} (exact values)")) > 0:
                o.adopt_values(None)
                continue
            rows = o._rows
            mine = torch.cat(values, dim=1) if values else torch.zeros(rows, 0)
            o.adopt_values(_gather_columns(channel, mine.float(), f"{what} (exact values)"))

    for _, o, meta in todo:
        o.num_batches = int(meta[:, 0].sum())
        o.num_values = int(meta[:, 1].sum())


def _gather_columns(channel: Channel, t: Tensor, what: str) -> list[Tensor]:
    """Every rank's (rows, n_r) tensor, in rank order (any n_r)."""
    size = torch.tensor([t.shape[1]], dtype=torch.int64)
    sizes = [int(n) for n in channel.all_gather(size, what)]
    padded = torch.zeros(t.shape[0], max(sizes), dtype=t.dtype)
    padded[:, : t.shape[1]] = t
    parts = channel.all_gather(padded, what)
    return [p[:, :n] for p, n in zip(parts, sizes, strict=True) if n > 0]


def reduce_statistics(
    extremes: Sequence[Any],
    hists: Sequence[Histogram],
    all_reduce: Callable[[Tensor, str, str], Tensor],
    what: str,
) -> None:
    """Min-max extremes (objects with float64 ``lo``/``hi`` per row) and histograms reduced over
    the ranks in place: one MAX all-reduce of (−α, β) and of each histogram's (−α, β, exponent,
    flags of non-finite moments); the histograms re-binned to the agreed exponents; one int64
    SUM all-reduce of their counts, numbers of values and of zeros, and exact moments."""
    pieces: list[Tensor] = []
    for o in extremes:
        pieces += [-o.lo, o.hi]
    for h in hists:
        special = h.moments.special
        flags = [special == float("inf"), special == float("-inf"), special.isnan()]
        pieces += [-h.lo, h.hi, h.exponent.to(torch.float64), *[f.to(torch.float64) for f in flags]]
    if not pieces:
        return
    maxed = all_reduce(torch.cat(pieces), "max", f"{what} (ranges)")
    at = 0
    for o in extremes:
        n = o.lo.shape[0]
        o.lo, o.hi = -maxed[at : at + n], maxed[at + n : at + 2 * n].clone()
        at += 2 * n
    for h in hists:
        n = h.rows
        h.lo, h.hi = -maxed[at : at + n], maxed[at + n : at + 2 * n].clone()
        h.rebin(maxed[at + 2 * n : at + 3 * n].to(torch.int64))
        at += 3 * n
        pos, neg, nan = (maxed[at + k * 2 * n : at + (k + 1) * 2 * n] > 0 for k in range(3))
        at += 6 * n
        special = torch.zeros(2 * n, dtype=torch.float64)
        special = torch.where(pos, float("inf"), special)
        special = torch.where(neg, float("-inf"), special)
        h.moments.special = torch.where(nan | (pos & neg), float("nan"), special)
    if not hists:
        return
    sums = []
    for h in hists:
        h.moments.normalize()
        sums += [h.counts.to(torch.int64).reshape(-1), h.count.to(torch.int64),
                 h.zeros.to(torch.int64), h.moments.limbs.reshape(-1)]  # fmt: skip
    summed = all_reduce(torch.cat(sums), "sum", f"{what} (histogram counts)")
    at = 0
    for h in hists:
        n, size = h.rows, h.rows * h.bins
        h.counts = summed[at : at + size].reshape(n, h.bins).to(torch.float64)
        h.count = summed[at + size : at + size + n].to(torch.float64)
        h.zeros = summed[at + size + n : at + size + 2 * n].to(torch.float64)
        at += size + 2 * n
        limbs = h.moments.limbs.numel()
        h.moments.limbs = summed[at : at + limbs].reshape(h.moments.limbs.shape).clone()
        h.moments.normalize()
        at += limbs


def _hist(o: Observer) -> Histogram:
    assert isinstance(o, HistogramObserver) and o.hist is not None
    return o.hist


def _empty_state(observer: Observer, rows: int) -> None:
    """The neutral statistics of a rank that saw no data (identities of MIN, MAX and SUM)."""
    if isinstance(observer, HistogramObserver):
        observer.hist = Histogram(rows, observer.bins)
    elif isinstance(observer, MeanMinMax):
        observer.lo = observer.hi = torch.zeros(rows, 0, dtype=torch.float64)
    else:
        inf = torch.full((rows,), float("inf"), dtype=torch.float64)
        observer.lo, observer.hi = inf, -inf  # type: ignore[attr-defined]


def _moving_average_like(o: Observer, lo: Tensor, hi: Tensor) -> MovingAverageMinMax:
    assert isinstance(o, MovingAverageMinMax)
    part = MovingAverageMinMax(o.scheme, o.averaging_constant)
    part._shape, part._rows = o._shape, o._rows
    part.lo, part.hi = lo.clone(), hi.clone()
    return part
