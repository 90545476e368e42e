"""The Requantizer's float64 path against Python-int transcriptions of TFLite's arithmetic.

`Requantizer.apply` evaluates clamp(Z + MBQM(acc)) in float64 where the module docstring of
`zeropoint.engine.requantize` proves it exact; these tests check that claim bit for bit, on the
inputs where a float evaluation would first go wrong: exact ties (M a power of two), values a
few accumulator steps either side of every output boundary, the clamp edges, the largest
accumulators, and tensors large enough to be split into blocks. The references below use Python
ints (no overflow, no rounding) and share no code with the engine.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from zeropoint.engine.fixedpoint import quantize_multiplier
from zeropoint.engine.requantize import Requantizer

I32_MIN, I32_MAX = -(2**31), 2**31 - 1
RANGE = {torch.uint8: (0, 255), torch.int8: (-128, 127), torch.int16: (-32768, 32767)}


def ref_single(x: int, m0: int, shift: int) -> int:
    """TFLITE_SINGLE_ROUNDING MultiplyByQuantizedMultiplier: (x·M0 + 2^(shift−1)) >> shift."""
    return (x * m0 + (1 << (shift - 1))) >> shift


def ref_double(x: int, m0: int, shift: int) -> int:
    """gemmlowp RDBPOT(SRDHM(x, M0), shift − 31) for shift ≥ 31 (no left shift)."""
    ab = x * m0
    num = ab + ((1 << 30) if ab >= 0 else 1 - (1 << 30))
    high = abs(num) // (1 << 31) * (1 if num >= 0 else -1)  # C++ division truncates
    e = shift - 31
    mask = (1 << e) - 1
    return (high >> e) + ((high & mask) > (mask >> 1) + (high < 0))


def expected(acc: list[int], m: float, zp: int, lo: int, hi: int, rounding: str) -> list[int]:
    m0, shift = quantize_multiplier(m)
    ref = ref_single if rounding == "single" else ref_double
    return [min(max(zp + ref(a, m0, shift), lo), hi) for a in acc]


def hard_accumulators(rng: random.Random, m: float, zp: int, lo: int, hi: int) -> list[int]:
    """int32 accumulators around every output boundary of clamp(Z + x·M), plus ties and edges."""
    m0, shift = quantize_multiplier(m)
    acc = [0, 1, -1, I32_MIN, I32_MAX] + [rng.randint(I32_MIN, I32_MAX) for _ in range(50)]
    for k in [lo - 1, lo, lo + 1, hi, hi + 1, *(rng.randint(lo, hi) for _ in range(30))]:
        centre = math.floor((k - zp - 0.5) * 2**shift / m0)  # where x·M + Z crosses k − ½
        acc += [centre + d for d in range(-3, 4)]
        if m0 == 1 << 30:  # M = 2^−(shift−30): (2j + 1)·2^(shift−31) are exact ties
            j = k - zp
            acc += [(2 * (j + d) + 1) << (shift - 31) for d in (-1, 0)]
    return [min(max(a, I32_MIN), I32_MAX) for a in acc]


MULTIPLIERS = [0.3, 0.02, 3.1e-3, 7.7e-4, 2.0**-5, 2.0**-11, 1.3e-4]


@pytest.mark.parametrize("rounding", ["single", "double"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8])
@pytest.mark.parametrize("m", MULTIPLIERS)
def test_float_path_bit_exact_at_boundaries_and_ties(m: float, dtype: torch.dtype,
                                                     rounding: str) -> None:  # fmt: skip
    rng = random.Random(hash((m, str(dtype), rounding)) & 0xFFFF)
    lo, hi = RANGE[dtype]
    for zp, qmin in ((lo, lo), (hi, lo), (rng.randint(lo, hi), None), (0, 0)):
        qmin = qmin if qmin is not None else max(lo, zp)  # a fused ReLU
        r = Requantizer.from_multiplier(m, zp, dtype, qmin, hi, rounding)  # type: ignore[arg-type]
        # M ≥ 1.2e-4 with 8-bit outputs: the window condition holds for every int32 accumulator
        assert r.float_exact()
        acc = hard_accumulators(rng, m, zp, qmin, hi)
        want = expected(acc, m, zp, qmin, hi, rounding)
        assert r(torch.tensor(acc, dtype=torch.int32)).tolist() == want
        assert r.apply(torch.tensor(acc, dtype=torch.float64)).tolist() == want
        small = [a for a in acc if abs(a) < 2**24]  # what an exact fp32 GEMM hands over
        assert r.apply(torch.tensor(small, dtype=torch.float32)).tolist() == [
            w for a, w in zip(acc, want) if abs(a) < 2**24
        ]


@pytest.mark.parametrize("rounding", ["single", "double"])
def test_float_path_per_channel_blocks_and_layouts(rounding: str) -> None:
    # 4-D channels-last accumulators of 2·32768+ elements: several blocks, per-channel M along
    # axis 1, and per-channel M along axis 0 (constants sliced with the blocks)
    gen = torch.Generator().manual_seed(3)
    mult = torch.tensor([0.01, 2.0**-9, 4e-3, 1.5e-4], dtype=torch.float64)
    r = Requantizer.from_multiplier(mult, 17, torch.uint8, 17, 255, rounding)  # type: ignore[arg-type]
    assert r.float_exact()
    acc = torch.randint(-(2**20), 2**20, (40, 4, 30, 31), generator=gen)
    acc = acc.contiguous(memory_format=torch.channels_last)
    got = r.apply(acc.to(torch.float32), 1)
    assert got.is_contiguous(memory_format=torch.channels_last)
    for c, m in enumerate(mult.tolist()):
        col = acc[:, c].flatten().tolist()
        assert got[:, c].flatten().tolist() == expected(col, m, 17, 17, 255, rounding), m
    r0 = Requantizer.from_multiplier(mult, -7, torch.int8, rounding=rounding)  # type: ignore[arg-type]
    acc0 = torch.randint(-(2**22), 2**22, (4, 300, 120), generator=gen)
    got0 = r0.apply(acc0, 0)
    for c, m in enumerate(mult.tolist()):
        col = acc0[c].flatten().tolist()
        assert got0[c].flatten().tolist() == expected(col, m, -7, -128, 127, rounding), m


def test_float_path_needs_the_bound_for_tiny_multipliers() -> None:
    # M = 2^−20·1.1: shift 50, beyond the window condition (s ≤ 43 for uint8), so only a
    # static accumulator bound (|acc|·M0 + (|Z| + 1)·2^s < 2^53, here |acc| < 2^21.9) makes float64 exact
    m, zp = 2.0**-20 * 1.1, 3
    r = Requantizer.from_multiplier(m, zp, torch.uint8, rounding="single")
    assert not r.float_exact() and not r.float_exact(2**31)
    assert r.float_exact(2**21) and not r.float_exact(2**23)
    rng = random.Random(5)
    acc = hard_accumulators(rng, m, zp, 0, 255)
    inside = [a for a in acc if abs(a) <= 2**21]
    want = expected(inside, m, zp, 0, 255, "single")
    assert r.apply(torch.tensor(inside), -1, 2**21).tolist() == want  # float64
    assert r.apply(torch.tensor(inside)).tolist() == want  # int64
    assert r(torch.tensor(acc, dtype=torch.int32)).tolist() == expected(
        acc, m, zp, 0, 255, "single"
    )


def test_integer_path_still_serves_int32_outputs_and_left_shifts() -> None:
    assert not Requantizer.from_multiplier(0.01, 0, torch.int32).float_exact()
    assert not Requantizer.from_multiplier(3.0, 0, torch.uint8).float_exact()  # double: ls > 0
    single = Requantizer.from_multiplier(3.0, 0, torch.uint8, rounding="single")
    assert single.float_exact()  # one floor of acc·M0·2^−29: no saturating left shift
    acc = list(range(-300, 300))
    assert single(torch.tensor(acc, dtype=torch.int32)).tolist() == expected(
        acc, 3.0, 0, 0, 255, "single"
    )
