"""Integer kernels, bit-exact against independent references written plainly here.

References: accumulators in int64 torch matmul (linear) or float64 torch convolutions (exact:
every value is an integer below 2^53), requantization by a numpy transcription of gemmlowp's
SaturatingRoundingDoublingHighMul / RoundingDivideByPOT (checked once against Python ints). No
code is shared with the kernels, which run fp32 BLAS / oneDNN on centred data.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zeropoint.engine.conv import conv2d, conv2d_acc, conv2d_nchw, prepare_conv2d
from zeropoint.engine.conv_transpose import (
    conv_transpose2d,
    conv_transpose2d_acc,
    conv_transpose2d_nchw,
    prepare_conv_transpose2d,
)
from zeropoint.engine.elementwise import avg_pool2d, global_avg_pool2d, max_pool2d
from zeropoint.engine.fixedpoint import quantize_multiplier
from zeropoint.engine.kernels import linear, linear_acc, prepare_linear
from zeropoint.engine.requantize import Requantizer

I32_MIN, I32_MAX = -(2**31), 2**31 - 1
RANGE = {torch.uint8: (0, 255), torch.int8: (-128, 127), torch.int16: (-32768, 32767)}


def ref_mbqm(acc: np.ndarray, m0: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """TFLite MultiplyByQuantizedMultiplier, vectorised literally (tfl_shift = 31 − shift)."""
    acc, m0, tfl = np.int64(acc), np.int64(m0), 31 - np.int64(shift)
    left, right = np.maximum(tfl, 0), np.maximum(-tfl, 0)
    x = np.clip(acc * (np.int64(1) << left), I32_MIN, I32_MAX)
    ab = x * m0
    num = ab + np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    high = np.sign(num) * (np.abs(num) // (1 << 31))  # C++ division truncates toward zero
    mask = (np.int64(1) << right) - 1
    threshold = (mask >> 1) + (high < 0)
    return (high >> right) + ((high & mask) > threshold)


def ref_requant(acc: torch.Tensor, mult: list[float], zp: int, dtype: torch.dtype, axis: int,
                lo: int | None = None, hi: int | None = None) -> torch.Tensor:  # fmt: skip
    pairs = [quantize_multiplier(m) for m in mult]
    shape = [1] * acc.dim()
    shape[axis] = len(pairs)
    m0 = np.array([p[0] for p in pairs]).reshape(shape)
    sh = np.array([p[1] for p in pairs]).reshape(shape)
    dlo, dhi = RANGE[dtype]
    y = np.clip(
        zp + ref_mbqm(acc.numpy(), m0, sh), dlo if lo is None else lo, dhi if hi is None else hi
    )
    return torch.from_numpy(y).to(dtype)


def test_numpy_reference_matches_python_ints() -> None:
    def py(x: int, m0: int, shift: int) -> int:  # gemmlowp with Python ints, rs ≥ 0 only
        ab = x * m0
        num = ab + ((1 << 30) if ab >= 0 else 1 - (1 << 30))
        high = abs(num) // (1 << 31) * (1 if num >= 0 else -1)
        e = shift - 31
        mask = (1 << e) - 1
        return (high >> e) + ((high & mask) > (mask >> 1) + (high < 0))

    rng = random.Random(0)
    xs = [rng.randint(I32_MIN, I32_MAX) for _ in range(500)] + [I32_MIN, I32_MAX, -1, 0]
    m0 = [rng.randint(1 << 30, I32_MAX) for _ in xs]
    sh = [rng.randint(31, 62) for _ in xs]
    assert ref_mbqm(np.array(xs), np.array(m0), np.array(sh)).tolist() == list(map(py, xs, m0, sh))


def rand_q(gen: torch.Generator, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    lo, hi = RANGE[dtype]
    return torch.randint(lo, hi + 1, shape, generator=gen).to(dtype)


def rand_w(gen: torch.Generator, shape: tuple[int, ...], spread: float = 40.0) -> torch.Tensor:
    return (torch.randn(shape, generator=gen) * spread).round().clamp(-127, 127).to(torch.int8)


# --------------------------------------------------------------------------- linear


@pytest.mark.parametrize(
    ("m", "k", "n", "dtype", "per_channel"),
    [(1, 17, 5, torch.uint8, True), (7, 300, 33, torch.int8, False),
     (16, 768, 64, torch.uint8, False), (3, 1000, 9, torch.int8, True)],
)  # fmt: skip
def test_linear_bit_exact(m: int, k: int, n: int, dtype: torch.dtype, per_channel: bool) -> None:
    gen = torch.Generator().manual_seed(k)
    q_x, q_w = rand_q(gen, (2, m, k), dtype), rand_w(gen, (n, k))
    bias = torch.randint(-30000, 30000, (n,), generator=gen, dtype=torch.int32)
    zx = 131 if dtype == torch.uint8 else -7
    weights = prepare_linear(q_w, bias)
    acc_ref = (q_x.long() - zx) @ q_w.long().t() + bias.long()
    acc = linear_acc(q_x, zx, weights)
    assert acc.dtype == torch.int32 and torch.equal(acc.long(), acc_ref)
    mult = (torch.rand(n, generator=gen, dtype=torch.float64) * 1e-4 + 1e-5).tolist()
    mult = mult if per_channel else mult[:1]
    rq = Requantizer.from_multiplier(torch.tensor(mult) if per_channel else mult[0], 100)
    assert torch.equal(
        linear(q_x, zx, weights, rq), ref_requant(acc_ref, mult, 100, torch.uint8, -1)
    )


def test_linear_chunks_and_float64_fallback_stay_exact() -> None:
    gen = torch.Generator().manual_seed(1)
    for k, chunked in ((2000, True), (6000, False)):
        # worst case |q_w| = 127: 128·127·K ≥ 2^24 for K ≥ 1033, so K must be split
        q_w = torch.where(torch.rand(4, k, generator=gen) < 0.5, 127, -127).to(torch.int8)
        weights = prepare_linear(q_w)
        assert len(weights.plan.chunks) == (2 if chunked else 6)
        q_x = rand_q(gen, (5, k), torch.uint8)
        expect = (q_x.long() - 3) @ q_w.long().t()
        assert torch.equal(linear_acc(q_x, 3, weights).long(), expect)


def test_linear_exact_under_reduced_float32_precision() -> None:
    gen = torch.Generator().manual_seed(2)
    q_x, q_w = rand_q(gen, (8, 900), torch.uint8), rand_w(gen, (16, 900), 90)
    weights = prepare_linear(q_w)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")  # may allow bf16: the kernel uses float64
        acc = linear_acc(q_x, 128, weights)
    finally:
        torch.set_float32_matmul_precision(before)
    assert torch.equal(acc.long(), (q_x.long() - 128) @ q_w.long().t())


def test_linear_int16_activations() -> None:
    gen = torch.Generator().manual_seed(3)
    q_x, q_w = rand_q(gen, (4, 200), torch.int16), rand_w(gen, (6, 200), 30)
    acc = linear_acc(q_x, 1000, prepare_linear(q_w))
    assert torch.equal(acc.long(), (q_x.long() - 1000) @ q_w.long().t())


def test_int32_overflow_is_detected_never_wrapped() -> None:
    # int16 activations, |q − Z| up to 65535, K = 300, |w| = 127: K·65535·127 ≈ 2.5e9 ≥ 2^31
    q_w = torch.full((2, 300), 127, dtype=torch.int8)
    weights = prepare_linear(q_w)
    fits = torch.full((1, 300), -30000, dtype=torch.int16)  # |acc| = 2768·300·127 ≈ 1.05e8
    assert int(linear_acc(fits, -32768, weights)[0, 0]) == 2768 * 300 * 127
    with pytest.raises(ValueError, match=r"int32 accumulator overflow.*K=300"):
        linear_acc(torch.full((1, 300), 32767, dtype=torch.int16), -32768, weights)
    # 8-bit: K = 70000 full-scale products overflow too (255·127·70000 ≈ 2.27e9)
    big = prepare_linear(torch.full((1, 70000), 127, dtype=torch.int8))
    with pytest.raises(ValueError, match="overflow"):
        linear_acc(torch.full((1, 70000), 255, dtype=torch.uint8), 0, big)


def test_linear_validates_input() -> None:
    weights = prepare_linear(torch.zeros(3, 8, dtype=torch.int8))
    rq = Requantizer.from_multiplier(0.1)
    with pytest.raises(ValueError, match=r"\(\.\.\., 8\), got \(2, 7\)"):
        linear(torch.zeros(2, 7, dtype=torch.uint8), 0, weights, rq)
    with pytest.raises(TypeError, match="uint8, int8 or int16"):
        linear(torch.zeros(2, 8), 0, weights, rq)
    with pytest.raises(ValueError, match="zero point 300"):
        linear(torch.zeros(2, 8, dtype=torch.uint8), 300, weights, rq)
    with pytest.raises(ValueError, match="channels"):
        linear(
            torch.zeros(2, 8, dtype=torch.uint8),
            0,
            weights,
            Requantizer.from_multiplier(torch.ones(4)),
        )
    with pytest.raises(TypeError, match="int8"):
        prepare_linear(torch.zeros(3, 8, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"bias shape must be \(3,\)"):
        prepare_linear(torch.zeros(3, 8, dtype=torch.int8), torch.zeros(4, dtype=torch.int32))


# --------------------------------------------------------------------------- conv2d


def conv_cases(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    cases = []
    for i in range(n):
        groups = rng.choice([1, 1, 2, 3, "dw", "dw2"])
        if groups == "dw":
            c_in = rng.randint(2, 6)
            c_out, groups = c_in, c_in
        elif groups == "dw2":  # depthwise with channel multiplier 2
            c_in = rng.randint(2, 5)
            c_out, groups = 2 * c_in, c_in
        else:
            c_in, c_out = groups * rng.randint(1, 4), groups * rng.randint(1, 4)
        k = rng.choice([(1, 1), (3, 3), (5, 5), (3, 2), (2, 3)])
        cases.append(dict(
            c_in=c_in, c_out=c_out, groups=groups, kernel=k, stride=(rng.randint(1, 3), rng.randint(1, 2)),
            padding=(rng.randint(0, k[0] // 2 + 1), rng.randint(0, k[1] // 2)),
            dilation=(rng.randint(1, 2), rng.randint(1, 2)), layout=rng.choice(["NCHW", "NHWC"]),
            dtype=rng.choice([torch.uint8, torch.int8]), per_channel=rng.random() < 0.6,
            hw=(rng.randint(7, 12), rng.randint(6, 11)), batch=rng.randint(1, 2), seed=seed * 100 + i,
        ))  # fmt: skip
    return cases


def conv_reference(q_x, zx, q_w, bias, stride, padding, dilation, groups):  # type: ignore[no-untyped-def]
    """float64 conv of (q_x − Z_x) with zero padding of the real value: exact integers."""
    y = F.conv2d(
        (q_x.double() - zx), q_w.double(), bias.double(), stride, padding, dilation, groups
    )
    return y.long()


@pytest.mark.parametrize("case", conv_cases(24, 7), ids=lambda c: f"seed{c['seed']}")
def test_conv2d_bit_exact_all_methods(case: dict) -> None:
    gen = torch.Generator().manual_seed(case["seed"])
    q_x = rand_q(gen, (case["batch"], case["c_in"], *case["hw"]), case["dtype"])
    q_w = rand_w(gen, (case["c_out"], case["c_in"] // case["groups"], *case["kernel"]))
    bias = torch.randint(-5000, 5000, (case["c_out"],), generator=gen, dtype=torch.int32)
    zx = int(torch.randint(*RANGE[case["dtype"]], (1,), generator=gen))
    geo = (case["stride"], case["padding"], case["dilation"], case["groups"])
    weights = prepare_conv2d(q_w, bias, *geo)
    acc_ref = conv_reference(q_x, zx, q_w, bias, *geo)
    mult = (torch.rand(case["c_out"], generator=gen, dtype=torch.float64) * 3e-3 + 1e-4).tolist()
    mult = mult if case["per_channel"] else mult[:1]
    rq = Requantizer.from_multiplier(
        torch.tensor(mult) if case["per_channel"] else mult[0], 5, torch.int8
    )
    y_ref = ref_requant(acc_ref, mult, 5, torch.int8, 1)
    nhwc = case["layout"] == "NHWC"
    x_in = q_x.permute(0, 2, 3, 1).contiguous() if nhwc else q_x
    methods = ["auto", "im2col", "direct"]
    if case["kernel"] == (1, 1) and case["padding"] == (0, 0) and case["groups"] == 1:
        methods.append("gemm")
    for method in methods:
        acc = conv2d_acc(x_in, zx, weights, case["layout"], method)
        y = conv2d(x_in, zx, weights, rq, case["layout"], method)
        if nhwc:
            assert acc.is_contiguous() and y.is_contiguous()
            acc, y = acc.permute(0, 3, 1, 2), y.permute(0, 3, 1, 2)
        assert acc.dtype == torch.int32 and torch.equal(acc.long(), acc_ref), method
        assert y.dtype == torch.int8 and torch.equal(y, y_ref), method


def test_conv2d_padding_is_the_input_zero_point() -> None:
    # a constant input equal to Z_x is the real 0 everywhere, borders included: acc = bias
    q_w = torch.full((3, 2, 3, 3), 100, dtype=torch.int8)
    bias = torch.tensor([1, -2, 3], dtype=torch.int32)
    weights = prepare_conv2d(q_w, bias, padding=2)
    acc = conv2d_acc(torch.full((1, 2, 5, 5), 200, dtype=torch.uint8), 200, weights)
    assert torch.equal(acc, bias.view(1, 3, 1, 1).expand(1, 3, 7, 7))


def test_conv2d_large_reduction_is_chunked_and_exact() -> None:
    # C_in·kh·kw = 1152 taps of |w| = 127: 128·127·1152 ≈ 1.9e7 ≥ 2^24 → two fp32 chunks
    gen = torch.Generator().manual_seed(4)
    q_w = torch.where(torch.rand(4, 128, 3, 3, generator=gen) < 0.5, 127, -127).to(torch.int8)
    weights = prepare_conv2d(q_w, padding=1)
    assert len(weights.plans[0].chunks) == 2
    q_x = rand_q(gen, (1, 128, 6, 6), torch.uint8)
    acc_ref = conv_reference(q_x, 77, q_w, torch.zeros(4), 1, 1, 1, 1)
    assert torch.equal(conv2d_acc(q_x, 77, weights).long(), acc_ref)
    with pytest.raises(ValueError, match="not exact"):
        conv2d_acc(q_x, 77, weights, method="direct")


def test_conv2d_direct_path_exact_near_the_float32_bound() -> None:
    # all products positive, partial sums up to ~0.77·2^24: an fp32 conv that formed anything
    # but sums of exact products (e.g. Winograd transforms) would lose low bits here
    gen = torch.Generator().manual_seed(11)
    q_w = torch.randint(110, 114, (32, 128, 3, 3), generator=gen).to(torch.int8)  # 128·Σ|w| < 2^24
    q_x = torch.randint(200, 256, (1, 128, 10, 10), generator=gen).to(torch.uint8)
    weights = prepare_conv2d(q_w, padding=1)
    assert len(weights.plans[0].chunks) == 1
    acc_ref = conv_reference(q_x, 128, q_w, torch.zeros(32), 1, 1, 1, 1)
    assert int(acc_ref.max()) > 0.7 * 2**24
    for method in ("direct", "im2col"):
        assert torch.equal(conv2d_acc(q_x, 128, weights, method=method).long(), acc_ref)


@pytest.mark.parametrize("batch", [1, 4])  # ≤ 256 output pixels: ATen im2col; else oneDNN
@pytest.mark.parametrize("zx", [128, 3])  # |q − Z_x| ≤ 128: centred by Z_x; else by 128, padded
def test_conv2d_direct_centring_and_backends_exact_near_the_bound(batch: int, zx: int) -> None:
    # 128·Σ|w| just below 2^24 and 255·Σ|w| above: with Z_x = 128 the input is centred by Z_x
    # (native zero padding), with Z_x = 3 by 128 (padding Z_x − 128 written by hand)
    gen = torch.Generator().manual_seed(13)
    q_w = torch.randint(110, 114, (8, 128, 3, 3), generator=gen).to(torch.int8)
    bias = torch.randint(-3000, 3000, (8,), generator=gen, dtype=torch.int32)
    q_x = torch.randint(200, 256, (batch, 128, 10, 10), generator=gen).to(torch.uint8)
    q_x[:, :, 4:6] = 0  # some large negative q − Z_x too
    weights = prepare_conv2d(q_w, bias, padding=1)
    assert 128 * weights.max_abs_sum < 2**24 <= 255 * weights.max_abs_sum
    acc_ref = conv_reference(q_x, zx, q_w, bias, 1, 1, 1, 1)
    assert torch.equal(conv2d_acc(q_x, zx, weights, method="direct").long(), acc_ref)
    mult = [3e-5 * (1 + i / 8) for i in range(8)]
    rq = Requantizer.from_multiplier(torch.tensor(mult), 9, torch.uint8, rounding="single")
    y = conv2d_nchw(q_x, zx, weights, rq)
    assert y.is_contiguous(memory_format=torch.channels_last)  # no copy into a layout
    m0s, shifts = zip(*(quantize_multiplier(m) for m in mult))
    expect = [[min(max(9 + ((a * m0s[c] + (1 << (shifts[c] - 1))) >> shifts[c]), 0), 255)
               for a in acc_ref[:, c].flatten().tolist()] for c in range(8)]  # fmt: skip
    assert [y[:, c].flatten().tolist() for c in range(8)] == expect


def test_conv_transpose2d_upsampling_centred_by_128_when_z_x_would_overflow() -> None:
    # 255·Σ_i|w| ≥ 2^24 > 128·Σ_i|w| per column: centred by 128, the correction in the offsets
    gen = torch.Generator().manual_seed(14)
    q_w = torch.where(torch.rand(600, 3, 2, 2, generator=gen) < 0.5, 127, -127).to(torch.int8)
    bias = torch.randint(-3000, 3000, (3,), generator=gen, dtype=torch.int32)
    weights = prepare_conv_transpose2d(q_w, bias, stride=2)
    q_x = torch.randint(0, 256, (2, 600, 3, 3), generator=gen).to(torch.uint8)
    expect = F.conv_transpose2d(q_x.double() - 5, q_w.double(), bias.double(), 2).long()
    assert torch.equal(conv_transpose2d_acc(q_x, 5, weights).long(), expect)
    mult = [2e-6, 3e-6, 5e-6]
    rq = Requantizer.from_multiplier(torch.tensor(mult), 120)
    y = conv_transpose2d_nchw(q_x, 5, weights, rq)
    assert torch.equal(y, ref_requant(expect, mult, 120, torch.uint8, 1))


def test_conv_int16_activations_take_the_float64_path_exactly() -> None:
    gen = torch.Generator().manual_seed(12)
    q_x = rand_q(gen, (1, 6, 7, 7), torch.int16)
    q_w = rand_w(gen, (4, 3, 3, 3), 60)
    weights = prepare_conv2d(q_w, padding=1, groups=2)
    acc_ref = conv_reference(q_x, -1234, q_w, torch.zeros(4), 1, 1, 1, 2)
    assert torch.equal(conv2d_acc(q_x, -1234, weights).long(), acc_ref)
    with pytest.raises(ValueError, match="not exact"):
        conv2d_acc(q_x, -1234, weights, method="direct")
    t_w = rand_w(gen, (6, 2, 3, 3), 60)
    ct = prepare_conv_transpose2d(t_w, stride=2, padding=1, output_padding=1)
    expect = F.conv_transpose2d(q_x.double() + 1234, t_w.double(), None, 2, 1, 1).long()
    assert torch.equal(conv_transpose2d_acc(q_x, -1234, ct).long(), expect)


def test_conv2d_validates_input() -> None:
    weights = prepare_conv2d(torch.zeros(4, 3, 3, 3, dtype=torch.int8))
    with pytest.raises(ValueError, match=r"input has 5 channels.*expect 3"):
        conv2d_acc(torch.zeros(1, 5, 8, 8, dtype=torch.uint8), 0, weights)
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        conv2d_acc(torch.zeros(1, 3, 2, 2, dtype=torch.uint8), 0, weights)
    with pytest.raises(ValueError, match="layout"):
        conv2d_acc(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), 0, weights, "CHWN")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="divisible by groups"):
        prepare_conv2d(torch.zeros(4, 3, 3, 3, dtype=torch.int8), groups=3)


# --------------------------------------------------------------------------- conv_transpose2d


CT_CASES = [
    # c_in, c_out, kernel, stride, padding, output_padding, dilation, groups
    (4, 6, (2, 2), (2, 2), (0, 0), (0, 0), (1, 1), 1),  # 2x2 stride-2 up-sampling: no overlap
    (6, 4, (2, 2), (2, 2), (0, 0), (0, 0), (1, 1), 2),
    (3, 5, (3, 3), (2, 2), (1, 1), (1, 1), (1, 1), 1),
    (4, 4, (4, 4), (2, 2), (1, 1), (0, 0), (1, 1), 4),
    (2, 3, (3, 2), (1, 3), (0, 1), (0, 2), (2, 1), 1),
    (6, 6, (3, 3), (3, 2), (2, 0), (1, 0), (1, 2), 3),
    (5, 2, (1, 1), (1, 1), (0, 0), (0, 0), (1, 1), 1),
]


@pytest.mark.parametrize("case", CT_CASES)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_conv_transpose2d_bit_exact(case: tuple, layout: str) -> None:
    c_in, c_out, k, s, p, op, d, g = case
    gen = torch.Generator().manual_seed(sum(k) + c_in)
    for dtype, zx in ((torch.uint8, 37), (torch.int8, 11)):
        q_x, q_w = rand_q(gen, (2, c_in, 5, 4), dtype), rand_w(gen, (c_in, c_out // g, *k))
        bias = torch.randint(-4000, 4000, (c_out,), generator=gen, dtype=torch.int32)
        weights = prepare_conv_transpose2d(q_w, bias, s, p, op, g, d)
        acc_ref = F.conv_transpose2d(q_x.double() - zx, q_w.double(), bias.double(), s, p, op, g, d)
        mult = (torch.rand(c_out, generator=gen, dtype=torch.float64) * 3e-3 + 1e-4).tolist()
        rq = Requantizer.from_multiplier(torch.tensor(mult), 120)
        y_ref = ref_requant(acc_ref.long(), mult, 120, torch.uint8, 1)
        x_in = q_x.permute(0, 2, 3, 1).contiguous() if layout == "NHWC" else q_x
        acc = conv_transpose2d_acc(x_in, zx, weights, layout)  # type: ignore[arg-type]
        y = conv_transpose2d(x_in, zx, weights, rq, layout)  # type: ignore[arg-type]
        if layout == "NHWC":
            acc, y = acc.permute(0, 3, 1, 2), y.permute(0, 3, 1, 2)
        assert torch.equal(acc.long(), acc_ref.long())
        assert torch.equal(y, y_ref)


def test_conv_transpose2d_large_overlap_uses_exact_float64_fold() -> None:
    # 64 channels · 4x4 taps of |w| = 127 with |q − Z| ≤ 255: 255·127·1024 ≈ 3.3e7 ≥ 2^24
    gen = torch.Generator().manual_seed(5)
    q_w = torch.where(torch.rand(64, 2, 4, 4, generator=gen) < 0.5, 127, -127).to(torch.int8)
    weights = prepare_conv_transpose2d(q_w, stride=1, padding=1)
    q_x = torch.where(torch.rand(1, 64, 5, 5, generator=gen) < 0.5, 255, 0).to(torch.uint8)
    expect = F.conv_transpose2d(q_x.double(), q_w.double(), None, 1, 1).long()
    assert torch.equal(conv_transpose2d_acc(q_x, 0, weights).long(), expect)


def test_conv_transpose2d_validates_input() -> None:
    with pytest.raises(ValueError, match="output_padding"):
        prepare_conv_transpose2d(
            torch.zeros(2, 2, 3, 3, dtype=torch.int8), stride=2, output_padding=2
        )
    weights = prepare_conv_transpose2d(torch.zeros(2, 2, 3, 3, dtype=torch.int8))
    with pytest.raises(ValueError, match="input has 3 channels"):
        conv_transpose2d_acc(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), 0, weights)


# --------------------------------------------------------------------------- element-wise


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("size", [(7, 6), (56, 56)])  # 56x56 channels-last: torch's kernel refuses
def test_max_pool2d_pads_with_qmin(channels_last: bool, size: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(8)
    q = rand_q(gen, (2, 3, *size), torch.int8)
    padded = F.pad(q.double(), (1, 1, 1, 1), value=-128.0)
    expect = F.max_pool2d(padded, 3, 2, 0, ceil_mode=False).to(torch.int8)
    x_in = q.contiguous(memory_format=torch.channels_last) if channels_last else q
    assert torch.equal(max_pool2d(x_in, 3, 2, 1), expect)


def ref_avg_pool(q, zx, k, s, p, ceil, include_pad, m_scale, zy):  # type: ignore[no-untyped-def]
    """Window loops: sum of (q − Z_x) over the window, torch's divisor, gemmlowp rounding."""
    n, c, h, w = q.shape

    def out_size(size: int) -> int:
        num = size + 2 * p - k
        o = (-(-num // s) if ceil else num // s) + 1
        return o - 1 if ceil and (o - 1) * s >= size + p else o

    ho, wo = out_size(h), out_size(w)
    a = q.long() - zx
    y = torch.empty(n, c, ho, wo, dtype=torch.long)
    for i in range(ho):
        for j in range(wo):
            hs, ws = i * s - p, j * s - p
            he, we = min(hs + k, h + p), min(ws + k, w + p)
            count = (he - hs) * (we - ws)
            hs0, ws0, he0, we0 = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            if not include_pad:
                count = (he0 - hs0) * (we0 - ws0)
            total = a[:, :, hs0:he0, ws0:we0].sum((2, 3)).numpy()
            y[:, :, i, j] = torch.from_numpy(
                zy + ref_mbqm(total, *quantize_multiplier(m_scale / count))
            )
    return y


@pytest.mark.parametrize(("k", "s", "p", "ceil", "include_pad"),
                         [(2, 2, 0, False, True), (3, 2, 1, True, True), (3, 2, 1, True, False),
                          (3, 1, 1, False, False), (5, 3, 2, True, True)])  # fmt: skip
def test_avg_pool2d_rounding(k: int, s: int, p: int, ceil: bool, include_pad: bool) -> None:
    gen = torch.Generator().manual_seed(9)
    q = rand_q(gen, (2, 3, 9, 8), torch.uint8)
    y = avg_pool2d(
        q, 90, k, s, p, ceil, include_pad, x_scale=0.02, out_scale=0.03, out_zero_point=60
    )
    expect = ref_avg_pool(q, 90, k, s, p, ceil, include_pad, 0.02 / 0.03, 60).clamp(0, 255)
    assert torch.equal(y.long(), expect)
    # the same as torch's float average pool to within one output step
    real = F.avg_pool2d(0.02 * (q.double() - 90), k, s, p, ceil, include_pad)
    assert (y.double() - (real / 0.03 + 60).round()).abs().max() <= 1


def test_global_avg_pool2d_nhwc() -> None:
    gen = torch.Generator().manual_seed(10)
    q = rand_q(gen, (2, 4, 5, 7), torch.int8)
    y = global_avg_pool2d(q.permute(0, 2, 3, 1).contiguous(), -3, layout="NHWC")
    total = (q.long() + 3).sum((2, 3)).numpy()
    expect = np.clip(-3 + ref_mbqm(total, *quantize_multiplier(1 / 35)), -128, 127)
    assert y.shape == (2, 1, 1, 4) and torch.equal(y.reshape(2, 4).long(), torch.from_numpy(expect))


def test_global_avg_pool2d_sums_beyond_float32_stay_exact() -> None:
    # int8 codes far from Z_x = 127 over 300x300 windows: Σ(q − Z_x) = −175·2^17 + 1 lies beyond
    # 2^24, where float32 keeps only even integers and would round it onto the tie −175·2^17;
    # with M = 2^−18 that moves the mean from −87.49999… (→ −87) to −87.5 (→ −88)
    q = torch.full((1, 1, 300, 300), -128, dtype=torch.int8)
    q.view(-1)[:97] = -1
    q.view(-1)[97] = -46
    total = int((q.long() - 127).sum())
    assert total == -175 * 2**17 + 1
    y = global_avg_pool2d(q, 127, x_scale=90000 * 2.0**-18, out_scale=1.0, out_zero_point=0)
    assert int(y) == int(ref_mbqm(np.array([total]), 1 << 30, 48)[0]) == -87


def test_pooling_validates_input() -> None:
    with pytest.raises(TypeError, match="uint8, int8 or int16"):
        max_pool2d(torch.zeros(1, 1, 4, 4), 2)
    with pytest.raises(ValueError, match="output zero point 300"):
        avg_pool2d(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), 0, 2, out_zero_point=300)
