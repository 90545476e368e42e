"""Fixed-point requantization: the real multiplier M as M0·2^−shift, and gemmlowp's arithmetic.

Convention ``r = S·(q − Z)``. A layer y = W·x + b computed in integers: with r_x = S_x(q_x − Z_x),
r_w = S_w(q_w − Z_w), r_b = S_x·S_w·q_b (the bias quantized to int32 with scale S_x·S_w, Z = 0)
and r_y = S_y(q_y − Z_y),

    S_y(q_y − Z_y) = Σ_k S_x(q_x,k − Z_x)·S_w(q_w,k − Z_w) + S_x·S_w·q_b
    q_y = Z_y + M·(Σ_k (q_x,k − Z_x)(q_w,k − Z_w) + q_b),        M = S_x·S_w / S_y.

Everything but M is integer arithmetic; the int32 sum in brackets is the *accumulator*. M is
applied as an integer M0 and a shift, M ≈ M0·2^−shift with M0 ∈ [2^30, 2^31) (31 significant
bits), exactly as gemmlowp (``fixedpoint.h``) and TFLite (``MultiplyByQuantizedMultiplier``) do:

    MBQM(x, M0, shift) = RDBPOT(SRDHM(x·2^ls, M0), rs),   ls = max(31 − shift, 0),
                                                          rs = max(shift − 31, 0)

SRDHM(a, b) ("saturating rounding doubling high multiply") is round(a·b / 2^31) with gemmlowp's
nudge; RDBPOT(x, e) ("rounding divide by power of two") is x / 2^e rounded half away from zero.
TFLite's ``shift`` is 31 − ours (positive = left); ours is the n of M = M0·2^−n.

Per-channel weights give one S_w, hence one M, per output channel: every function here takes
tensors of (M0, shift) that broadcast against the accumulator. The output stage built on these
(zero point, clamp, cast; its float64 fast path) is `zeropoint.engine.requantize`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1

#: A left shift of 32 already saturates every non-zero int32; larger ones are clamped to it.
_MAX_LEFT_SHIFT = 32
#: Elements per block of the element-wise passes: below ATen's parallel grain size (32768),
#: so each op runs inline in the calling thread instead of forking the thread pool.
BLOCK_ELEMENTS = 32767


# --------------------------------------------------------------------------- M -> (M0, shift)


def _check_multiplier(m: object) -> float:
    if isinstance(m, bool) or not isinstance(m, (int, float)):
        raise TypeError(f"multiplier must be a real number, got {type(m).__name__}")
    m = float(m)
    if not math.isfinite(m) or m < 0:
        raise ValueError(f"multiplier must be finite and >= 0, got {m!r}")
    return m


def quantize_multiplier(m: float) -> tuple[int, int]:
    """(M0, shift) with M ≈ M0·2^−shift and M0 an int32 in [2^30, 2^31), for any M > 0.

    With M = q·2^e, q ∈ [1/2, 1) (``frexp``): M0 = round(q·2^31) (half away from zero, as
    TFLite's ``QuantizeMultiplier``), shift = 31 − e. When q·2^31 rounds up to 2^31, M0 is
    halved to 2^30 and shift decreases by one. The relative error |M0·2^−shift − M|/M is at
    most 2^−31. M ≥ 1 gives shift ≤ 30 (a left shift inside MBQM); M = 0 gives (0, 0).

    Example: M = 0.0072474273418460 = 0.92767…·2^−7 → (1992157658, 38).
    """
    m = _check_multiplier(m)
    if m == 0.0:
        return 0, 0
    q, e = math.frexp(m)
    # q·2^31 < 2^31 and the + 0.5 are exact in float64 (53-bit significand).
    m0 = math.floor(q * (1 << 31) + 0.5)
    if m0 == 1 << 31:
        m0 //= 2
        e += 1
    return m0, 31 - e


def quantize_multipliers(m: Tensor) -> tuple[Tensor, Tensor]:
    """`quantize_multiplier` elementwise (per output channel): int64 tensors (M0, shift)."""
    if not isinstance(m, Tensor):
        raise TypeError(f"multipliers must be a torch.Tensor, got {type(m).__name__}")
    m64 = m.detach().to(torch.float64)
    bad = ~torch.isfinite(m64) | (m64 < 0)
    if bool(bad.any()):
        raise ValueError(
            f"multipliers must be finite and >= 0; got {m64[bad].flatten()[0].item()!r} "
            f"({int(bad.sum())} bad of {m64.numel()})"
        )
    q, e = torch.frexp(m64)
    m0 = torch.floor(q * float(1 << 31) + 0.5).to(torch.int64)
    e = e.to(torch.int64)
    up = m0 == (1 << 31)
    m0 = torch.where(up, m0 // 2, m0)
    e = torch.where(up, e + 1, e)
    shift = torch.where(m64 == 0, torch.zeros_like(e), 31 - e)
    return m0, shift


def multiplier_error_table(
    m: float,
    frac_bits: tuple[int, ...] | range = range(8, 41),
    m0_bits: tuple[int, ...] = (8, 16, 24, 31),
) -> list[dict[str, float | int | str]]:
    """How well M0·2^−n approximates M, against n and against the bits kept in M0.

    Rows with ``kind="frac_bits"``: n fractional bits, M0 = round(M·2^n) (M0 grows with n).
    Rows with ``kind="m0_bits"``: M0 normalised to b bits, M0 ∈ [2^(b−1), 2^b), n chosen to fit
    (b = 31 is `quantize_multiplier`). Each row: kind, bits, m0, shift (= n), approx = M0·2^−n,
    abs_error = |approx − M|, rel_error = abs_error / M. |approx − M| ≤ 2^−(n+1) by rounding.
    """
    m = _check_multiplier(m)
    if m == 0.0:
        raise ValueError("multiplier_error_table needs M > 0")
    rows: list[dict[str, float | int | str]] = []

    def row(kind: str, bits: int, m0: int, n: int) -> dict[str, float | int | str]:
        approx = math.ldexp(m0, -n)
        err = abs(approx - m)
        return {"kind": kind, "bits": bits, "m0": m0, "shift": n, "approx": approx,
                "abs_error": err, "rel_error": err / m}  # fmt: skip

    for n in frac_bits:
        rows.append(row("frac_bits", n, math.floor(math.ldexp(m, n) + 0.5), n))
    q, e = math.frexp(m)
    for b in m0_bits:
        if not 1 <= b <= 52:
            raise ValueError(f"m0_bits entries must be in 1..52, got {b}")
        m0, ee = math.floor(math.ldexp(q, b) + 0.5), e
        if m0 == 1 << b:
            m0, ee = m0 // 2, e + 1
        rows.append(row("m0_bits", b, m0, b - ee))
    return rows


# --------------------------------------------------------------------------- gemmlowp primitives


def _as_int_tensor(x: Tensor | int, what: str) -> Tensor:
    if isinstance(x, bool):
        raise TypeError(f"{what} must be an integer tensor or int, got bool")
    if isinstance(x, int):
        return torch.tensor(x, dtype=torch.int64)
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor or int, got {type(x).__name__}")
    if x.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{what} must have dtype int32 or int64, got {x.dtype}")
    return x


def _check_int32_range(x: Tensor, what: str) -> None:
    if x.dtype == torch.int64 and x.numel():
        lo, hi = torch.aminmax(x)
        if int(lo) < INT32_MIN or int(hi) > INT32_MAX:
            raise ValueError(
                f"{what} must hold int32 values in [{INT32_MIN}, {INT32_MAX}], got range "
                f"[{int(lo)}, {int(hi)}]"
            )


def _result_dtype(*originals: object) -> torch.dtype:
    """int32 when every tensor argument is int32, else int64 (plain ints do not count)."""
    tensors = [x for x in originals if isinstance(x, Tensor)]
    if tensors and all(x.dtype == torch.int32 for x in tensors):
        return torch.int32
    return torch.int64


def saturating_rounding_doubling_high_mul(a: Tensor | int, b: Tensor | int) -> Tensor:
    """gemmlowp's SaturatingRoundingDoublingHighMul on int32 values: ≈ round(a·b / 2^31).

        ab = a·b (int64);  nudge = 2^30 if ab ≥ 0 else 1 − 2^30
        result = (ab + nudge) / 2^31, the division truncating toward zero (C++ semantics),
    except a = b = INT32_MIN (the only overflow), which saturates to INT32_MAX. Inputs are
    int32 or int64 tensors (or ints) holding int32 values, broadcast together; the result is
    int32 unless an input tensor is int64.
    """
    at, bt = _as_int_tensor(a, "a"), _as_int_tensor(b, "b")
    _check_int32_range(at, "a")
    _check_int32_range(bt, "b")
    a64, b64 = at.to(torch.int64), bt.to(torch.int64)
    ab = a64 * b64
    nudge = torch.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    high = torch.div(ab + nudge, 1 << 31, rounding_mode="trunc")
    overflow = (a64 == INT32_MIN) & (b64 == INT32_MIN)
    return torch.where(overflow, INT32_MAX, high).to(_result_dtype(a, b))


def rounding_divide_by_pot(x: Tensor | int, exponent: Tensor | int) -> Tensor:
    """gemmlowp's RoundingDivideByPOT: x / 2^exponent rounded to nearest, ties away from zero.

        mask = 2^e − 1;  remainder = x & mask;  threshold = (mask >> 1) + (1 if x < 0 else 0)
        result = (x >> e) + (1 if remainder > threshold else 0)
    ``exponent`` is an int or a tensor broadcasting against ``x`` (per element / per channel),
    in 0..62 (gemmlowp asserts ≤ 31; larger values continue the same rounding). ``x`` holds
    int32 values (int32 or int64 tensor).
    """
    xt, et = _as_int_tensor(x, "x"), _as_int_tensor(exponent, "exponent")
    _check_int32_range(xt, "x")
    if et.numel() and (int(et.min()) < 0 or int(et.max()) > 62):
        raise ValueError(f"exponent must be in 0..62, got range [{int(et.min())}, {int(et.max())}]")
    x64, e64 = xt.to(torch.int64), et.to(torch.int64)
    mask = (torch.ones_like(e64) << e64) - 1
    remainder = x64 & mask
    threshold = (mask >> 1) + (x64 < 0).to(torch.int64)
    out = (x64 >> e64) + (remainder > threshold).to(torch.int64)
    return out.to(_result_dtype(x))


Rounding = Literal["double", "single"]


@dataclass(frozen=True)
class _Fixed:
    """Constants of Z + MBQM(acc), precomputed once: ints (per tensor) or int64 tensors."""

    m0: Tensor | int
    left: Tensor | int  # saturating left shift ls (double rounding with M ≥ 1)
    has_left: bool
    sign_weight: Tensor | int  # 2^31 where rs > 0 (double rounding), else 0
    addend: Tensor | int  # rounding constant, plus Z·2^total when folded in
    total: Tensor | int  # total right shift
    zero_point: int  # added after the shift when it could not be folded into ``addend``


def _fixed(m0: Tensor, shift: Tensor, rounding: str = "double", zero_point: int = 0) -> _Fixed:
    """Constants for `_mbqm_` (see its docstring for the algebra)."""
    if rounding == "single":
        shift = torch.where(m0 == 0, 1, shift)  # M = 0: any shift gives 0
        if shift.numel() and int(shift.min()) < 1:
            raise ValueError(f"single rounding needs shift >= 1 (M < 2^30), got {int(shift.min())}")
        m0 = torch.where(shift > 62, 0, m0)  # |x·M| < 1/2 there: the result is 0
        total = shift.clamp(max=62)
        left, sign_weight, addend = (
            torch.zeros_like(total),
            torch.zeros_like(total),
            1 << (total - 1),
        )
    elif rounding == "double":
        left = (31 - shift).clamp(0, _MAX_LEFT_SHIFT)
        rs = (shift - 31).clamp(min=0)
        # |SRDHM| ≤ 2^31 − 1, so rs ≥ 32 always rounds to 0: use M0 = 0, rs = 1 (also 0)
        m0, rs = torch.where(rs >= 32, 0, m0), torch.where(rs >= 32, 1, rs)
        total = 31 + rs
        sign_weight = torch.where(rs > 0, 1 << 31, 0)
        addend = (1 << 30) + torch.where(rs > 0, 1 << (30 + rs), 0)
    else:
        raise ValueError(f"rounding must be 'double' or 'single', got {rounding!r}")
    folded = total.numel() == 0 or abs(zero_point) << int(total.max()) <= 1 << 60
    if folded:  # ⌊(v + Z·2^total) / 2^total⌋ = ⌊v / 2^total⌋ + Z, with no int64 overflow
        addend = addend + zero_point * (torch.ones_like(total) << total)
    has_left = bool((left > 0).any())
    if m0.dim() == 0:
        return _Fixed(int(m0), int(left), has_left, int(sign_weight), int(addend), int(total),
                      0 if folded else zero_point)  # fmt: skip
    uniform = bool((sign_weight == sign_weight.flatten()[0]).all())  # one scalar: add(alpha=)
    sw: Tensor | int = int(sign_weight.flatten()[0]) if uniform else sign_weight
    return _Fixed(m0, left, has_left, sw, addend, total, 0 if folded else zero_point)


def _fixed_map(f: _Fixed, fn: Callable[[Tensor], Tensor]) -> _Fixed:
    """`_Fixed` with ``fn`` applied to its per-channel tensors (reshape, repeat, slice)."""

    def v(x: Tensor | int) -> Tensor | int:
        return fn(x) if isinstance(x, Tensor) else x

    return _Fixed(v(f.m0), v(f.left), f.has_left, v(f.sign_weight), v(f.addend), v(f.total),
                  f.zero_point)  # fmt: skip


def _mbqm_(t: Tensor, f: _Fixed) -> Tensor:
    """In place on an int64 tensor of int32 values: Z + MBQM(t) in five to seven integer ops.

    "double" (gemmlowp). Let a = sat32(t·2^ls) and v = a·M0 + 2^30. Because M0 ≥ 0, SRDHM(a, M0)
    never saturates, and gemmlowp's truncating division equals a floor: for a·M0 ≥ 0 directly;
    for a·M0 < 0, trunc(w/2^31) = ⌊(w + 2^31 − 1)/2^31⌋ with w = a·M0 + 1 − 2^30. So
    h = SRDHM = ⌊v / 2^31⌋. RDBPOT(h, rs), rs ≥ 1, adds one exactly when the remainder exceeds
    2^(rs−1) − 1 + [h < 0]: it is ⌊(h + 2^(rs−1) − [h < 0]) / 2^rs⌋. [h < 0] may be replaced by
    [t < 0]: they differ only when h = 0, which is no tie. Nested floors merge,
    ⌊(⌊v/2^31⌋ + c)/2^rs⌋ = ⌊(v + c·2^31)/2^(31+rs)⌋ for integer c, so with Z folded in:

        Z + MBQM(t) = (t·M0 + 2^30 + 2^(30+rs) − [t < 0]·2^31 + Z·2^(31+rs)) >> (31 + rs)

    (rs = 0: (v + Z·2^31) >> 31). "single": (t·M0 + 2^(shift−1) + Z·2^shift) >> shift. Every
    term stays below 2^63: |t·M0| < 2^62, the rest below 2^62 (Z is added after the shift when
    Z·2^total would not fit).
    """
    if f.has_left:
        t.bitwise_left_shift_(f.left).clamp_(INT32_MIN, INT32_MAX)
    sign = t >> 63 if not (isinstance(f.sign_weight, int) and f.sign_weight == 0) else None
    t.mul_(f.m0)
    if sign is not None:
        if isinstance(f.sign_weight, int):
            t.add_(sign, alpha=f.sign_weight)
        else:
            t.add_(sign.mul_(f.sign_weight))
    t.add_(f.addend).bitwise_right_shift_(f.total)
    return t.add_(f.zero_point) if f.zero_point else t


def _check_m0_shift(m0: Tensor, shift: Tensor) -> None:
    if m0.numel() and (int(m0.min()) < 0 or int(m0.max()) > INT32_MAX):
        raise ValueError(f"m0 must be in [0, 2^31), got range [{int(m0.min())}, {int(m0.max())}]")
    if shift.numel() and (int(shift.min()) < -64 or int(shift.max()) > 128):
        raise ValueError(f"shift must be in −64..128, got [{int(shift.min())}, {int(shift.max())}]")


def multiply_by_quantized_multiplier(
    x: Tensor | int, m0: Tensor | int, shift: Tensor | int, rounding: Rounding = "double"
) -> Tensor:
    """TFLite's MultiplyByQuantizedMultiplier: ≈ round(x·M0·2^−shift).

    ``"double"`` (default; gemmlowp, TFLite's reference kernels): RDBPOT(SRDHM(x·2^ls, M0), rs),
    ls = max(31 − shift, 0), rs = max(shift − 31, 0). Two roundings: when x·M lies within
    2^−(rs+1) below a half-integer, the first lands on the tie and the second rounds it away
    from zero, so about 2^−(rs+1) of results differ by one from round(x·M).
    ``"single"`` (TFLite's TFLITE_SINGLE_ROUNDING): ⌊(x·M0 + 2^(shift−1)) / 2^shift⌋, x·M rounded
    once, ties up; needs shift ≥ 1.
    ``x`` holds int32 values; ``m0`` in [0, 2^31) and ``shift`` broadcast against it (per
    channel). TFLite computes x·2^ls in int32, undefined on overflow; here it saturates.
    Result dtype as `saturating_rounding_doubling_high_mul`.
    """
    xt = _as_int_tensor(x, "x")
    m0t, st = _as_int_tensor(m0, "m0").to(torch.int64), _as_int_tensor(shift, "shift")
    _check_int32_range(xt, "x")
    _check_m0_shift(m0t, st.to(torch.int64))
    m0b, sb = torch.broadcast_tensors(m0t, st.to(torch.int64))
    out = xt.to(torch.int64, copy=True)
    out = out.expand(torch.broadcast_shapes(out.shape, m0b.shape)).clone()
    out = _mbqm_(out, _fixed(m0b, sb, rounding))
    if rounding == "single":  # M ≥ 1 can leave int32 (TFLite DCHECKs); saturate as "double" does
        out.clamp_(INT32_MIN, INT32_MAX)
    return out.to(_result_dtype(x))
