"""ACIQ: analytical clipping for a fitted Laplace or Gaussian (Banner, Nahshan & Soudry, 2019).

For M-bit uniform quantization of [−α, α] (2^M levels, step Δ = 2α/2^M) the expected squared
error is clipping noise plus rounding noise Δ²/12 = α²/(3·4^M):

  Laplace(0, b):  E(α) ≈ 2·b²·e^(−α/b) + α²/(3·4^M)
                  dE/dα = 0  ⇔  (α/b)·e^(α/b) = 3·4^M  ⇔  α*/b = W(3·4^M)   (Lambert W)
                  α*/b ≈ 2.83, 3.89, 5.03, 6.20, 7.41, 8.64, 9.89 for M = 2..8
  Gauss(0, σ²):   E(α) ≈ (α² + σ²)·[1 − erf(α/(√2σ))] − √(2/π)·α·σ·e^(−α²/(2σ²)) + α²/(3·4^M)
                  α*/σ ≈ 1.71, 2.15, 2.55, 2.94, 3.29, 3.61, 3.92 for M = 2..8 (minimised numerically)

The observer fits the distribution from mergeable statistics (mean and variance from moments,
the mean absolute deviation b = E|x − μ| from the histogram) and clips to [μ − α*, μ + α*].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from zeropoint.observers.estimators import _clip_to_data, bin_points, expected_sq_error
from zeropoint.observers.histogram import Histogram, HistogramObserver
from zeropoint.qparams import Scheme

DISTRIBUTIONS = ("laplace", "gauss", "auto")


def laplace_expected_mse(alpha: float, b: float, bits: int) -> float:
    """2·b²·e^(−α/b) + α²/(3·4^M)."""
    return 2.0 * b * b * math.exp(-alpha / b) + alpha * alpha / (3.0 * 4.0**bits)


def gauss_expected_mse(alpha: float, sigma: float, bits: int) -> float:
    """(α² + σ²)(1 − erf(α/√2σ)) − √(2/π)·α·σ·e^(−α²/2σ²) + α²/(3·4^M)."""
    clip = (alpha**2 + sigma**2) * math.erfc(alpha / (math.sqrt(2.0) * sigma)) - math.sqrt(
        2.0 / math.pi
    ) * alpha * sigma * math.exp(-(alpha**2) / (2.0 * sigma**2))
    return clip + alpha * alpha / (3.0 * 4.0**bits)


def laplace_clip_ratio(bits: int) -> float:
    """α*/b = W(3·4^M), by Newton's method on x·e^x = 3·4^M (in log form: x + ln x = ln c)."""
    if bits < 1:
        raise ValueError(f"bits={bits} must be >= 1")
    log_c = math.log(3.0) + bits * math.log(4.0)
    x = max(log_c - math.log(log_c), 0.5)
    for _ in range(100):
        step = (x + math.log(x) - log_c) / (1.0 + 1.0 / x)
        x -= step
        if abs(step) < 1e-14:
            break
    return x


def gauss_clip_ratio(bits: int) -> float:
    """α*/σ minimising `gauss_expected_mse` (golden-section search on [0.1, 20])."""
    if bits < 1:
        raise ValueError(f"bits={bits} must be >= 1")
    lo, hi = 0.1, 20.0
    g = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = gauss_expected_mse(a, 1.0, bits), gauss_expected_mse(b, 1.0, bits)
    for _ in range(200):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = gauss_expected_mse(a, 1.0, bits)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = gauss_expected_mse(b, 1.0, bits)
    return (lo + hi) / 2.0


def mean_abs_deviation(hist: Histogram, center: Tensor) -> Tensor:
    """E|x − μ| per row from bin centres (error at most half a bin width)."""
    n = hist.bins
    idx = torch.arange(n, dtype=torch.float64)
    centres = -hist.radius.unsqueeze(1) + (idx + 0.5) * hist.bin_width.unsqueeze(1)
    dev = (centres - center.unsqueeze(1)).abs()
    return (hist.counts * dev).sum(1) / hist.count.clamp(min=1)


class ACIQ(HistogramObserver):
    """Analytical clip for a fitted Laplace ('laplace'), Gaussian ('gauss'), or whichever of the
    two gives the lower expected error on the observed histogram ('auto')."""

    def __init__(
        self, scheme: Scheme | None = None, distribution: str = "auto", bins: int = 4096
    ) -> None:
        super().__init__(scheme, bins)
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution={distribution!r} must be one of {DISTRIBUTIONS}")
        self.distribution = distribution

    def estimate(self, hist: Histogram) -> tuple[Tensor, Tensor]:
        bits = self.scheme.bits
        mu = hist.mean()
        if self.scheme.symmetric:
            mu = torch.zeros_like(mu)
        candidates: dict[str, Tensor] = {}
        if self.distribution in ("laplace", "auto"):
            candidates["laplace"] = laplace_clip_ratio(bits) * mean_abs_deviation(hist, mu)
        if self.distribution in ("gauss", "auto"):
            sigma = (hist.std() ** 2 + (hist.mean() - mu) ** 2).sqrt()
            candidates["gauss"] = gauss_clip_ratio(bits) * sigma
        ranges = {k: _clip_to_data(hist, mu - a, mu + a) for k, a in candidates.items()}
        if len(ranges) == 1:
            return next(iter(ranges.values()))
        points, weights = bin_points(hist, sub=4)
        los = torch.stack([ranges[k][0] for k in ("laplace", "gauss")], dim=1)
        his = torch.stack([ranges[k][1] for k in ("laplace", "gauss")], dim=1)
        best = expected_sq_error(points, weights, los, his, self.scheme).argmin(1, keepdim=True)
        return los.gather(1, best).squeeze(1), his.gather(1, best).squeeze(1)
