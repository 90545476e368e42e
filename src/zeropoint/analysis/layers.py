"""Per-unit statistics of a converted model on data: schemes, clip ranges, clipping, SQNR and the
activation histograms the report draws.

For a quantizer with scale S, zero point Z and integer range [q_min, q_max], the representable
(clip) range is [S·(q_min − Z), S·(q_max − Z)]; a value is *clipped* when it lies more than half a
step outside it (beyond the last rounding interval). Activation statistics are taken where the
quantizer sits in the fully quantized simulation, so each quantizer sees the values it sees when
deployed: x entering it, x̂ leaving it,

    SQNR = 10·log10(Σ x² / Σ (x̂ − x)²)   (accumulated over every batch, in float64)

and the weight SQNR compares the float weight with Q(W) as the layer uses it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from zeropoint.analysis.errors import sqnr_db
from zeropoint.analysis.units import PartialRunner, Unit, enabled, float_simulation, state_of
from zeropoint.nn.quantizers import FakeQuant
from zeropoint.qparams import Scheme

HISTOGRAM_BINS = 48


@dataclass
class Histogram:
    """Counts of values in ``bins`` equal bins over [lo, hi], plus those below and above."""

    lo: float
    hi: float
    counts: list[int]
    below: int = 0
    above: int = 0

    @property
    def edges(self) -> list[float]:
        n = len(self.counts)
        return [self.lo + (self.hi - self.lo) * i / n for i in range(n + 1)]


@dataclass
class UnitStats:
    """What one unit does to its tensors (see the module docstring)."""

    name: str
    kind: str
    weight_scheme: str = ""
    activation_scheme: str = ""
    weight_bits: int | None = None
    activation_bits: int | None = None
    parameters: int = 0
    clip_lo: float | None = None
    clip_hi: float | None = None
    clipped_share: float | None = None
    data_min: float | None = None
    data_max: float | None = None
    weight_sqnr_db: float | None = None
    activation_sqnr_db: float | None = None
    histogram: Histogram | None = None
    _signal: float = field(default=0.0, repr=False)
    _noise: float = field(default=0.0, repr=False)
    _values: int = field(default=0, repr=False)
    _clipped: int = field(default=0, repr=False)


def clip_range(q: FakeQuant) -> tuple[float, float] | None:
    """[S·(q_min − Z), S·(q_max − Z)] of a frozen per-tensor quantizer (None otherwise)."""
    if not q.frozen or q.scale.numel() != 1:
        return None
    s, z = float(q.scale), int(q.zero_point)
    return s * (q.scheme.qmin - z), s * (q.scheme.qmax - z)


def _scheme_text(scheme: Scheme | None) -> str:
    return "float" if scheme is None else str(scheme)


def unit_stats(model: nn.Module, units: list[Unit], inputs: list[Tensor],
               bins: int = HISTOGRAM_BINS) -> list[UnitStats]:  # fmt: skip
    """Statistics of every unit on ``inputs`` (batches), the model fully quantized."""
    stats = [_static_stats(u) for u in units]
    gm = state_of(model).graph_module
    assert gm is not None
    watch: dict[Any, tuple[UnitStats, FakeQuant]] = {}
    for u, s in zip(units, stats, strict=True):
        if u.activation is not None:
            watch[u.point] = (s, u.activation)
    keep = set(watch) | {p.args[0] for p in watch}  # type: ignore[misc]
    with enabled(units, {u.name for u in units}), float_simulation(model):
        for x in inputs:
            runner = PartialRunner(gm, keep=keep)  # type: ignore[arg-type]
            runner.run(x)
            for point, (s, q) in watch.items():
                _accumulate(s, q, runner.kept[point.args[0]], runner.kept[point], bins)
    for s in stats:
        if s._values:
            s.clipped_share = s._clipped / s._values
            s.activation_sqnr_db = _sqnr(s._signal, s._noise)
    return stats


def _static_stats(u: Unit) -> UnitStats:
    s = UnitStats(u.name, u.kind)
    if u.weight is not None and u.layer is not None:
        s.weight_scheme = _scheme_text(u.weight.scheme)
        s.weight_bits = u.weight.scheme.bits
        w = u.layer.float_weight.detach()
        s.parameters = w.numel()
        with torch.no_grad():  # against the float model's weight where the layer's is on grid
            reference = w if u.float_reference is None else u.float_reference
            s.weight_sqnr_db = sqnr_db(reference, u.layer.quantized_weight().detach())
    elif u.layer is not None:
        s.weight_scheme = "float"
        s.parameters = u.layer.float_weight.numel()
    if u.activation is not None:
        s.activation_scheme = _scheme_text(u.activation.scheme)
        s.activation_bits = u.activation.scheme.bits
        rng = clip_range(u.activation)
        if rng is not None:
            s.clip_lo, s.clip_hi = rng
    return s


def _accumulate(s: UnitStats, q: FakeQuant, x: Any, xq: Any, bins: int) -> None:
    if not isinstance(x, Tensor) or not isinstance(xq, Tensor):
        return
    a, b = x.detach().float().reshape(-1), xq.detach().float().reshape(-1)
    s._signal += float((a * a).sum(dtype=torch.float64))
    s._noise += float(((b - a) ** 2).sum(dtype=torch.float64))
    s._values += a.numel()
    lo_data, hi_data = float(a.min()), float(a.max())
    s.data_min = lo_data if s.data_min is None else min(s.data_min, lo_data)
    s.data_max = hi_data if s.data_max is None else max(s.data_max, hi_data)
    if s.clip_lo is not None and s.clip_hi is not None:
        step = float(q.scale)
        outside = (a < s.clip_lo - step / 2) | (a > s.clip_hi + step / 2)
        s._clipped += int(outside.sum())
        if s.histogram is None:
            # the clip range and a margin of a quarter of it each side: values beyond the
            # margin are counted in ``below`` / ``above``
            width = s.clip_hi - s.clip_lo
            lo = min(s.clip_lo - 0.25 * width, max(lo_data, s.clip_lo - width))
            hi = max(s.clip_hi + 0.25 * width, min(hi_data, s.clip_hi + width))
            if s.clip_lo >= 0 and lo_data >= 0:
                lo = min(0.0, lo_data)
            s.histogram = Histogram(lo, hi, [0] * bins)
        h = s.histogram
        counts = torch.histc(a, bins=len(h.counts), min=h.lo, max=h.hi)
        h.counts = [c + int(v) for c, v in zip(h.counts, counts.tolist(), strict=True)]
        h.below += int((a < h.lo).sum())
        h.above += int((a > h.hi).sum())


def _sqnr(signal: float, noise: float) -> float:
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


__all__ = ["HISTOGRAM_BINS", "Histogram", "UnitStats", "clip_range", "unit_stats"]
