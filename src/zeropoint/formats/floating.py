"""Binary floating-point formats: IEEE-754 (fp32, fp16, bf16) and low precision (fp8, fp4).

A format with e exponent bits, m mantissa bits and bias B stores a sign s, a biased exponent E
(0 ≤ E < 2^e) and a mantissa M (0 ≤ M < 2^m). With emin = 1 − B the value is

    normal    (E ≥ 1):  (−1)^s · (1 + M / 2^m) · 2^(E − B)
    subnormal (E = 0):  (−1)^s · (M / 2^m) · 2^emin             (M = 0: signed zero)

except for the special codes, chosen by ``specials`` (OCP 8-bit FP spec, 2023):

    "ieee": E = 2^e − 1 is Inf (M = 0) or NaN (M ≠ 0)      fp32, fp16, bf16, fp8 e5m2
    "fn":   finite only; E = 2^e − 1 is normal, except that
            M = 2^m − 1 there is NaN                         fp8 e4m3fn (max 448)
    "none": no Inf and no NaN; every code is a number        fp4 e2m1 (max 6)

Rounding is to nearest, ties to even, computed exactly in float64 (every format here has
at most 32 bits and a range inside float64's, so the steps below have no rounding error):

    k = max(⌊log2|x|⌋, emin)                  exponent of x's binade (subnormals share emin)
    q = 2^(k − m)                              the spacing (ulp) of the format in that binade
    round(x) = sign(x) · q · rint(|x| / q)     rint: nearest integer, ties to even

With the exponent unbounded above, |round(x)| > max is an overflow: Inf ("ieee"), NaN ("fn"),
an error ("none"), or ±max with ``saturate=True``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, NamedTuple, overload

import torch
from torch import Tensor

Specials = Literal["ieee", "fn", "none"]
SPECIALS: tuple[str, ...] = ("ieee", "fn", "none")

# (exp_bits, man_bits, bias, specials) → the torch dtype with exactly that encoding.
_TORCH_DTYPES: tuple[tuple[int, int, int, str, torch.dtype], ...] = (
    (8, 23, 127, "ieee", torch.float32),
    (5, 10, 15, "ieee", torch.float16),
    (8, 7, 127, "ieee", torch.bfloat16),
    (4, 3, 7, "fn", torch.float8_e4m3fn),
    (5, 2, 15, "ieee", torch.float8_e5m2),
)


class BitFields(NamedTuple):
    """Per-element fields of a format's code: sign bit, biased exponent E, mantissa M (int32)."""

    sign: Tensor
    exponent: Tensor
    mantissa: Tensor


def _pow2(k: Tensor) -> Tensor:
    """2^k as float64, built from its bit pattern (exact for −1074 ≤ k ≤ 1023)."""
    k = k.to(torch.int64)
    normal = ((k + 1023).clamp(min=1) << 52).view(torch.float64)
    subnormal = (torch.ones_like(k) << (k + 1074).clamp(0, 51)).view(torch.float64)
    return torch.where(k >= -1022, normal, subnormal)


def _check_int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be an int, got {value!r} ({type(value).__name__})")
    return value


@dataclass(frozen=True, init=False)
class FloatFormat:
    """A binary floating-point format: 1 sign bit, ``exp_bits`` exponent bits, ``man_bits``
    mantissa bits, exponent ``bias`` (default 2^(e−1) − 1) and the ``specials`` rule above.

    ``FloatFormat("e3m4", 3, 4)`` makes a new format; the common ones are module constants.
    """

    name: str
    exp_bits: int
    man_bits: int
    bias: int
    specials: Specials

    def __init__(
        self,
        name: str,
        exp_bits: int,
        man_bits: int,
        bias: int | None = None,
        specials: Specials = "ieee",
    ) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"FloatFormat.name must be a non-empty str, got {name!r}")
        e = _check_int(exp_bits, "FloatFormat.exp_bits")
        m = _check_int(man_bits, "FloatFormat.man_bits")
        if e < 1:
            raise ValueError(f"FloatFormat.exp_bits={e} is out of range: expected ≥ 1")
        if m < 0:
            raise ValueError(f"FloatFormat.man_bits={m} is out of range: expected ≥ 0")
        if 1 + e + m > 32:
            raise ValueError(
                f"FloatFormat {name!r}: 1 + exp_bits + man_bits = {1 + e + m} bits; expected ≤ 32"
            )
        b = (1 << (e - 1)) - 1 if bias is None else _check_int(bias, "FloatFormat.bias")
        if specials not in SPECIALS:
            raise ValueError(f"FloatFormat.specials={specials!r}; expected one of {SPECIALS}")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "exp_bits", e)
        object.__setattr__(self, "man_bits", m)
        object.__setattr__(self, "bias", b)
        object.__setattr__(self, "specials", specials)
        top_exp, _ = self._max_code
        if top_exp == 0:
            raise ValueError(
                f"FloatFormat {name!r} (e={e}, m={m}, specials={specials!r}) has no normal "
                "numbers: every exponent code is subnormal or special"
            )
        if self.emax > 1023 or self.emin - m < -1074:
            raise ValueError(
                f"FloatFormat {name!r}: exponents 2^{self.emin - m}..2^{self.emax} exceed "
                "float64's 2^-1074..2^1023, which the exact rounding needs"
            )

    # ---- the numbers of the format -------------------------------------------------------

    @property
    def bits(self) -> int:
        """Total width 1 + e + m."""
        return 1 + self.exp_bits + self.man_bits

    @property
    def has_inf(self) -> bool:
        return self.specials == "ieee"

    @property
    def has_nan(self) -> bool:
        """ "ieee" formats need m ≥ 1 for a NaN code; "fn" formats always have one."""
        return self.specials == "fn" or (self.specials == "ieee" and self.man_bits >= 1)

    @property
    def _max_code(self) -> tuple[int, int]:
        """(E, M) of the largest finite value."""
        e_all, m_all = (1 << self.exp_bits) - 1, (1 << self.man_bits) - 1
        if self.specials == "ieee":
            return e_all - 1, m_all
        if self.specials == "fn":
            return (e_all, m_all - 1) if self.man_bits >= 1 else (e_all - 1, 0)
        return e_all, m_all

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal binade: 1 − bias."""
        return 1 - self.bias

    @property
    def emax(self) -> int:
        """Exponent of the largest finite binade: E_max − bias."""
        return self._max_code[0] - self.bias

    @property
    def max(self) -> float:
        """Largest finite value: (1 + M_max / 2^m) · 2^emax."""
        m = self.man_bits
        return math.ldexp((1 << m) + self._max_code[1], self.emax - m)

    @property
    def min(self) -> float:
        """Most negative finite value, −max (the sign bit makes every format symmetric)."""
        return -self.max

    @property
    def min_normal(self) -> float:
        """Smallest positive normal value 2^emin (torch.finfo's ``tiny``)."""
        return math.ldexp(1.0, self.emin)

    @property
    def min_subnormal(self) -> float:
        """Smallest positive value 2^(emin − m) (= min_normal when m = 0)."""
        return math.ldexp(1.0, self.emin - self.man_bits)

    @property
    def eps(self) -> float:
        """Machine epsilon 2^−m: the gap between 1 and the next larger value."""
        return math.ldexp(1.0, -self.man_bits)

    @property
    def dynamic_range_db(self) -> float:
        """20 · log10(max / min_subnormal), the span of magnitudes in decibels."""
        return 20 * math.log10(self.max / self.min_subnormal)

    @property
    def torch_dtype(self) -> torch.dtype | None:
        """The torch dtype with this exact encoding, or None where torch has none."""
        key = (self.exp_bits, self.man_bits, self.bias, self.specials)
        for e, m, b, s, dtype in _TORCH_DTYPES:
            if (e, m, b, s) == key:
                return dtype
        return None

    @property
    def fits_float32(self) -> bool:
        """True when every value of the format is exactly a float32."""
        return self.man_bits <= 23 and self.emax <= 127 and self.emin - self.man_bits >= -149

    @overload
    def ulp(self, x: float) -> float: ...
    @overload
    def ulp(self, x: Tensor) -> Tensor: ...
    def ulp(self, x: float | Tensor) -> float | Tensor:
        """Spacing of the format at x: ulp(x) = 2^(max(⌊log2|x|⌋, emin) − m) (Goldberg's ulp).

        ulp(0) is the subnormal step 2^(emin − m); the exponent is unbounded above, so values
        beyond ``max`` get the spacing they would have with more exponent bits.
        """
        if isinstance(x, Tensor):
            xd = x.to(torch.float64).abs()
            k = torch.frexp(torch.where(torch.isfinite(xd), xd, 0.0)).exponent - 1
            k = torch.where(xd == 0, self.emin, k)  # frexp(0) has exponent 0, not −∞
            out = _pow2(k.clamp(min=self.emin, max=1023) - self.man_bits)
            out = torch.where(torch.isfinite(xd), out, torch.nan)
            return out.to(self._out_dtype(x))
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise TypeError(f"ulp expects a float or a Tensor, got {type(x).__name__}")
        if not math.isfinite(x):
            return math.nan
        j = math.frexp(abs(x))[1] - 1 if x != 0 else self.emin
        return math.ldexp(1.0, max(j, self.emin) - self.man_bits)

    # ---- rounding, encoding, decoding ------------------------------------------------------

    def _out_dtype(self, x: Tensor) -> torch.dtype:
        if x.dtype == torch.float64 or not self.fits_float32:
            return torch.float64
        return torch.float32

    def _round64(self, x: Tensor, saturate: bool) -> Tensor:
        """round() in float64, before the cast to the output dtype."""
        if not isinstance(x, Tensor):
            raise TypeError(f"{self.name}.round expects a torch.Tensor, got {type(x).__name__}")
        if x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"{self.name}.round expects a real tensor, got dtype {x.dtype}")
        xd = x.detach().to(torch.float64)
        nan = torch.isnan(xd)
        if not self.has_nan and bool(nan.any()):
            raise ValueError(
                f"{self.name} has no NaN encoding, but the input holds "
                f"{int(nan.sum())} NaN value(s) of {xd.numel()}"
            )
        mag = xd.abs()
        finite = torch.isfinite(mag)
        mag = torch.where(finite, mag, 0.0)
        r = self.round_unbounded(mag)
        over = (r > self.max) | ~(finite | nan)
        if saturate:
            r = torch.where(over, self.max, r)
        elif bool(over.any()):
            if self.specials == "none":
                raise ValueError(
                    f"{self.name} has no Inf or NaN: {int(over.sum())} value(s) of "
                    f"{xd.numel()} round beyond ±{self.max:g} (largest |x| = "
                    f"{float(torch.where(nan, 0.0, xd.abs()).max()):g}); pass saturate=True "
                    "to clamp them to ±max"
                )
            r = torch.where(over, math.inf if self.specials == "ieee" else math.nan, r)
        r = torch.copysign(r, xd)
        return torch.where(nan, xd, r)

    def round_unbounded(self, x: Tensor) -> Tensor:
        """x rounded to the format's precision with its exponent unbounded above, in x's dtype
        (float32 or float64; finite x): the module docstring's rounding before any overflow rule,

            k = max(⌊log2|x|⌋, emin),  q = 2^(k − m),  round(x) = q · rint(x / q)

        (rint is odd-symmetric, so the sign needs no separate step). Exact: x / q lies in
        (−2^(m+1), 2^(m+1)) and q is a power of two, so both steps are exact, except that a
        value rounding up past the dtype's own largest binade becomes ±inf. ``round`` and the
        scaled quantizer (`zeropoint.functional`, which clamps to ±max itself) both use it:
        clamp(round_unbounded(x), −max, max) = round(x, saturate=True). Not differentiable."""
        if not isinstance(x, Tensor) or x.dtype not in (torch.float32, torch.float64):
            raise TypeError(
                f"{self.name}.round_unbounded expects a float32 or float64 tensor, got "
                f"{getattr(x, 'dtype', type(x).__name__)}"
            )
        x = x.detach()
        # frexp: |x| = f · 2^j with f in [0.5, 1), so ⌊log2|x|⌋ = j − 1 (frexp(0) gives j = 0)
        k = (torch.frexp(x).exponent - 1).clamp_(min=self.emin)
        q = _pow2(k - self.man_bits).to(x.dtype)
        return torch.round(x / q).mul_(q)

    def round(self, x: Tensor, saturate: bool = False) -> Tensor:
        """Round x to the nearest value of the format, ties to even (see the module docstring).

        Subnormals and signed zeros are kept: a tiny negative x rounds to −0. Overflow (the
        correctly rounded |x| exceeds ``max``: |x| > max + ulp(max)/2, or equal to it when max's
        mantissa is odd, as in fp16 (65520 → Inf) but not e4m3fn (464 → 448)) and ±Inf inputs
        give ±Inf for "ieee" formats, NaN for "fn" formats and a ValueError naming the count for
        "none" formats (which have neither); with ``saturate=True`` they give ±max. NaN in gives
        NaN out ("none": ValueError). Not differentiable: the input is detached.

        Returns float32 (exact whenever the format fits float32), float64 for float64 input or
        formats wider than float32. Bit-exact with ``x.to(dtype).float()`` for float32 x where
        torch has the dtype; torch 2.13's float8_e4m3fn cast saturates, so it matches
        ``saturate=True`` there. (torch casts float64 through float32, rounding twice; this
        rounds float64 input once.)
        """
        return self._round64(x, saturate).to(self._out_dtype(x))

    def fields(self, x: Tensor, saturate: bool = False) -> BitFields:
        """(sign, E, M) of round(x) as int32 tensors.

        For |r| = round(|x|) with k = max(⌊log2 r⌋, emin): n = r / 2^(k − m) is an integer;
        n ≥ 2^m means normal (E = k + B, M = n − 2^m), otherwise subnormal (E = 0, M = n).
        Inf is (E = 2^e − 1, M = 0); NaN is the canonical quiet NaN M = 2^(m−1) ("ieee") or
        M = 2^m − 1 ("fn"), with the input's sign bit.
        """
        r = self._round64(x, saturate)
        sign = torch.signbit(r).to(torch.int64)
        mag = r.abs()
        finite = torch.isfinite(mag)
        mag = torch.where(finite, mag, 0.0)
        k = (torch.frexp(mag).exponent - 1).clamp(min=self.emin).to(torch.int64)
        n = (mag / _pow2(k - self.man_bits)).to(torch.int64)
        normal = n >= (1 << self.man_bits)
        exponent = torch.where(normal, k + self.bias, 0)
        mantissa = torch.where(normal, n - (1 << self.man_bits), n)
        e_all = (1 << self.exp_bits) - 1
        # Canonical NaN: the quiet bit ("ieee", where has_nan implies m ≥ 1) or the one NaN code.
        nan_man = (1 << self.man_bits) - 1
        if self.specials == "ieee" and self.man_bits >= 1:
            nan_man = 1 << (self.man_bits - 1)
        exponent = torch.where(finite, exponent, e_all)
        mantissa = torch.where(torch.isinf(r), 0, mantissa)
        mantissa = torch.where(torch.isnan(r), nan_man, mantissa)
        return BitFields(sign.to(torch.int32), exponent.to(torch.int32), mantissa.to(torch.int32))

    def encode(self, x: Tensor, saturate: bool = False) -> Tensor:
        """Bit patterns of round(x): s · 2^(e+m) + E · 2^m + M, as int32.

        32-bit formats store the sign in int32's sign bit, so ``FP32.encode(x)`` equals
        ``x.view(torch.int32)`` (except NaN payloads, which become the canonical quiet NaN).
        """
        s, e, m = self.fields(x, saturate)
        bits = (s.to(torch.int64) << (self.exp_bits + self.man_bits)) | (
            e.to(torch.int64) << self.man_bits
        )
        bits = bits | m.to(torch.int64)
        bits = torch.where(bits >= 1 << 31, bits - (1 << 32), bits)
        return bits.to(torch.int32)

    def decode(self, bits: Tensor) -> Tensor:
        """Values of bit patterns: the module docstring's formula, specials included.

        Accepts any integer tensor holding codes in [−2^(b−1), 2^b) for a b-bit format; negative
        codes are read in two's complement, so ``t.view(torch.int8)`` of a float8 tensor decodes.
        Returns float32 (float64 for formats wider than float32).
        """
        if not isinstance(bits, Tensor):
            raise TypeError(f"{self.name}.decode expects a torch.Tensor, got {type(bits).__name__}")
        if bits.is_floating_point() or bits.is_complex() or bits.dtype == torch.bool:
            raise TypeError(f"{self.name}.decode expects an integer tensor, got {bits.dtype}")
        b = bits.to(torch.int64)
        lo, hi = -(1 << (self.bits - 1)), 1 << self.bits
        bad = (b < lo) | (b >= hi)
        if bool(bad.any()):
            raise ValueError(
                f"{self.name} codes must lie in [{lo}, {hi}); got {int(bad.sum())} outside, "
                f"e.g. {int(b[bad][0])}"
            )
        b = b & ((1 << self.bits) - 1)
        m_all, e_all = (1 << self.man_bits) - 1, (1 << self.exp_bits) - 1
        s = (b >> (self.exp_bits + self.man_bits)) & 1
        e = (b >> self.man_bits) & e_all
        m = b & m_all
        normal = e > 0
        n = torch.where(normal, m + (1 << self.man_bits), m).to(torch.float64)
        k = torch.where(normal, e - self.bias, self.emin)
        v = n * _pow2(k - self.man_bits)
        if self.specials == "ieee":
            v = torch.where(e == e_all, torch.where(m == 0, math.inf, math.nan), v)
        elif self.specials == "fn":
            v = torch.where((e == e_all) & (m == m_all), math.nan, v)
        v = torch.where(s == 1, -v, v)
        return v.to(torch.float64 if not self.fits_float32 else torch.float32)


FP32 = FloatFormat("fp32", 8, 23)
FP16 = FloatFormat("fp16", 5, 10)
BF16 = FloatFormat("bf16", 8, 7)
#: OCP fp8 E4M3 in its "fn" variant (finite, one NaN code), as torch.float8_e4m3fn: max 448.
FP8_E4M3 = FloatFormat("fp8_e4m3fn", 4, 3, specials="fn")
FP8_E4M3FN = FP8_E4M3
FP8_E5M2 = FloatFormat("fp8_e5m2", 5, 2)
#: OCP MX fp4 E2M1: ±{0, 0.5, 1, 1.5, 2, 3, 4, 6}, no Inf or NaN.
FP4_E2M1 = FloatFormat("fp4_e2m1", 2, 1, specials="none")

#: Read-only registry name → format (a table of values, not a class hierarchy).
FLOAT_FORMATS: Mapping[str, FloatFormat] = MappingProxyType(
    {f.name: f for f in (FP32, FP16, BF16, FP8_E4M3, FP8_E5M2, FP4_E2M1)}
)
