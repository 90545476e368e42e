"""Min-max observers: the clip range is the observed range.

MinMax:              α = min over all batches, β = max over all batches (exact, mergeable).
MovingAverageMinMax: α_t = α_{t−1} + c·(min(x_t) − α_{t−1}), likewise β (c = averaging constant;
                     the first batch sets the range). torch.ao's MovingAverageMinMaxObserver, as
                     used for QAT activations (Jacob et al. 2018, section 3.1).
MeanMinMax:          α = mean over samples n of min(x_n), β = mean of max(x_n) — each sample
                     (a slice along dimension 0) contributes its own extremes, so a rare outlier
                     moves the range by 1/N of its size (NNCF's MEAN_MINMAX, its default for
                     per-tensor activations; TensorRT's and OpenVINO's "average min-max").
"""

from __future__ import annotations

import torch
from torch import Tensor

from zeropoint.observers.base import Observer, row_minmax
from zeropoint.qparams import Scheme


class MinMax(Observer):
    """Running minimum and maximum of every slice."""

    def __init__(self, scheme: Scheme | None = None) -> None:
        super().__init__(scheme)
        self.lo: Tensor | None = None
        self.hi: Tensor | None = None

    def _update_rows(self, rows: Tensor) -> None:
        lo, hi = row_minmax(rows)
        if self.lo is None or self.hi is None:
            self.lo, self.hi = lo, hi
        else:
            self.lo, self.hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)

    def _merge(self, other: Observer) -> None:
        assert isinstance(other, MinMax) and other.lo is not None and other.hi is not None
        assert self.lo is not None and self.hi is not None
        self.lo, self.hi = torch.minimum(self.lo, other.lo), torch.maximum(self.hi, other.hi)

    def _range(self) -> tuple[Tensor, Tensor]:
        assert self.lo is not None and self.hi is not None
        return self.lo, self.hi


class MovingAverageMinMax(Observer):
    """Exponential moving average of per-batch minima and maxima.

    ``merge`` averages the two states weighted by their batch counts; unlike the other observers
    this is not identical to one observer fed both halves (an EMA depends on the order of batches).
    """

    def __init__(self, scheme: Scheme | None = None, averaging_constant: float = 0.01) -> None:
        super().__init__(scheme)
        if not 0.0 < averaging_constant <= 1.0:
            raise ValueError(f"averaging_constant={averaging_constant} must lie in (0, 1]")
        self.averaging_constant = averaging_constant
        self.lo: Tensor | None = None
        self.hi: Tensor | None = None

    def _update_rows(self, rows: Tensor) -> None:
        lo, hi = row_minmax(rows)
        if self.lo is None or self.hi is None:
            self.lo, self.hi = lo, hi
            return
        c = self.averaging_constant
        self.lo = self.lo + c * (lo - self.lo)
        self.hi = self.hi + c * (hi - self.hi)

    def _merge(self, other: Observer) -> None:
        assert isinstance(other, MovingAverageMinMax)
        assert self.lo is not None and self.hi is not None
        assert other.lo is not None and other.hi is not None
        w = other.num_batches / (self.num_batches + other.num_batches)
        self.lo = self.lo + w * (other.lo - self.lo)
        self.hi = self.hi + w * (other.hi - self.hi)

    def _range(self) -> tuple[Tensor, Tensor]:
        assert self.lo is not None and self.hi is not None
        return self.lo, self.hi


class MeanMinMax(Observer):
    """Mean over samples of each sample's minimum and maximum (per slice of the scheme).

    A sample is a slice of the batch along dimension 0 (a 0-d or 1-d tensor is one sample).
    The state is every sample's extremes, (rows, N) each, and the mean sums them in sorted
    order, so the range depends only on the multiset of samples: ``merge`` (and the
    distributed reduction) gives exactly the range of one observer fed all of them.
    """

    def __init__(self, scheme: Scheme | None = None) -> None:
        super().__init__(scheme)
        if self.scheme.axis == 0:  # axis 0 is the sample dimension: no samples to average
            raise ValueError(
                f"mean_minmax averages the extremes of samples along dimension 0; {self.scheme} "
                "has its channels there: use 'minmax' for weights (output channels on axis 0)"
            )
        self.lo: Tensor | None = None  # (rows, samples) float64
        self.hi: Tensor | None = None

    def update(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() <= 1:
            return super().update(x)
        for sample in x.detach().split(1, dim=0):
            super().update(sample)
        return x

    def _update_rows(self, rows: Tensor) -> None:
        lo, hi = row_minmax(rows)
        lo, hi = lo.to(torch.float64)[:, None], hi.to(torch.float64)[:, None]
        if self.lo is None or self.hi is None:
            self.lo, self.hi = lo, hi
        else:
            self.lo, self.hi = torch.cat([self.lo, lo], 1), torch.cat([self.hi, hi], 1)

    def _merge(self, other: Observer) -> None:
        assert isinstance(other, MeanMinMax)
        assert self.lo is not None and self.hi is not None
        assert other.lo is not None and other.hi is not None
        self.lo, self.hi = torch.cat([self.lo, other.lo], 1), torch.cat([self.hi, other.hi], 1)

    def _range(self) -> tuple[Tensor, Tensor]:
        assert self.lo is not None and self.hi is not None
        n = self.lo.shape[1]
        return self.lo.sort(1).values.sum(1) / n, self.hi.sort(1).values.sum(1) / n
