"""Histogram statistics, exactly mergeable, and the observers that choose a range from them.

The histogram of each slice covers [−R, R) with N equal bins, where R = 2^e is the smallest power
of two above every |x| seen. A value x falls in bin

    i(x) = ⌊x · N / (2R)⌋ + N/2          (N/(2R) is a power of two: the product is exact)

When a later batch needs a larger range the histogram is re-binned by merging pairs of bins
(R doubles: bin i moves to N/4 + ⌊i/2⌋), which is exactly the bin the value would have landed in
had R been larger from the start, because ⌊⌊a⌋/2⌋ = ⌊a/2⌋. So the histogram depends only on the
multiset of values seen, never on the order or batching: merging two observers is exact, and
nothing but the counts is stored (no data is kept).

The observers differ only in the estimator that picks the clip range from the histogram
(`zeropoint.observers.estimators`): Percentile, Entropy (KL) and MSE.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from zeropoint.observers import estimators
from zeropoint.observers.base import Observer, row_minmax
from zeropoint.qparams import Scheme

#: Exponent of rows that have only seen zeros (they have no range yet).
NO_RANGE = -(1 << 20)


class Histogram:
    """Per-row power-of-two-range histograms plus exact extremes and moments (see module doc)."""

    def __init__(self, rows: int, bins: int = 4096) -> None:
        if bins < 8 or bins & (bins - 1):
            raise ValueError(f"bins={bins} must be a power of two >= 8")
        self.bins = bins
        self.counts = torch.zeros(rows, bins, dtype=torch.float64)
        self.exponent = torch.full((rows,), NO_RANGE, dtype=torch.int64)
        self.lo = torch.full((rows,), math.inf, dtype=torch.float64)
        self.hi = torch.full((rows,), -math.inf, dtype=torch.float64)
        self.count = torch.zeros(rows, dtype=torch.float64)
        self.sum = torch.zeros(rows, dtype=torch.float64)
        self.sum_sq = torch.zeros(rows, dtype=torch.float64)
        self.zeros = torch.zeros(rows, dtype=torch.float64)  # exact zeros (e.g. after a ReLU)

    # ---------------------------------------------------------------- geometry
    @property
    def rows(self) -> int:
        return self.counts.shape[0]

    @property
    def has_range(self) -> Tensor:
        return self.exponent != NO_RANGE

    @property
    def radius(self) -> Tensor:
        """R = 2^e per row (0 for rows without a range)."""
        r = torch.ldexp(torch.ones(self.rows, dtype=torch.float64), self.exponent.clamp(min=-1070))
        return torch.where(self.has_range, r, torch.zeros_like(r))

    @property
    def bin_width(self) -> Tensor:
        """w = 2R / N per row."""
        return 2.0 * self.radius / self.bins

    def abs_counts(self) -> Tensor:
        """Histogram of |x|: N/2 bins over [0, R), bin j = [j·w, (j+1)·w) (folded at 0)."""
        half = self.bins // 2
        return self.counts[:, half:] + self.counts[:, :half].flip(1)

    def mean(self) -> Tensor:
        return self.sum / self.count.clamp(min=1)

    def std(self) -> Tensor:
        var = self.sum_sq / self.count.clamp(min=1) - self.mean() ** 2
        return var.clamp(min=0).sqrt()

    # ---------------------------------------------------------------- updates
    def add(self, rows: Tensor) -> None:
        """Add the values of ``rows`` (C, n); row c goes into histogram c."""
        if rows.shape[0] != self.rows:
            raise ValueError(f"expected {self.rows} rows, got {rows.shape[0]}")
        lo, hi = row_minmax(rows)
        self.lo, self.hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)
        self.count += rows.shape[1]
        # moments for ACIQ: float32 pairwise sums (relative error ~1e-7), accumulated in float64
        self.sum += rows.sum(1).to(torch.float64)
        self.sum_sq += torch.linalg.vector_norm(rows, 2, dim=1).to(torch.float64) ** 2
        m = torch.maximum(lo.abs(), hi.abs())
        _, e = torch.frexp(m)  # m = f·2^e with f in [0.5, 1): 2^e > m
        needed = torch.where(m > 0, e.to(torch.int64), torch.full_like(self.exponent, NO_RANGE))
        self._grow(torch.maximum(self.exponent, needed))
        counts, zeros = self._bin(rows)
        self.counts += counts
        self.zeros += zeros

    def merge(self, other: Histogram) -> None:
        if other.rows != self.rows or other.bins != self.bins:
            raise ValueError(
                f"cannot merge histograms of shape ({other.rows}, {other.bins}) and "
                f"({self.rows}, {self.bins})"
            )
        target = torch.maximum(self.exponent, other.exponent)
        other_counts = _rebin(other.counts, other.exponent, target, self.bins)
        self._grow(target)
        self.counts += other_counts
        self.lo, self.hi = torch.minimum(self.lo, other.lo), torch.maximum(self.hi, other.hi)
        self.count += other.count
        self.sum += other.sum
        self.sum_sq += other.sum_sq
        self.zeros += other.zeros

    def _grow(self, target: Tensor) -> None:
        self.counts = _rebin(self.counts, self.exponent, target, self.bins)
        self.exponent = target

    def _bin(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """(counts (C, N), exact zeros (C,)) of ``rows`` binned at the current exponents.

        Processed in blocks of about 2^18 values so that the chain scale → floor → int64 →
        bincount runs on cache-resident data."""
        n_bins = self.bins
        log2n = n_bins.bit_length() - 1
        # x·2^shift = x·N/(2R); rows without a range hold only zeros, which land in bin N/2.
        shift = torch.where(self.has_range, log2n - 1 - self.exponent, 0).clamp(-1000, 1000)
        exact32 = bool((shift.abs() < 120).all())
        dtype = torch.float32 if exact32 else torch.float64
        factor = torch.ldexp(torch.ones(self.rows, dtype=dtype), shift).unsqueeze(1)
        offset = (torch.arange(self.rows, dtype=torch.int64) * n_bins + n_bins // 2).unsqueeze(1)
        counts = torch.zeros(self.rows * n_bins, dtype=torch.int64)
        zeros = torch.zeros(self.rows, dtype=torch.int64)
        step = max(1, (1 << 18) // self.rows)
        for j in range(0, rows.shape[1], step):
            block = rows[:, j : j + step].to(dtype) * factor  # exact: a power-of-two scaling
            zeros += (block == 0).sum(1)
            idx = torch.floor_(block).to(torch.int64).add_(offset)
            idx.clamp_(0, self.rows * n_bins - 1)
            counts += torch.bincount(idx.reshape(-1), minlength=self.rows * n_bins)
        return counts.reshape(self.rows, n_bins).to(torch.float64), zeros.to(torch.float64)


def _rebin(counts: Tensor, exponent: Tensor, target: Tensor, bins: int) -> Tensor:
    """Re-bin rows from R = 2^exponent to R = 2^target by merging pairs (exact; see module doc)."""
    steps = torch.where(exponent == NO_RANGE, torch.zeros_like(target), target - exponent)
    steps = steps.clamp(0, bins.bit_length() - 1)
    if not bool((steps > 0).any()):
        return counts
    counts = counts.clone()
    quarter = bins // 4
    for k in range(1, int(steps.max()) + 1):
        sel = steps >= k
        merged = counts[sel].reshape(-1, bins // 2, 2).sum(-1)
        fresh = torch.zeros(merged.shape[0], bins, dtype=counts.dtype)
        fresh[:, quarter : quarter + bins // 2] = merged
        counts[sel] = fresh
    return counts


class HistogramObserver(Observer):
    """An observer that keeps a `Histogram` per slice; subclasses choose the estimator."""

    def __init__(self, scheme: Scheme | None = None, bins: int = 4096) -> None:
        super().__init__(scheme)
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 8 or bins & (bins - 1):
            raise ValueError(f"bins={bins!r} must be a power of two >= 8")
        self.bins = bins
        self.hist: Histogram | None = None

    def _update_rows(self, rows: Tensor) -> None:
        if self.hist is None:
            self.hist = Histogram(rows.shape[0], self.bins)
        self.hist.add(rows)

    def _merge(self, other: Observer) -> None:
        assert isinstance(other, HistogramObserver) and other.hist is not None
        assert self.hist is not None
        self.hist.merge(other.hist)

    def _copy_from(self, other: Observer) -> None:
        assert isinstance(other, HistogramObserver) and other.hist is not None
        self.hist = Histogram(other.hist.rows, other.hist.bins)
        self.hist.merge(other.hist)

    def _range(self) -> tuple[Tensor, Tensor]:
        assert self.hist is not None
        return self.estimate(self.hist)

    def estimate(self, hist: Histogram) -> tuple[Tensor, Tensor]:
        """Min-max of the histogram's rows; subclasses override."""
        return hist.lo.clone(), hist.hi.clone()


class Percentile(HistogramObserver):
    """Clip at the p-th percentile of |x| (symmetric schemes) or at the (100 − p)-th and p-th
    percentiles of x (asymmetric schemes), linearly interpolated inside the bin."""

    def __init__(self, scheme: Scheme | None = None, percentile: float = 99.99, bins: int = 4096):
        super().__init__(scheme, bins)
        if isinstance(percentile, bool) or not isinstance(percentile, int | float):
            raise TypeError(f"percentile must be a number, got {percentile!r}")
        if not 0.0 < percentile <= 100.0:
            raise ValueError(f"percentile={percentile} must lie in (0, 100]")
        if not self.scheme.symmetric and percentile < 50.0:
            raise ValueError(
                f"percentile={percentile} with an asymmetric scheme would clip at the "
                f"{100 - percentile:g}th and {percentile:g}th percentiles, a range with its ends "
                "swapped: use a percentile in [50, 100]"
            )
        self.percentile = percentile

    def estimate(self, hist: Histogram) -> tuple[Tensor, Tensor]:
        return estimators.percentile_range(hist, self.scheme, self.percentile)


class Entropy(HistogramObserver):
    """Clip at the threshold that minimises KL(P ‖ Q) between the clipped reference distribution
    P and its quantized version Q (Migacz 2017, TensorRT's entropy calibration)."""

    def estimate(self, hist: Histogram) -> tuple[Tensor, Tensor]:
        return estimators.entropy_range(hist, self.scheme)


class MSE(HistogramObserver):
    """Clip range minimising the expected squared error E[(Q(x) − x)²] over the histogram."""

    def estimate(self, hist: Histogram) -> tuple[Tensor, Tensor]:
        return estimators.mse_range(hist, self.scheme)
