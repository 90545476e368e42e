"""Fixed-point Q formats: an integer code q with an implied binary point n bits from the right.

    value = q · 2^−n                      resolution 2^−n
    encode: q = clamp(round(x · 2^n), q_min, q_max)

Unsigned UQm.n: m integer and n fractional bits, q in [0, 2^(m+n) − 1], range [0, 2^m − 2^−n].
Signed Qm.n (ARM convention): a sign bit plus m integer and n fractional bits, m + n + 1 bits of
two's complement, q in [−2^(m+n), 2^(m+n) − 1], range [−2^m, 2^m − 2^−n]. So Q0.15 is the
16-bit DSP format with range [−1, 1 − 2^−15], and UQ3.3 stores 7.625 = 111.101₂ as q = 61.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, overload

import torch
from torch import Tensor

from zeropoint.validation import check_finite

Overflow = Literal["saturate", "error"]
OVERFLOW_MODES: tuple[str, ...] = ("saturate", "error")
FIXED_ROUNDING_MODES: tuple[str, ...] = ("half_even", "half_away", "floor")

#: Codes stay below 2^53, so every code and every value q · 2^−n is exact in float64.
MAX_FIXED_BITS = 53


@dataclass(frozen=True)
class FixedPoint:
    """A Qm.n fixed-point format (see the module docstring for the ranges).

    overflow: "saturate" clamps codes to [q_min, q_max]; "error" raises ValueError naming the
    value and the range. rounding: "half_even" (default), "half_away" (from zero) or "floor"
    (two's-complement truncation), as in ``zeropoint.functional.round_values``.
    """

    int_bits: int
    frac_bits: int
    signed: bool = False
    overflow: Overflow = "saturate"
    rounding: str = "half_even"

    def __post_init__(self) -> None:
        for what, v in (("int_bits", self.int_bits), ("frac_bits", self.frac_bits)):
            if not isinstance(v, int) or isinstance(v, bool):
                raise TypeError(f"FixedPoint.{what} must be an int, got {v!r}")
            if v < 0:
                raise ValueError(f"FixedPoint.{what}={v} is out of range: expected ≥ 0")
        if not isinstance(self.signed, bool):
            raise TypeError(f"FixedPoint.signed must be a bool, got {self.signed!r}")
        if not 1 <= self.total_bits <= MAX_FIXED_BITS:
            raise ValueError(
                f"FixedPoint {self.name} has {self.total_bits} bits; expected 1..{MAX_FIXED_BITS}"
            )
        if self.overflow not in OVERFLOW_MODES:
            raise ValueError(f"FixedPoint.overflow={self.overflow!r}; expected {OVERFLOW_MODES}")
        if self.rounding not in FIXED_ROUNDING_MODES:
            raise ValueError(
                f"FixedPoint.rounding={self.rounding!r}; expected one of {FIXED_ROUNDING_MODES}"
            )

    @property
    def name(self) -> str:
        """ "Qm.n" for signed formats, "UQm.n" for unsigned ones (ARM notation)."""
        return f"{'' if self.signed else 'U'}Q{self.int_bits}.{self.frac_bits}"

    @property
    def total_bits(self) -> int:
        """m + n, plus one sign bit when signed."""
        return self.int_bits + self.frac_bits + int(self.signed)

    @property
    def code_min(self) -> int:
        return -(1 << (self.int_bits + self.frac_bits)) if self.signed else 0

    @property
    def code_max(self) -> int:
        return (1 << (self.int_bits + self.frac_bits)) - 1

    @property
    def resolution(self) -> float:
        """The step 2^−n between neighbouring values."""
        return math.ldexp(1.0, -self.frac_bits)

    @property
    def min(self) -> float:
        """q_min · 2^−n: −2^m signed, 0 unsigned."""
        return math.ldexp(self.code_min, -self.frac_bits)

    @property
    def max(self) -> float:
        """q_max · 2^−n = 2^m − 2^−n."""
        return math.ldexp(self.code_max, -self.frac_bits)

    @property
    def dynamic_range_db(self) -> float:
        """20 · log10(q_max − q_min): the span over one step, as for IntFormat."""
        return 20 * math.log10(self.code_max - self.code_min) if self.code_max > 0 else 0.0

    def _codes(self, x: Tensor) -> Tensor:
        from zeropoint.functional import round_values  # functional → qparams → formats: cycle

        if x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"{self.name} expects a real tensor, got dtype {x.dtype}")
        xd = x.to(torch.float64)
        check_finite(xd, f"{self.name} input")
        q = round_values(xd * math.ldexp(1.0, self.frac_bits), self.rounding)  # exact: 2^n
        over = (q < self.code_min) | (q > self.code_max)
        if bool(over.any()):
            if self.overflow == "error":
                bad = xd[over]
                raise ValueError(
                    f"{int(over.sum())} value(s) outside the range of {self.name} "
                    f"[{self.min!r}, {self.max!r}] (resolution {self.resolution!r}), "
                    f"e.g. {float(bad[0])!r}; use overflow='saturate' to clamp them"
                )
            q = q.clamp(self.code_min, self.code_max)
        return q.to(torch.int64)

    @overload
    def encode(self, x: float) -> int: ...
    @overload
    def encode(self, x: Tensor) -> Tensor: ...
    def encode(self, x: float | Tensor) -> int | Tensor:
        """The integer code q = round(x · 2^n), saturated or checked against [q_min, q_max].

        Python floats give an int, tensors an int64 tensor. NaN and ±Inf raise ValueError.
        """
        if isinstance(x, Tensor):
            return self._codes(x)
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise TypeError(f"{self.name}.encode expects a float or a Tensor, got {x!r}")
        return int(self._codes(torch.tensor([float(x)], dtype=torch.float64))[0])

    @overload
    def decode(self, code: int) -> float: ...
    @overload
    def decode(self, code: Tensor) -> Tensor: ...
    def decode(self, code: int | Tensor) -> float | Tensor:
        """value = q · 2^−n. Tensors give float32 when total_bits ≤ 24 (exact), else float64."""
        if isinstance(code, Tensor):
            if code.is_floating_point() or code.is_complex() or code.dtype == torch.bool:
                raise TypeError(f"{self.name}.decode expects integer codes, got {code.dtype}")
            c = code.to(torch.int64)
            bad = (c < self.code_min) | (c > self.code_max)
            if bool(bad.any()):
                raise ValueError(
                    f"{int(bad.sum())} code(s) outside {self.name}'s "
                    f"[{self.code_min}, {self.code_max}], e.g. {int(c[bad][0])}"
                )
            v = c.to(torch.float64) * math.ldexp(1.0, -self.frac_bits)
            return v.to(torch.float32 if self.total_bits <= 24 else torch.float64)
        if isinstance(code, bool) or not isinstance(code, int):
            raise TypeError(f"{self.name}.decode expects an int or a Tensor, got {code!r}")
        if not self.code_min <= code <= self.code_max:
            raise ValueError(
                f"code {code} is outside {self.name}'s [{self.code_min}, {self.code_max}]"
            )
        return math.ldexp(code, -self.frac_bits)

    @overload
    def round(self, x: float) -> float: ...
    @overload
    def round(self, x: Tensor) -> Tensor: ...
    def round(self, x: float | Tensor) -> float | Tensor:
        """decode(encode(x)): x rounded to a multiple of 2^−n inside [min, max]."""
        if isinstance(x, Tensor):
            return self.decode(self.encode(x))
        return self.decode(self.encode(x))

    def to_binary(self, x: float) -> str:
        """The stored bits of encode(x) with the binary point in place.

        Signed formats show the two's-complement pattern, sign bit first: Q3.3 gives −0.125 as
        "1111.111". An unsigned format with no integer bits starts with the point: UQ0.3 → ".101".
        """
        q = self.encode(x)
        pattern = format(q % (1 << self.total_bits), f"0{self.total_bits}b")
        n = self.frac_bits
        return pattern if n == 0 else f"{pattern[:-n]}.{pattern[-n:]}"
