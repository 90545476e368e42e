"""zeropoint.engine.fixedpoint against a plain Python-int transcription of gemmlowp/TFLite.

The reference functions below are written from gemmlowp's fixedpoint.h and TFLite's
common.h/quantization_util.cc with Python ints (arbitrary precision, so no overflow can hide a
bug); they share no code with the kernel, which works on vectorised int64 tensors.
"""

from __future__ import annotations

import itertools
import math
import random
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from zeropoint.engine.fixedpoint import (
    INT32_MAX,
    INT32_MIN,
    multiplier_error_table,
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    quantize_multipliers,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
)
from zeropoint.engine.requantize import Requantizer, activation_range

# --------------------------------------------------------------------------- reference


def ref_srdhm(a: int, b: int) -> int:
    """gemmlowp SaturatingRoundingDoublingHighMul(std::int32_t a, std::int32_t b)."""
    overflow = a == b and a == INT32_MIN
    ab_64 = a * b
    nudge = (1 << 30) if ab_64 >= 0 else (1 - (1 << 30))
    num = ab_64 + nudge
    ab_x2_high32 = abs(num) // (1 << 31) * (1 if num >= 0 else -1)  # C++ '/' truncates
    return INT32_MAX if overflow else ab_x2_high32


def ref_rdbpot(x: int, exponent: int) -> int:
    """gemmlowp RoundingDivideByPOT(std::int32_t x, int exponent)."""
    mask = (1 << exponent) - 1
    remainder = x & mask  # two's complement semantics, as Python's & on negative ints
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def ref_mbqm(x: int, m0: int, shift: int) -> int:
    """TFLite MultiplyByQuantizedMultiplier(x, quantized_multiplier, tfl_shift = 31 − shift).

    TFLite's x·(1 << left_shift) overflows int32 undefinedly; the engine saturates, so does this.
    """
    tfl_shift = 31 - shift
    left_shift = tfl_shift if tfl_shift > 0 else 0
    right_shift = 0 if tfl_shift > 0 else -tfl_shift
    shifted = min(max(x * (1 << left_shift), INT32_MIN), INT32_MAX)
    return ref_rdbpot(ref_srdhm(shifted, m0), right_shift)


def ref_mbqm_single(x: int, m0: int, shift: int) -> int:
    """TFLite MultiplyByQuantizedMultiplier under TFLITE_SINGLE_ROUNDING (total_shift = shift).

    TFLite DCHECKs that the result fits int32; the engine saturates, so does this.
    """
    round_ = 1 << (shift - 1)
    return min(max((x * m0 + round_) >> shift, INT32_MIN), INT32_MAX)


def ref_quantize_multiplier(m: float) -> tuple[int, int]:
    """TFLite QuantizeMultiplier, exact with Fractions; returns (m0, 31 − tfl_shift)."""
    if m == 0:
        return 0, 0
    q, e = math.frexp(m)
    frac = Fraction(q) * (1 << 31)
    m0 = math.floor(frac + Fraction(1, 2))  # TfLiteRound: half away from zero (q > 0)
    if m0 == 1 << 31:
        m0, e = m0 // 2, e + 1
    return m0, 31 - e


EDGES = [INT32_MIN, INT32_MIN + 1, -(1 << 30), -12345, -2, -1, 0, 1, 2, 3, 12345, 1 << 30,
         INT32_MAX - 1, INT32_MAX]  # fmt: skip


def random_int32(rng: random.Random, n: int) -> list[int]:
    out = [rng.randint(INT32_MIN, INT32_MAX) for _ in range(n)]
    out += [rng.randint(-(1 << 16), 1 << 16) for _ in range(n)]  # accumulator-sized values
    return out


# --------------------------------------------------------------------------- quantize_multiplier


def test_quantize_multiplier_gemmlowp_example() -> None:
    # M = 0.0072474273418460 = 0.927670699756288·2^−7, M·2^38 = 1992157658.4553… → M0 rounds
    # to 1992157658 (not 1992157656: that would need M·2^38 to lie within 0.5 of it).
    m = 0.0072474273418460
    assert quantize_multiplier(m) == (1992157658, 38)
    assert Fraction(m) * 2**38 - 1992157658 == Fraction(477465, 1048576)
    # The worked example of that note: M·7091 = 51.39…, done in integers.
    assert int(multiply_by_quantized_multiplier(torch.tensor(7091), 1992157658, 38)) == 51


@pytest.mark.parametrize(
    ("m", "expected"),
    [
        (0.0, (0, 0)),
        (0.5, (1 << 30, 31)),
        (1.0, (1 << 30, 30)),
        (0.75, (3 << 29, 31)),
        (3.0, (3 << 29, 29)),  # M ≥ 1: shift < 31, a left shift
        (2.0**-40, (1 << 30, 70)),
        # q·2^31 = 2^31 − 1/4 rounds up to 2^31: halve M0, shift one less
        ((1 - 2.0**-33) * 2.0**-3, (1 << 30, 33)),
    ],
)
def test_quantize_multiplier_closed_forms(m: float, expected: tuple[int, int]) -> None:
    assert quantize_multiplier(m) == expected
    assert ref_quantize_multiplier(m) == expected


@settings(max_examples=400, deadline=None)
@given(st.floats(min_value=math.log(1e-12), max_value=math.log(1e6)))
def test_quantize_multiplier_relative_error(log_m: float) -> None:
    m = math.exp(log_m)
    m0, shift = quantize_multiplier(m)
    assert (m0, shift) == ref_quantize_multiplier(m)
    assert 1 << 30 <= m0 < 1 << 31
    assert abs(Fraction(m0) / Fraction(2) ** shift - Fraction(m)) / Fraction(m) < Fraction(1, 2**30)


def test_quantize_multipliers_matches_scalar() -> None:
    gen = torch.Generator().manual_seed(0)
    m = torch.exp(torch.empty(500, dtype=torch.float64).uniform_(-27, 14, generator=gen))
    m[::50] = 0.0
    m0, shift = quantize_multipliers(m)
    assert m0.dtype == shift.dtype == torch.int64
    assert [(int(a), int(b)) for a, b in zip(m0, shift)] == [
        quantize_multiplier(float(v)) for v in m
    ]


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_quantize_multiplier_rejects_bad_values(bad: float) -> None:
    with pytest.raises(ValueError, match="multiplier"):
        quantize_multiplier(bad)
    with pytest.raises(ValueError, match="multipliers"):
        quantize_multipliers(torch.tensor([0.5, bad]))
    with pytest.raises(TypeError):
        quantize_multiplier(True)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- primitives


def test_srdhm_matches_gemmlowp() -> None:
    rng = random.Random(1)
    a = EDGES * len(EDGES) + random_int32(rng, 2000)
    b = [e for e in EDGES for _ in EDGES] + random_int32(rng, 2000)
    got = saturating_rounding_doubling_high_mul(torch.tensor(a, dtype=torch.int32),
                                                 torch.tensor(b, dtype=torch.int32))  # fmt: skip
    assert got.dtype == torch.int32
    assert got.tolist() == [ref_srdhm(x, y) for x, y in zip(a, b)]
    # the only overflow: INT32_MIN·INT32_MIN saturates to INT32_MAX
    assert int(saturating_rounding_doubling_high_mul(INT32_MIN, INT32_MIN)) == INT32_MAX


def test_rdbpot_matches_gemmlowp_per_element_exponent() -> None:
    rng = random.Random(2)
    x = [e for e in EDGES for _ in range(32)] + random_int32(rng, 3000)
    exps = [i % 32 for i in range(len(EDGES) * 32)] + [rng.randint(0, 31) for _ in range(6000)]
    got = rounding_divide_by_pot(torch.tensor(x, dtype=torch.int64), torch.tensor(exps))
    assert got.tolist() == [ref_rdbpot(v, e) for v, e in zip(x, exps)]
    # ties go away from zero
    assert rounding_divide_by_pot(torch.tensor([5, -5, 6, -6, 7, -7]), 1).tolist() == [
        3, -3, 3, -3, 4, -4,
    ]  # fmt: skip
    with pytest.raises(ValueError, match="exponent"):
        rounding_divide_by_pot(torch.tensor([1]), 63)


def test_mbqm_matches_tflite_random_and_edges() -> None:
    rng = random.Random(3)
    xs, m0s, shifts = [], [], []
    for x in EDGES + random_int32(rng, 3000):
        xs.append(x)
        m0s.append(rng.choice([1 << 30, INT32_MAX, rng.randint(1 << 30, INT32_MAX)]))
        shifts.append(rng.choice([rng.randint(0, 75), 31, 30, 62, 63]))
    got = multiply_by_quantized_multiplier(
        torch.tensor(xs, dtype=torch.int32), torch.tensor(m0s), torch.tensor(shifts)
    )
    assert got.dtype == torch.int32
    assert got.tolist() == [ref_mbqm(*t) for t in zip(xs, m0s, shifts)]


def test_mbqm_single_rounding_matches_tflite_and_rounds_once() -> None:
    rng = random.Random(6)
    xs = EDGES + random_int32(rng, 2000)
    m0s = [rng.randint(1 << 30, INT32_MAX) for _ in xs]
    shifts = [rng.randint(1, 80) for _ in xs]
    got = multiply_by_quantized_multiplier(
        torch.tensor(xs, dtype=torch.int32), torch.tensor(m0s), torch.tensor(shifts), "single"
    )
    assert got.tolist() == [ref_mbqm_single(*t) for t in zip(xs, m0s, shifts)]
    # one rounding: |result − x·M| ≤ 1/2 everywhere, while gemmlowp's two can reach 1/2 + 2^−(rs+1)
    for x, m0, sh, y in zip(xs, m0s, shifts, got.tolist()):
        exact = Fraction(x * m0, 2**sh)
        if INT32_MIN <= exact <= INT32_MAX:  # else saturated
            assert abs(y - exact) <= Fraction(1, 2)
    # the double-rounding case: x·M = −166.49…, SRDHM gives −5328 = −166.5·2^5, RDBPOT → −167
    x, m0, sh = -9750, 1173455116, 36
    assert int(multiply_by_quantized_multiplier(torch.tensor(x), m0, sh)) == -167
    assert int(multiply_by_quantized_multiplier(torch.tensor(x), m0, sh, "single")) == -166
    with pytest.raises(ValueError, match="shift >= 1"):
        multiply_by_quantized_multiplier(torch.tensor([1]), 1 << 30, 0, "single")


@settings(max_examples=300, deadline=None)
@given(
    st.integers(INT32_MIN, INT32_MAX),
    st.floats(min_value=math.log(1e-12), max_value=math.log(1e3)),
)
def test_mbqm_property_close_to_real_product(x: int, log_m: float) -> None:
    m0, shift = quantize_multiplier(math.exp(log_m))
    got = int(multiply_by_quantized_multiplier(torch.tensor([x], dtype=torch.int32), m0, shift)[0])
    assert got == ref_mbqm(x, m0, shift)
    exact = Fraction(x * m0) / Fraction(2) ** shift
    if INT32_MIN < exact * 2 < INT32_MAX:  # not saturated by the left shift
        # SRDHM rounds x·M0/2^31 to an integer (error ≤ 1/2 in units of 2^−rs of the result),
        # RDBPOT rounds again: |error| ≤ 1/2 + 2^−(rs+1) < 1; a single rounding when rs = 0.
        rs = max(shift - 31, 0)
        bound = Fraction(1, 2) + (Fraction(1, 2 ** (rs + 1)) if rs else 0)
        assert abs(got - exact) <= bound


def test_primitives_validate_input() -> None:
    with pytest.raises(TypeError, match="int32 or int64"):
        multiply_by_quantized_multiplier(torch.tensor([1.0]), 1 << 30, 31)
    with pytest.raises(ValueError, match="int32 values"):
        saturating_rounding_doubling_high_mul(torch.tensor([1 << 40]), 3)
    with pytest.raises(ValueError, match="m0"):
        multiply_by_quantized_multiplier(torch.tensor([1]), 1 << 31, 31)


# --------------------------------------------------------------------------- error table


def test_multiplier_error_table_falls_with_fractional_bits() -> None:
    m = 0.0072474273418460
    rows = multiplier_error_table(m, frac_bits=range(8, 41))
    frac = [r for r in rows if r["kind"] == "frac_bits"]
    errors = [float(r["abs_error"]) for r in frac]
    assert [r["bits"] for r in frac] == list(range(8, 41))
    # doubling M0 is always a candidate at n + 1, so rounding never does worse: non-increasing
    assert all(e1 <= e0 for e0, e1 in itertools.pairwise(errors))
    assert all(e <= 2.0 ** -(n + 1) for e, n in zip(errors, range(8, 41)))
    assert errors[-1] < errors[0] * 2.0**-20
    assert frac[30]["m0"] == 1992157658 and frac[30]["shift"] == 38  # n = 38
    by_bits = {r["bits"]: r for r in rows if r["kind"] == "m0_bits"}
    assert (by_bits[31]["m0"], by_bits[31]["shift"]) == quantize_multiplier(m)
    assert by_bits[8]["m0"] == 237 and by_bits[16]["m0"] == 60796
    rel = [float(by_bits[b]["rel_error"]) for b in (8, 16, 24, 31)]
    assert rel == sorted(rel, reverse=True) and rel[-1] < 2.0**-31


# --------------------------------------------------------------------------- Requantizer


def ref_requantize(acc: list[int], m0: int, shift: int, zp: int, lo: int, hi: int) -> list[int]:
    return [min(max(zp + ref_mbqm(a, m0, shift), lo), hi) for a in acc]


def test_requantizer_per_tensor_and_fused_relu() -> None:
    rng = random.Random(4)
    acc = [rng.randint(-60000, 60000) for _ in range(3000)] + [INT32_MIN, INT32_MAX, 0]
    m = 0.0072474273418460
    r = Requantizer.from_multiplier(m, zero_point=10, dtype=torch.uint8)
    got = r(torch.tensor(acc, dtype=torch.int32))
    assert got.dtype == torch.uint8
    assert got.tolist() == ref_requantize(acc, 1992157658, 38, 10, 0, 255)
    single = Requantizer.from_multiplier(m, 10, torch.uint8, rounding="single")
    assert single(torch.tensor(acc, dtype=torch.int32)).tolist() == [
        min(max(10 + ref_mbqm_single(a, 1992157658, 38), 0), 255) for a in acc
    ]
    relu = r.clamped(*activation_range("relu", 0.05, 10, torch.uint8))
    assert relu(torch.tensor(acc, dtype=torch.int32)).tolist() == ref_requantize(
        acc, 1992157658, 38, 10, 10, 255
    )


def test_requantizer_per_channel_along_axis() -> None:
    gen = torch.Generator().manual_seed(5)
    w_scale = torch.rand(6, generator=gen, dtype=torch.float64) * 0.02 + 1e-3
    r = Requantizer.from_scales(0.05, w_scale, 0.1, zero_point=-3, dtype=torch.int8)
    acc = torch.randint(-20000, 20000, (2, 6, 4, 3), generator=gen, dtype=torch.int32)
    got = r(acc, channel_axis=1)
    assert got.dtype == torch.int8 and got.shape == acc.shape
    for c in range(6):
        m0, shift = quantize_multiplier(0.05 * float(w_scale[c]) / 0.1)
        expect = ref_requantize(acc[:, c].flatten().tolist(), m0, shift, -3, -128, 127)
        assert got[:, c].flatten().tolist() == expect
    with pytest.raises(ValueError, match="per-channel"):
        r(acc, channel_axis=2)


@pytest.mark.parametrize("rounding", ["double", "single"])
@pytest.mark.parametrize(
    ("zp", "dtype"), [(255, torch.uint8), (-100, torch.int8), (0, torch.int16)]
)
def test_requantizer_mixed_multipliers_and_zero_points(
    zp: int, dtype: torch.dtype, rounding: str
) -> None:
    # per channel: M ≥ 1 (left shift), M ∈ [1/2, 1) (rs = 0), typical, tiny (rs ≥ 32) and M
    # small enough that Z·2^(31+rs) no longer fits int64 and Z is added after the shift
    mult = [3.0, 0.75, 0.6, 1e-3, 2.0**-23 * 1.3, 1e-12, 0.0]
    rng = random.Random(7)
    acc = torch.tensor([[rng.randint(-(2**31), 2**31 - 1) for _ in mult] for _ in range(300)]
                       + [[INT32_MIN] * len(mult), [INT32_MAX] * len(mult), [-1] * len(mult)],
                       dtype=torch.int32)  # fmt: skip
    r = Requantizer.from_multiplier(
        torch.tensor(mult, dtype=torch.float64), zp, dtype, rounding=rounding
    )  # type: ignore[arg-type]
    got = r(acc, channel_axis=1)
    lo, hi = {torch.uint8: (0, 255), torch.int8: (-128, 127), torch.int16: (-32768, 32767)}[dtype]
    ref = ref_mbqm if rounding == "double" else ref_mbqm_single
    for c, m in enumerate(mult):
        m0, shift = quantize_multiplier(m)
        if rounding == "single" and m == 0.0:
            m0, shift = 0, 1
        expect = [min(max(zp + ref(int(a), m0, shift), lo), hi) for a in acc[:, c]]
        assert got[:, c].tolist() == expect, m


def test_requantizer_blocks_any_layout_and_float_input() -> None:
    # the output stage works through row blocks; check layouts that take each branch:
    # channels innermost, channels outer (contiguous), non-dense views, 0-d, float accumulators
    gen = torch.Generator().manual_seed(8)
    mult = torch.rand(3, generator=gen, dtype=torch.float64) * 1e-3 + 1e-4
    r = Requantizer.from_multiplier(mult, 7, torch.uint8)
    pairs = [quantize_multiplier(float(m)) for m in mult]

    def expect(acc: torch.Tensor, axis: int) -> torch.Tensor:
        moved = acc.movedim(axis, -1).reshape(-1, 3).long()
        cols = [[min(max(7 + ref_mbqm(int(a), *pairs[c]), 0), 255) for a in moved[:, c]]
                for c in range(3)]  # fmt: skip
        return torch.tensor(cols).t().reshape(acc.movedim(axis, -1).shape).movedim(-1, axis)

    cases = [
        (torch.randint(-(10**6), 10**6, (12000, 3), generator=gen), -1),  # two row blocks
        (torch.randint(-(10**6), 10**6, (3, 33000), generator=gen), 0),  # rows wider than a block
        (torch.randint(-(10**6), 10**6, (2, 3, 5, 7), generator=gen), 1),
        (torch.randint(-(10**6), 10**6, (2, 5, 7, 3), generator=gen).permute(0, 3, 1, 2), 1),
        (torch.randint(-(10**6), 10**6, (6, 9), generator=gen)[::2, ::3].t(), 1),  # not dense
    ]
    for acc, axis in cases:
        got = r.apply(acc, axis)
        assert got.shape == acc.shape and torch.equal(got.long(), expect(acc, axis))
        assert torch.equal(r.apply(acc.to(torch.float32), axis), got)  # exact float input
    scalar = Requantizer.from_multiplier(0.01, 3, torch.int8)
    assert scalar(torch.tensor(1000, dtype=torch.int32)).item() == 13


def test_relu6_range_and_requantizer_validation() -> None:
    assert activation_range("relu6", 6 / 200, 20, torch.uint8) == (20, 220)
    assert activation_range("relu6", 0.01, 20, torch.uint8) == (20, 255)
    assert activation_range(None, 1.0, 0, torch.int8) == (-128, 127)
    r = Requantizer.from_multiplier(0.5, 0, torch.uint8)
    with pytest.raises(TypeError, match="accumulator"):
        r(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="int32 values"):
        r(torch.tensor([1 << 33]))
    with pytest.raises(ValueError, match="zero point 300"):
        Requantizer.from_multiplier(0.5, 300, torch.uint8)
    with pytest.raises(ValueError, match="clamp"):
        r.clamped(-5, 100)
    with pytest.raises(ValueError, match="activation"):
        activation_range("gelu", 1.0, 0)
