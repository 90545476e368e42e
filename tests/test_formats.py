"""zeropoint.formats: floating point, IEEE-754 fields, fixed point and the format table.

References: torch's own casts and torch.finfo/iinfo, bit patterns read with ``.view``, closed
forms, and a brute-force nearest-value search over every code of a format. Comparisons are exact
(bit patterns, signed zeros included) unless a tolerance is stated next to them.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import zeropoint.formats as F
from zeropoint.formats import (
    BF16,
    FLOAT_FORMATS,
    FP4_E2M1,
    FP8_E4M3,
    FP8_E5M2,
    FP16,
    FP32,
    FixedPoint,
    FloatFormat,
    describe_formats,
    format_table,
    ieee754_fields,
)

E3M4 = FloatFormat("e3m4", 3, 4)
FP6_E2M3 = FloatFormat("fp6_e2m3", 2, 3, specials="none")  # OCP MX fp6: max 7.5
FP6_E3M2 = FloatFormat("fp6_e3m2", 3, 2, specials="none")  # OCP MX fp6: max 28
E4M2_FN = FloatFormat("e4m2fn", 4, 2, specials="fn")
TORCH_FORMATS = [
    (FP16, torch.float16),
    (BF16, torch.bfloat16),
    (FP8_E4M3, torch.float8_e4m3fn),
    (FP8_E5M2, torch.float8_e5m2),
]
SMALL_FORMATS = [FP8_E4M3, FP8_E5M2, FP4_E2M1, E3M4, FP6_E2M3, FP6_E3M2, E4M2_FN]

# torch 2.13's float8_e4m3fn cast saturates (finite overflow and ±Inf give ±448, see
# c10 Float8_e4m3fn.h); older releases gave NaN. Match whichever this torch does.
TORCH_E4M3_SATURATES = torch.tensor([500.0]).to(torch.float8_e4m3fn).float().item() == 448.0


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal as bit patterns (so −0 ≠ +0), with NaN matching NaN whatever its payload."""
    assert a.dtype == b.dtype and a.shape == b.shape
    nan_a, nan_b = torch.isnan(a), torch.isnan(b)
    assert torch.equal(nan_a, nan_b), f"NaN at {torch.nonzero(nan_a ^ nan_b)[:5].tolist()}"
    ia = a[~nan_a].view(torch.int32 if a.dtype == torch.float32 else torch.int64)
    ib = b[~nan_b].view(ia.dtype)
    bad = ia != ib
    assert not bool(bad.any()), (
        f"{int(bad.sum())} differ, e.g. {a[~nan_a][bad][:5].tolist()} vs {b[~nan_b][bad][:5]}"
    )


def all_codes(fmt: FloatFormat) -> torch.Tensor:
    return torch.arange(1 << fmt.bits, dtype=torch.int64)


def edge_values(fmt: FloatFormat) -> torch.Tensor:
    """Every finite value of fmt, the midpoints between neighbours (ties), the midpoints ± one
    float32 ulp, the overflow tie max + ulp(max)/2 and around it, ±0, ±Inf, NaN; as float32."""
    v = fmt.decode(all_codes(fmt)).double()
    pos = torch.unique(v[torch.isfinite(v) & (v >= 0)])  # sorted
    top = torch.tensor([fmt.max + fmt.ulp(fmt.max)], dtype=torch.float64)
    grid = torch.cat([pos, top])
    mids = ((grid[1:] + grid[:-1]) / 2).float()  # exact: m + 1 ≤ 24 bits
    up, down = torch.nextafter(mids, mids + 1), torch.nextafter(mids, mids - 1)
    specials = torch.tensor([0.0, math.inf, math.nan, 2 * fmt.max, 1e30])
    x = torch.cat([pos.float(), mids, up, down, specials])
    return torch.cat([x, -x])


def random_binades(n: int, lo: int, hi: int, seed: int = 0) -> torch.Tensor:
    """randn · 2^k with k uniform in [lo, hi): many binades, subnormals and overflow included."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g) * torch.exp2(torch.randint(lo, hi, (n,), generator=g))


# ---- FloatFormat: the numbers of each format ---------------------------------------------


@pytest.mark.parametrize("fmt,dtype", [(FP32, torch.float32), *TORCH_FORMATS])
def test_constants_match_torch_finfo(fmt: FloatFormat, dtype: torch.dtype) -> None:
    fi = torch.finfo(dtype)
    assert fmt.torch_dtype == dtype
    assert fmt.bits == fi.bits
    assert fmt.max == fi.max and fmt.min == fi.min
    assert fmt.min_normal == fi.tiny
    assert fmt.eps == fi.eps
    # Smallest subnormal: the code 0...01, read by torch itself.
    one = torch.tensor([1], dtype={8: torch.int8, 16: torch.int16, 32: torch.int32}[fi.bits])
    assert fmt.min_subnormal == one.view(dtype).item()


def test_constants_closed_forms() -> None:
    assert (FP16.max, FP16.min_normal, FP16.min_subnormal, FP16.eps) == (
        65504.0,
        2.0**-14,
        2.0**-24,
        2.0**-10,
    )
    assert BF16.max == (2 - 2**-7) * 2.0**127  # ≈ 3.3895e38
    assert (FP8_E4M3.max, FP8_E4M3.min_normal, FP8_E4M3.min_subnormal) == (448.0, 2**-6, 2**-9)
    assert (FP8_E5M2.max, FP8_E5M2.min_normal, FP8_E5M2.min_subnormal) == (57344.0, 2**-14, 2**-16)
    assert (FP4_E2M1.max, FP4_E2M1.min_normal, FP4_E2M1.min_subnormal) == (6.0, 1.0, 0.5)
    assert FP16.dynamic_range_db == pytest.approx(20 * math.log10(65504 * 2**24), rel=1e-15)
    assert FP8_E4M3.dynamic_range_db == pytest.approx(20 * math.log10(448 * 2**9), rel=1e-15)
    assert FP4_E2M1.torch_dtype is None and E3M4.torch_dtype is None
    # e3m4: bias 3, max (1 + 15/16)·2^(7−1−3) = 15.5, smallest subnormal 2^(1−3−4).
    assert (E3M4.bias, E3M4.max, E3M4.min_normal, E3M4.min_subnormal) == (3, 15.5, 0.25, 2**-6)
    assert (FP6_E2M3.max, FP6_E3M2.max, E4M2_FN.max) == (7.5, 28.0, 1.5 * 2**8)


def test_registry_is_a_read_only_table() -> None:
    assert list(FLOAT_FORMATS) == ["fp32", "fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2", "fp4_e2m1"]
    assert FLOAT_FORMATS["fp8_e4m3fn"] is F.FP8_E4M3 is F.FP8_E4M3FN
    with pytest.raises(TypeError):
        FLOAT_FORMATS["x"] = E3M4  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        FP16.man_bits = 3  # type: ignore[misc]
    assert FloatFormat("fp16", 5, 10) == FP16 and hash(FloatFormat("fp16", 5, 10)) == hash(FP16)


def test_fp4_e2m1_values() -> None:
    """OCP MX spec table: codes 0..15 are ±{0, 0.5, 1, 1.5, 2, 3, 4, 6}."""
    pos = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    expected = torch.tensor(pos + [-v for v in pos])
    assert_same(FP4_E2M1.decode(all_codes(FP4_E2M1)), expected)


@pytest.mark.parametrize("fmt,dtype", TORCH_FORMATS)
def test_decode_every_code_matches_torch_view(fmt: FloatFormat, dtype: torch.dtype) -> None:
    """decode(bits) == the same bits viewed as the torch dtype, for all 2^8 or 2^16 codes."""
    int_dtype = torch.int8 if fmt.bits == 8 else torch.int16
    signed = torch.arange(-(1 << (fmt.bits - 1)), 1 << (fmt.bits - 1)).to(int_dtype)
    assert_same(fmt.decode(signed), signed.view(dtype).float())  # two's-complement codes
    unsigned = signed.to(torch.int64) & ((1 << fmt.bits) - 1)
    assert_same(fmt.decode(unsigned), signed.view(dtype).float())


@pytest.mark.parametrize("fmt", [FP16, BF16, *SMALL_FORMATS], ids=lambda f: f.name)
def test_encode_inverts_decode_on_every_code(fmt: FloatFormat) -> None:
    codes = all_codes(fmt)
    values = fmt.decode(codes)
    back = fmt.encode(values).to(torch.int64)
    nan = torch.isnan(values)
    assert torch.equal(back[~nan], codes[~nan])
    # NaN codes all encode to the canonical NaN, which decodes to NaN again.
    assert bool(torch.isnan(fmt.decode(back[nan])).all())


def test_canonical_nan_codes() -> None:
    nan = torch.tensor([math.nan, -math.nan])
    assert FP16.encode(nan).tolist() == [0x7E00, 0xFE00]  # quiet NaN, as torch's fp16 cast
    assert FP8_E4M3.encode(nan).tolist() == [0x7F, 0xFF]  # the only NaN code of e4m3fn
    assert FP8_E5M2.encode(nan).tolist() == [0x7E, 0xFE]
    assert FP32.encode(nan[:1]).item() == 0x7FC00000


def test_fp32_encode_is_the_bit_pattern() -> None:
    x = torch.cat([random_binades(10_000, -160, 128), torch.tensor([0.0, -0.0, math.inf, -1e-45])])
    assert torch.equal(FP32.encode(x), x.view(torch.int32))
    assert_same(FP32.decode(FP32.encode(x)), x)


def test_fields_of_known_values() -> None:
    s, e, m = FP8_E4M3.fields(torch.tensor([7.625, -(2.0**-9), 448.0]))
    # 7.625 = 1.111|01₂·2^2 rounds down to 1.111₂·2^2 = 7.5 (E = 2 + 7); −2^-9 is the smallest
    # subnormal (E = 0, M = 1) with the sign bit; 448 = 1.110₂·2^8 (E = 8 + 7).
    assert s.tolist() == [0, 1, 0]
    assert e.tolist() == [2 + 7, 0, 8 + 7]
    assert m.tolist() == [0b111, 0b001, 0b110]


# ---- FloatFormat.round against torch's casts -----------------------------------------------


@pytest.mark.parametrize("fmt,dtype", TORCH_FORMATS)
def test_round_matches_torch_cast_on_edge_values(fmt: FloatFormat, dtype: torch.dtype) -> None:
    x = edge_values(fmt)
    sat = dtype == torch.float8_e4m3fn and TORCH_E4M3_SATURATES
    assert_same(fmt.round(x, saturate=sat), x.to(dtype).float())


@pytest.mark.parametrize(
    "fmt,dtype,lo,hi",
    [
        (FP16, torch.float16, -30, 20),
        (BF16, torch.bfloat16, -150, 128),
        (FP8_E4M3, torch.float8_e4m3fn, -30, 30),
        (FP8_E5M2, torch.float8_e5m2, -30, 30),
    ],
)
def test_round_matches_torch_cast_on_random_binades(
    fmt: FloatFormat, dtype: torch.dtype, lo: int, hi: int
) -> None:
    """10^6 values spread over every binade of the format, its subnormals and its overflow."""
    x = random_binades(10**6, lo, hi, seed=hi - lo)
    sat = dtype == torch.float8_e4m3fn and TORCH_E4M3_SATURATES
    assert_same(fmt.round(x, saturate=sat), x.to(dtype).float())


def test_e4m3fn_overflow_thresholds() -> None:
    """448 = 1.110₂·2^8; the next step 480 would be the NaN code, so 464 is the tie (to 448,
    the even mantissa) and anything above 464 overflows: NaN, or 448 when saturating."""
    above = torch.nextafter(torch.tensor(464.0), torch.tensor(500.0)).item()
    x = torch.tensor([464.0, above, 480.0, 1e6, math.inf, -464.0, -above])
    expect = torch.tensor([448.0, math.nan, math.nan, math.nan, math.nan, -448.0, math.nan])
    assert_same(FP8_E4M3.round(x), expect)
    assert_same(FP8_E4M3.round(x, saturate=True), torch.tensor([448.0] * 5 + [-448.0] * 2))
    torch_expect = FP8_E4M3.round(x, saturate=TORCH_E4M3_SATURATES)
    assert_same(x.to(torch.float8_e4m3fn).float(), torch_expect)


def test_e5m2_and_fp16_overflow_to_inf() -> None:
    """e5m2: 57344 = 1.11₂·2^15, tie 61440 goes up to 2^16 (even) → Inf. fp16: tie 65520."""
    x = torch.tensor([61439.99, 61440.0, 65520.0])
    assert FP8_E5M2.round(x).tolist() == [57344.0, math.inf, math.inf]
    assert FP16.round(x).tolist() == [61440.0, 61440.0, math.inf]
    assert FP16.round(torch.tensor([65519.996])).item() == 65504.0
    assert FP8_E5M2.round(torch.tensor([-1e9]), saturate=True).item() == -57344.0


@pytest.mark.parametrize("fmt,dtype", [(FP8_E4M3, torch.float8_e4m3fn), (FP16, torch.float16)])
def test_saturate_matches_clamp_then_cast(fmt: FloatFormat, dtype: torch.dtype) -> None:
    x = torch.cat([random_binades(100_000, -30, 30), edge_values(fmt)])
    expect = torch.clamp(x, -fmt.max, fmt.max).to(dtype).float()
    assert_same(fmt.round(x, saturate=True), expect)


def test_fp32_round_of_float64_matches_torch_cast() -> None:
    """float64 → fp32 (torch's double→float cast rounds once, correctly)."""
    g = torch.Generator().manual_seed(2)
    x = random_binades(200_000, -160, 130).double()
    x = x * (1 + torch.rand(200_000, generator=g, dtype=torch.float64) * 2**-30)  # > 24 bits
    mids = (x.float().double() + torch.nextafter(x.float(), x.float() * 2).double()) / 2
    x = torch.cat([x, mids, torch.tensor([2.0**128 - 2.0**103, 2.0**-150, -(2.0**-150)]).double()])
    out = FP32.round(x)
    assert out.dtype == torch.float64
    assert_same(out, x.float().double())


def test_float64_input_is_rounded_once() -> None:
    """1 + 2^-11 + 2^-40 lies above the fp16 tie 1 + 2^-11, so it rounds up to 1 + 2^-10.
    (torch's float64 → float16 cast goes through float32, rounds to the tie first and then to 1.0;
    that double rounding is why float64 inputs are not compared with torch.)"""
    x = torch.tensor([1 + 2**-11 + 2**-40], dtype=torch.float64)
    assert FP16.round(x).item() == 1 + 2**-10


def test_round_dtypes_shapes_and_bad_input() -> None:
    x = torch.tensor([[0.3, -1.7], [1e-6, 70000.0]])
    assert FP16.round(x).shape == (2, 2) and FP16.round(x).dtype == torch.float32
    assert FP16.round(x.double()).dtype == torch.float64
    assert_same(FP16.round(x.half()), x.half().float())  # already fp16 values: unchanged
    assert FP8_E4M3.round(torch.tensor([3, 17])).tolist() == [3.0, 16.0]  # ints; 17 → tie → 16
    assert FP16.round(torch.empty(0)).shape == (0,)
    with pytest.raises(TypeError, match="list"):
        FP16.round([1.0])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="complex"):
        FP16.round(torch.tensor([1 + 1j]))
    with pytest.raises(ValueError, match="2 NaN"):
        FP4_E2M1.round(torch.tensor([math.nan, 1.0, math.nan]))
    # fp4 has no Inf/NaN: 7 is the tie between 6 and (virtual) 8 and goes to 8: overflow.
    with pytest.raises(ValueError, match=r"2 value\(s\) of 4 round beyond ±6"):
        FP4_E2M1.round(torch.tensor([6.9, 7.0, -math.inf, 1.0]))
    sat = FP4_E2M1.round(torch.tensor([6.9, 7.0, -math.inf, 1.0]), saturate=True)
    assert sat.tolist() == [6.0, 6.0, -6.0, 1.0]


def reference_round(fmt: FloatFormat, x: np.ndarray) -> np.ndarray:
    """Brute force: nearest of all values of fmt (plus the virtual value one step above max, to
    find overflow), ties to the code with an even mantissa; overflow as ``round(saturate=False)``.
    """
    codes = np.arange(1 << (fmt.bits - 1))  # non-negative codes, in increasing value
    values = fmt.decode(torch.from_numpy(codes)).double().numpy()
    keep = np.isfinite(values)
    values, even = values[keep], (codes[keep] & 1) == 0
    values = np.append(values, fmt.max + fmt.ulp(fmt.max))
    even = np.append(even, not even[-1])
    a = np.abs(x)
    hi = np.clip(np.searchsorted(values, a), 1, len(values) - 1)
    lo = hi - 1
    dlo, dhi = a - values[lo], values[hi] - a
    pick = np.where((dhi < dlo) | ((dhi == dlo) & even[hi]), hi, lo)
    out = values[pick]
    out[out > fmt.max] = np.inf if fmt.specials == "ieee" else np.nan
    return np.copysign(out, x)


@pytest.mark.parametrize("fmt", SMALL_FORMATS, ids=lambda f: f.name)
def test_round_matches_brute_force_nearest(fmt: FloatFormat) -> None:
    x = torch.cat([random_binades(20_000, -12, 10), edge_values(fmt)])
    x = x[torch.isfinite(x) & (x.abs() < 2 * fmt.max)]
    if fmt.specials == "none":  # no overflow encoding: compare below the overflow tie only
        x = x[x.abs() < fmt.max + fmt.ulp(fmt.max) / 2]
    expect = torch.from_numpy(reference_round(fmt, x.double().numpy())).float()
    assert_same(fmt.round(x), expect)


def test_fp4_round_matches_brute_force_with_saturation() -> None:
    x = torch.cat([random_binades(20_000, -4, 4), edge_values(FP4_E2M1)])
    x = x[torch.isfinite(x)]
    ref = reference_round(FP4_E2M1, x.double().numpy())  # NaN marks overflow
    expect = np.where(np.isnan(ref), np.copysign(6.0, x.double().numpy()), ref)
    assert_same(FP4_E2M1.round(x, saturate=True), torch.from_numpy(expect).float())


# ---- properties (hypothesis) ------------------------------------------------------------------

finite32 = st.floats(min_value=-1e6, max_value=1e6, width=32, allow_subnormal=True)
PROPERTY_FORMATS = [FP16, BF16, FP8_E4M3, FP8_E5M2, FP4_E2M1, E3M4]


@pytest.mark.parametrize("fmt", PROPERTY_FORMATS, ids=lambda f: f.name)
@settings(max_examples=120, deadline=None)
@given(x=finite32, y=finite32)
def test_round_properties(fmt: FloatFormat, x: float, y: float) -> None:
    t = torch.tensor([x, y, -x])
    r = fmt.round(t, saturate=True)
    assert_same(fmt.round(r, saturate=True), r)  # idempotent
    assert r[2].item() == -r[0].item() and r[2].signbit() != r[0].signbit()  # odd symmetry
    if x <= y:
        assert r[0] <= r[1]  # monotone
    if abs(x) <= fmt.max:  # inside the range the error is at most half a step
        assert abs(r[0].item() - x) <= fmt.ulp(x) / 2


@settings(max_examples=200, deadline=None)
@given(x=st.floats(min_value=0, max_value=2.0**127, width=32))
def test_fp32_ulp_is_the_spacing_above(x: float) -> None:
    t = torch.tensor([x])
    assert FP32.ulp(t).item() == (torch.nextafter(t, t * 2 + 1) - t).item() == FP32.ulp(x)


def test_ulp_closed_forms() -> None:
    assert (FP16.ulp(1.0), FP16.ulp(1000.0), FP16.ulp(0.0), FP16.ulp(1e-7)) == (
        2**-10,
        0.5,
        2**-24,
        2**-24,
    )
    assert FP8_E4M3.ulp(torch.tensor([448.0, -3.0, math.nan])).tolist()[:2] == [32.0, 0.25]
    assert math.isnan(FP16.ulp(math.inf))


# ---- constructor validation ----------------------------------------------------------------


def test_float_format_validation() -> None:
    with pytest.raises(ValueError, match="exp_bits=0"):
        FloatFormat("x", 0, 3)
    with pytest.raises(ValueError, match="man_bits=-1"):
        FloatFormat("x", 4, -1)
    with pytest.raises(ValueError, match="33 bits"):
        FloatFormat("x", 8, 24)
    with pytest.raises(TypeError, match="exp_bits"):
        FloatFormat("x", 4.0, 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="man_bits"):
        FloatFormat("x", 4, True)
    with pytest.raises(ValueError, match="specials='ocp'"):
        FloatFormat("x", 4, 3, specials="ocp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no normal"):
        FloatFormat("x", 1, 3)  # ieee e=1: the only exponents are 0 and Inf/NaN
    with pytest.raises(ValueError, match="float64"):
        FloatFormat("x", 10, 2, bias=-600)
    with pytest.raises(TypeError, match="name"):
        FloatFormat("", 4, 3)
    assert FloatFormat("e2m0", 2, 0, specials="none").decode(all_codes(FP4_E2M1)[:8]).tolist() == [
        0.0,
        1.0,
        2.0,
        4.0,
        -0.0,
        -1.0,
        -2.0,
        -4.0,
    ]


def test_decode_validation() -> None:
    with pytest.raises(TypeError, match="integer"):
        FP16.decode(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="256"):
        FP8_E4M3.decode(torch.tensor([256]))
    with pytest.raises(ValueError, match=r"\[-128, 256\)"):
        FP8_E4M3.decode(torch.tensor([-129]))


# ---- ieee754_fields --------------------------------------------------------------------------


def test_ieee754_fields_of_7_625() -> None:
    """7.625 = 111.101₂ = 1.11101₂ · 2^2."""
    f = ieee754_fields(7.625)
    assert (f.sign, f.biased_exponent, f.exponent, f.kind) == (0, 129, 2, "normal")
    assert f.mantissa_bits == "11101000000000000000000" and f.significand == "1.11101"
    assert f.mantissa == 0b11101 << 18
    h = ieee754_fields(7.625, FP16)
    assert (h.biased_exponent, h.exponent, h.mantissa_bits) == (17, 2, "1110100000")
    b = ieee754_fields(7.625, BF16)
    assert (b.biased_exponent, b.exponent, b.mantissa_bits) == (129, 2, "1110100")
    text = str(f)
    assert "10000001" in text and "129" in text and "1.11101" in text and "normal" in text


@pytest.mark.parametrize("x", [7.625, -0.1, 1.0, 3e-39, 65504.0, 1e-8, -0.0, 1e38])
def test_ieee754_fields_bits_match_torch(x: float) -> None:
    for fmt, dtype, idt in [
        (FP32, torch.float32, torch.int32),
        (FP16, torch.float16, torch.int16),
        (BF16, torch.bfloat16, torch.int16),
    ]:
        f = ieee754_fields(x, fmt)
        t = torch.tensor([x], dtype=torch.float64).float().to(dtype)
        pattern = format(t.view(idt).item() & ((1 << fmt.bits) - 1), f"0{fmt.bits}b")
        assert f.bits.replace(" ", "") == pattern, (fmt.name, x)
        assert f.value == t.float().item() or math.isinf(f.value)


def test_ieee754_fields_special_kinds() -> None:
    sub = ieee754_fields(2.0**-149)
    assert (sub.kind, sub.biased_exponent, sub.exponent, sub.mantissa) == ("subnormal", 0, -126, 1)
    assert sub.significand == "0." + "0" * 22 + "1"
    z = ieee754_fields(-0.0, "fp16")
    assert (z.kind, z.sign, z.significand, z.exponent) == ("zero", 1, "0.0", -14)
    assert ieee754_fields(1.0).significand == "1.0"
    inf = ieee754_fields(-math.inf, torch.bfloat16)
    assert (inf.kind, inf.sign, inf.biased_exponent, inf.exponent) == ("inf", 1, 255, None)
    assert ieee754_fields(1e6, FP16).kind == "inf"  # overflows fp16
    nan = ieee754_fields(math.nan, FP8_E4M3)
    assert (nan.kind, nan.bits) == ("nan", "0 1111 111")
    assert ieee754_fields(0.1).value == torch.tensor(0.1).item()  # rounded to fp32 first
    e2m1 = ieee754_fields(5.0, FP4_E2M1)  # tie between 4 and 6 → 4 (even mantissa)
    assert (e2m1.value, e2m1.bits, e2m1.significand) == (4.0, "0 11 0", "1.0")
    with pytest.raises(TypeError):
        ieee754_fields("7.625")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fp64"):
        ieee754_fields(1.0, "fp64")


# ---- FixedPoint ------------------------------------------------------------------------------


def test_fixed_point_q3_3_example() -> None:
    q = FixedPoint(3, 3)
    assert q.encode(7.625) == 61 and q.to_binary(7.625) == "111.101"
    assert (q.name, q.total_bits, q.min, q.max, q.resolution) == ("UQ3.3", 6, 0.0, 7.875, 0.125)
    assert q.decode(61) == 7.625


def test_fixed_point_signed_ranges() -> None:
    """ARM Qm.n: sign + m + n bits, range [−2^m, 2^m − 2^−n]."""
    q78 = FixedPoint(7, 8, signed=True)
    assert (q78.total_bits, q78.min, q78.max) == (16, -128.0, 128 - 2**-8)
    assert q78.encode(-1.5) == -384
    assert q78.to_binary(-1.5) == format(-384 & 0xFFFF, "016b")[:8] + ".10000000"
    q15 = FixedPoint(0, 15, signed=True)
    assert (q15.min, q15.max, q15.resolution) == (-1.0, 1 - 2**-15, 2**-15)
    assert q15.decode(-32768) == -1.0 and q15.to_binary(-1.0) == "1.000000000000000"
    assert FixedPoint(0, 3).to_binary(0.625) == ".101"
    assert FixedPoint(4, 0, signed=True).to_binary(-3) == "11101"


def test_fixed_point_tensor_matches_int_arithmetic() -> None:
    """Q0.15 codes are torch.round(x·2^15) clamped to int16 (torch.round ties to even)."""
    x = torch.randn(100_000, generator=torch.Generator().manual_seed(1))
    x = torch.cat([x, torch.arange(-8, 8) / 2**16])  # exact ties
    q15 = FixedPoint(0, 15, signed=True)
    expect = torch.round(x.double() * 2**15).clamp(-32768, 32767).to(torch.int64)
    codes = q15.encode(x)
    assert codes.dtype == torch.int64 and torch.equal(codes, expect)
    assert torch.equal(q15.decode(codes), expect.float() / 2**15)  # float32 is exact for 16 bits
    assert torch.equal(q15.round(x), q15.decode(codes))


def test_fixed_point_rounding_modes() -> None:
    x = torch.tensor([0.0625, 0.1875, -0.0625, -0.1875])  # codes ±0.5, ±1.5 in Q3.3
    assert FixedPoint(3, 3, True).encode(x).tolist() == [0, 2, 0, -2]
    assert FixedPoint(3, 3, True, rounding="half_away").encode(x).tolist() == [1, 2, -1, -2]
    assert FixedPoint(3, 3, True, rounding="floor").encode(x).tolist() == [0, 1, -1, -2]


def test_fixed_point_overflow() -> None:
    assert FixedPoint(3, 3).encode(torch.tensor([-1.0, 7.9, 7.95, 100.0])).tolist() == [
        0,
        63,  # 7.9·8 = 63.2 → 63: inside after rounding
        63,
        63,
    ]
    strict = FixedPoint(3, 3, overflow="error")
    assert strict.encode(7.9) == 63
    with pytest.raises(ValueError, match=r"\[0\.0, 7\.875\].*e\.g\. 9\.0"):
        strict.encode(9.0)
    with pytest.raises(ValueError, match=r"2 value\(s\) outside the range of UQ3.3 \[0.0, 7.875\]"):
        strict.encode(torch.tensor([1.0, -0.1, 8.0]))


def test_fixed_point_bad_input() -> None:
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match=r"NaN|Inf"):
            FixedPoint(3, 3).encode(bad)
    with pytest.raises(ValueError, match="1 NaN"):
        FixedPoint(3, 3).encode(torch.tensor([1.0, math.nan]))
    with pytest.raises(ValueError, match="frac_bits=-1"):
        FixedPoint(3, -1)
    with pytest.raises(TypeError, match="int_bits"):
        FixedPoint(3.0, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="overflow='wrap'"):
        FixedPoint(3, 3, overflow="wrap")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stochastic"):
        FixedPoint(3, 3, rounding="stochastic")
    with pytest.raises(ValueError, match="0 bits"):
        FixedPoint(0, 0)
    with pytest.raises(ValueError, match="54 bits"):
        FixedPoint(30, 23, signed=True)
    with pytest.raises(ValueError, match="code 64"):
        FixedPoint(3, 3).decode(64)
    with pytest.raises(TypeError):
        FixedPoint(3, 3).decode(torch.tensor([1.0]))
    with pytest.raises(TypeError):
        FixedPoint(3, 3).encode("1.0")  # type: ignore[call-overload]


@settings(max_examples=200, deadline=None)
@given(x=st.floats(min_value=-128, max_value=128 - 2**-8))
def test_fixed_point_error_is_half_a_step(x: float) -> None:
    q = FixedPoint(7, 8, signed=True)
    assert abs(q.round(x) - x) <= q.resolution / 2
    assert q.encode(q.decode(q.encode(x))) == q.encode(x)


# ---- the format table ------------------------------------------------------------------------


def rows_by_name() -> dict[str, dict]:
    return {r["name"]: r for r in describe_formats()}


def test_table_covers_the_formats() -> None:
    rows = rows_by_name()
    assert list(rows) == [
        *("int2", "int4", "int8", "int16", "uint4", "uint8", "binary", "ternary"),
        *("fp32", "fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2", "fp4_e2m1"),
        *("Q7.8", "UQ3.3", "Q0.15"),
    ]
    assert all(list(r) == list(F.table.COLUMNS) for r in rows.values())


@pytest.mark.parametrize(
    "name,dtype",
    [
        ("fp32", torch.float32),
        ("fp16", torch.float16),
        ("bf16", torch.bfloat16),
        ("fp8_e4m3fn", torch.float8_e4m3fn),
        ("fp8_e5m2", torch.float8_e5m2),
    ],
)
def test_table_float_rows_match_finfo(name: str, dtype: torch.dtype) -> None:
    r, fi = rows_by_name()[name], torch.finfo(dtype)
    assert (r["bits"], r["min"], r["max"], r["min_normal"]) == (fi.bits, fi.min, fi.max, fi.tiny)
    assert r["resolution"] == fi.eps
    assert r["min_subnormal"] == fi.tiny * fi.eps  # 2^emin · 2^−m
    assert r["dynamic_range_db"] == pytest.approx(20 * math.log10(fi.max / (fi.tiny * fi.eps)))


def test_table_values_closed_forms() -> None:
    rows = rows_by_name()
    fp16 = rows["fp16"]
    assert (fp16["max"], fp16["min_subnormal"], fp16["resolution"]) == (65504, 2**-24, 2**-10)
    assert fp16["min_normal"] == pytest.approx(6.1035e-05, rel=1e-4)
    assert rows["bf16"]["max"] == pytest.approx(3.3895e38, rel=1e-4)
    assert (rows["fp8_e4m3fn"]["max"], rows["fp8_e4m3fn"]["min_normal"]) == (448, 2**-6)
    assert rows["fp8_e5m2"]["max"] == 57344
    assert (rows["fp4_e2m1"]["max"], rows["fp4_e2m1"]["min_subnormal"]) == (6, 0.5)
    for name, dtype in [("int8", torch.int8), ("int16", torch.int16), ("uint8", torch.uint8)]:
        ii = torch.iinfo(dtype)
        assert (rows[name]["min"], rows[name]["max"]) == (ii.min, ii.max)
    assert (rows["int4"]["min"], rows["int4"]["max"], rows["uint4"]["max"]) == (-8, 7, 15)
    assert (rows["ternary"]["min"], rows["ternary"]["max"], rows["binary"]["max"]) == (-1, 1, 1)
    assert rows["int8"]["dynamic_range_db"] == pytest.approx(20 * math.log10(255))
    assert (rows["Q7.8"]["bits"], rows["Q7.8"]["max"], rows["Q7.8"]["resolution"]) == (
        16,
        128 - 2**-8,
        2**-8,
    )
    assert (rows["UQ3.3"]["min"], rows["UQ3.3"]["max"]) == (0.0, 7.875)
    assert (rows["Q0.15"]["min"], rows["Q0.15"]["resolution"]) == (-1.0, 2**-15)


def test_format_table_is_aligned() -> None:
    rows = describe_formats()
    lines = format_table(rows).splitlines()
    assert len(lines) == len(rows) + 2
    header = lines[0]
    assert header.split() == list(F.table.COLUMNS)
    end_of_max = header.index(" max ") + len(" max")
    for line, row in zip(lines[2:], rows):
        assert line.startswith(row["name"])
        assert line[:end_of_max].endswith(format_table([row]).splitlines()[2].split()[4])
    text = "\n".join(lines)
    assert "127.99609375" in text and "65504.0" in text and "448.0" in text
    assert format_table([{"a": "x", "b": None}, {"a": "yy", "b": 1.5}]) == "\n".join(
        ["a     b", "--  ---", "x     -", "yy  1.5"]
    )
