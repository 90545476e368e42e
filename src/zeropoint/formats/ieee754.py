"""The fields of one number in a floating-point format, for teaching and for debugging.

    x = (−1)^s · 1.f₂ · 2^(E − B)     normal:    significand "1.f", exponent E − B
    x = (−1)^s · 0.f₂ · 2^(1 − B)     subnormal: significand "0.f", exponent emin = 1 − B

e.g. 7.625 = 111.101₂ = 1.11101₂ · 2^2, so in fp32 s = 0, E = 2 + 127 = 129 = 10000001₂ and the
23 mantissa bits are 11101000000000000000000.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from zeropoint.formats.floating import FLOAT_FORMATS, FP32, FloatFormat

Kind = Literal["normal", "subnormal", "zero", "inf", "nan"]


@dataclass(frozen=True)
class Fields:
    """Sign, exponent and mantissa of ``value`` (x rounded to ``fmt``)."""

    fmt: FloatFormat
    value: float  # x rounded to the format, ties to even
    sign: int  # 0 or 1
    biased_exponent: int  # E, the stored exponent field
    exponent: int | None  # E − B (normal), 1 − B (subnormal, zero); None for Inf and NaN
    mantissa: int  # M, the stored mantissa field
    mantissa_bits: str  # M in binary, man_bits digits
    significand: str  # "1.11101", "0.0101" (trailing zeros dropped), "inf" or "nan"
    kind: Kind

    @property
    def exponent_bits(self) -> str:
        """E in binary, exp_bits digits."""
        return format(self.biased_exponent, f"0{self.fmt.exp_bits}b")

    @property
    def bits(self) -> str:
        """The whole code as ``sign exponent mantissa``, space separated."""
        return f"{self.sign} {self.exponent_bits} {self.mantissa_bits}".rstrip()

    def __str__(self) -> str:
        b = self.fmt.bias
        if self.exponent is None:
            value = f"{'-' if self.sign else '+'}{self.kind}"
            exp = f"{self.exponent_bits} = {self.biased_exponent} (all ones: {self.kind})"
        else:
            value = f"{'-' if self.sign else '+'}{self.significand}₂ × 2^{self.exponent}"
            value += f" = {self.value!r}"
            exp = f"{self.exponent_bits} = {self.biased_exponent}, unbiased {self.exponent}"
            exp += f" (bias {b})"
        return "\n".join(
            [
                f"{self.value!r} in {self.fmt.name} ({self.kind})",
                f"  bits         {self.bits}",
                f"  sign         {self.sign} ({'-' if self.sign else '+'})",
                f"  exponent     {exp}",
                f"  mantissa     {self.mantissa_bits or '(none)'} = {self.mantissa}",
                f"  value        {value}",
            ]
        )


def _resolve(fmt: FloatFormat | str | torch.dtype) -> FloatFormat:
    if isinstance(fmt, FloatFormat):
        return fmt
    if isinstance(fmt, str):
        if fmt not in FLOAT_FORMATS:
            raise ValueError(f"unknown float format {fmt!r}; expected one of {list(FLOAT_FORMATS)}")
        return FLOAT_FORMATS[fmt]
    if isinstance(fmt, torch.dtype):
        for f in FLOAT_FORMATS.values():
            if f.torch_dtype == fmt:
                return f
        raise ValueError(f"no FloatFormat for torch dtype {fmt}")
    raise TypeError(f"fmt must be a FloatFormat, a format name or a torch dtype, got {fmt!r}")


def ieee754_fields(x: float, fmt: FloatFormat | str | torch.dtype = FP32) -> Fields:
    """Round x to ``fmt`` (nearest, ties to even; overflow as ``fmt.round``) and split it into
    sign, exponent and mantissa.

    ``fmt`` is a FloatFormat (FP32, FP16, BF16, FP8_E4M3, any custom one), a registry name
    ("fp16") or a torch dtype (torch.bfloat16).
    """
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError(f"ieee754_fields expects a Python float, got {type(x).__name__}")
    f = _resolve(fmt)
    t = torch.tensor([float(x)], dtype=torch.float64)
    value = float(f.round(t)[0])
    s, e, m = (int(v[0]) for v in f.fields(t))
    man_str = format(m, f"0{f.man_bits}b") if f.man_bits else ""
    kind: Kind
    if math.isnan(value):
        kind, exponent, significand = "nan", None, "nan"
    elif math.isinf(value):
        kind, exponent, significand = "inf", None, "inf"
    else:
        kind = "normal" if e > 0 else ("zero" if m == 0 else "subnormal")
        exponent = e - f.bias if e > 0 else f.emin
        significand = f"{1 if e > 0 else 0}.{man_str.rstrip('0') or '0'}"
    return Fields(f, value, s, e, exponent, m, man_str, significand, kind)
