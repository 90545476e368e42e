"""Logarithmic (power-of-two) quantization: levels ±α·2^−k, so multiplies become shifts.

Miyashita, Lee & Murmann 2016, "Convolutional neural networks using logarithmic data
representation"; Zhou et al. 2017, "Incremental network quantization" (INQ).

Levels, for b bits:
  signed   (1 sign bit + (b−1) exponent bits):  {0} ∪ {±α·2^−k : k = 0..K−1},  K = 2^(b−1) − 1
  unsigned (b exponent bits):                     {0} ∪ { α·2^−k : k = 0..K−1},  K = 2^b − 1
one exponent code being reserved for zero. The step between neighbouring levels, α·2^−(k+1),
grows exponentially with the magnitude: fine resolution near zero, coarse at the top.

Code layout: the magnitude code m ∈ [0, K] is 0 for the value 0 and m = K − k for α·2^−k
(monotone in |r|); a signed code is  q = s·2^(b−1) + m  with sign bit s = 1 for negatives.
The negative-zero code 2^(b−1) decodes to 0 and is never produced by `encode`.

Rounding of a magnitude |r| between two levels a = α·2^−(k+1) and 2a = α·2^−k:
  "log"    — nearest in the log domain, k̂ = round(log2(α/|r|)) (Miyashita et al.): |r| goes up
             to 2a iff |r| ≥ √2·a (the geometric mean). Relative error ≤ √2 − 1 ≈ 0.414.
  "linear" — the true nearest level (INQ): |r| goes up iff |r| ≥ 1.5·a (the arithmetic mean),
             so it minimises |Q(r) − r|. Relative error ≤ 1/3.
Ties go to the larger magnitude. Below the smallest level s = α·2^−(K−1), values with
|r| < s/2 go to 0 and values in [s/2, s) to s, in both modes. Values beyond α saturate at ±α.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from zeropoint.nonuniform.codebook import check_bits, check_codes, code_dtype
from zeropoint.validation import check_finite, check_nonempty, check_tensor

LOG_BITS = (2, 8)
LogRounding = Literal["log", "linear"]
ROUNDINGS: tuple[str, ...] = ("log", "linear")


@dataclass(frozen=True)
class LogQuantizer:
    """A fitted power-of-two quantizer: Q(r) = sign(r)·α·2^−k or 0 (see the module docstring)."""

    alpha: float
    bits: int
    signed: bool = True
    rounding: str = "log"

    def __post_init__(self) -> None:
        check_bits(self.bits, *LOG_BITS, "LogQuantizer bits")
        if not isinstance(self.alpha, (int, float)) or isinstance(self.alpha, bool):
            raise TypeError(f"LogQuantizer.alpha must be a float, got {type(self.alpha).__name__}")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"LogQuantizer.alpha={self.alpha!r} must be finite and > 0")
        if self.rounding not in ROUNDINGS:
            raise ValueError(
                f"LogQuantizer.rounding={self.rounding!r} is unknown: expected one of {ROUNDINGS}"
            )
        if not isinstance(self.signed, bool):
            raise TypeError(f"LogQuantizer.signed must be a bool, got {self.signed!r}")
        object.__setattr__(self, "alpha", float(self.alpha))

    @classmethod
    def fit(
        cls,
        x: Tensor,
        bits: int,
        signed: bool = True,
        rounding: LogRounding = "log",
        power_of_two_scale: bool = True,
    ) -> LogQuantizer:
        """Choose the top level α from M = max|x|.

        ``power_of_two_scale=True``: α = 2^⌈log2 M⌉, the smallest power of two ≥ M, so every
        level is a power of two and dequantization is a pure shift (Miyashita et al.'s FSR is
        such an integer exponent). ``False``: α = M, the top level sits on the largest value.
        An all-zero tensor gets α = 1 (any α represents it exactly). ``signed=False`` is for
        non-negative data (e.g. post-ReLU activations) and rejects negative values.
        """
        x = check_tensor(x, "x")
        check_nonempty(x, "x")
        check_finite(x, "x")
        check_bits(bits, *LOG_BITS, "LogQuantizer bits")
        if not signed and bool((x < 0).any()):
            raise ValueError(
                f"unsigned log quantization needs non-negative data, got min {x.min().item()}"
            )
        m = float(x.detach().abs().max())
        if m == 0.0:
            alpha = 1.0
        elif power_of_two_scale:
            mantissa, exponent = math.frexp(m)  # m = mantissa·2^exponent, mantissa in [0.5, 1)
            alpha = m if mantissa == 0.5 else math.ldexp(1.0, exponent)
        else:
            alpha = m
        return cls(alpha, bits, signed, rounding)

    @property
    def name(self) -> str:
        sign = "signed" if self.signed else "unsigned"
        return f"log2 {self.bits}-bit {sign} ({self.rounding} rounding)"

    @property
    def n_exponents(self) -> int:
        """K: the number of non-zero magnitudes α·2^−k, k = 0..K−1."""
        return (1 << (self.bits - 1 if self.signed else self.bits)) - 1

    def magnitudes(self) -> Tensor:
        """Magnitude table indexed by the magnitude code m: [0, α·2^−(K−1), …, α/2, α] (float64)."""
        k = self.n_exponents
        exps = torch.arange(1 - k, 1, dtype=torch.int64)
        powers = torch.ldexp(torch.full((k,), self.alpha, dtype=torch.float64), exps)
        return torch.cat([powers.new_zeros(1), powers])

    def levels(self) -> Tensor:
        """The sorted distinct representable reals (float32; levels below float32's range
        flush to 0 and merge with it)."""
        mags = self.magnitudes().float()
        values = torch.cat([-mags[1:], mags]) if self.signed else mags  # one zero, +0.0
        return torch.unique(values)

    def thresholds(self) -> Tensor:
        """Decision thresholds on |r| between magnitude codes m−1 and m (float64, length K):
        s/2 between 0 and s, then √2·a ("log") or 1.5·a ("linear") above each level a."""
        mags = self.magnitudes()
        factor = math.sqrt(2.0) if self.rounding == "log" else 1.5
        return torch.cat([mags[1:2] / 2, mags[1:-1] * factor])

    def encode(self, x: Tensor) -> Tensor:
        """Codes q = s·2^(b−1) + m (signed) or m (unsigned), same shape as ``x``."""
        x = check_tensor(x, "x")
        check_finite(x, "x")
        xd = x.detach().double()
        # right=True: |r| on a threshold goes to the larger magnitude; beyond α saturates at K.
        m = torch.bucketize(xd.abs(), self.thresholds(), right=True)
        if self.signed:
            negative = (xd < 0) & (m > 0)  # zero is always code 0, never "negative zero"
            codes = m + negative.long() * (1 << (self.bits - 1))
        else:
            codes = torch.where(xd > 0, m, torch.zeros_like(m))  # negatives saturate at 0
        return codes.to(code_dtype(self.bits))

    def decode(self, codes: Tensor) -> Tensor:
        """Q = (−1)^s·mags[m] (same shape, float32)."""
        q = check_codes(codes, 1 << self.bits)
        mags = self.magnitudes()
        if not self.signed:
            return mags[q].float()
        half = 1 << (self.bits - 1)
        values = mags[q % half] * (1 - 2 * (q // half)).double()
        return (values + 0.0).float()  # + 0.0 turns the −0.0 of the negative-zero code into 0.0
