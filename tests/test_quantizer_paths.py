"""The uniform quantizer on every path — small tensors, per-channel, the chunked large-tensor
path, the compiled ``fused=True`` path — and every rounding mode, against an independent numpy
reference computed in float64; ``fake_quantize == dequantize(quantize)`` bit for bit.

Reference (numpy, written here): r = x / S as IEEE division in the data's precision (float32
data: float32 division, as ONNX QuantizeLinear; float64 data: float64 division), then the
rounding mode in float64 — half_even: np.rint; half_away: trunc(r) + sign(r)·[|r − trunc(r)| ≥ ½];
floor: np.floor — then + Z and the clip to [qmin, qmax]. Exact comparisons throughout.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import zeropoint as zp
from zeropoint import fused
from zeropoint.functional import CHUNK
from zeropoint.qparams import QParams, Scheme

DETERMINISTIC = ("half_even", "half_away", "floor")
#: below the chunked path; above it (several chunks and a partial one); above the fused path's
SIZES = (1000, CHUNK + 12_345, fused.MIN_ELEMENTS + 777)

has_compiler = shutil.which(os.environ.get("CXX", "g++")) is not None


def reference_codes(x: np.ndarray, scale: float, zero_point: int, scheme: Scheme) -> np.ndarray:
    if x.dtype == np.float64:
        r = x / np.float64(scale)
    else:
        r = (x.astype(np.float32) / np.float32(scale)).astype(np.float64)
    if scheme.rounding == "half_even":
        k = np.rint(r)
    elif scheme.rounding == "half_away":
        t = np.trunc(r)
        k = t + np.sign(r) * (np.abs(r - t) >= 0.5)
    else:
        k = np.floor(r)
    return np.clip(k + zero_point, scheme.qmin, scheme.qmax).astype(np.int64)


def near_ties(n: int, scale: float, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Half of the values on or one ulp beside (k + ½)·S, a quarter Gaussian, a quarter far
    outside the range (clipped at both ends)."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(-200, 200, (n,), generator=g).to(dtype)
    ties = (k + 0.5) * scale
    side = torch.randint(-1, 2, (n,), generator=g)
    ties = torch.where(side == 0, ties, torch.nextafter(ties, side * torch.tensor(torch.inf)))
    plain = torch.randn(n, generator=g, dtype=dtype) * scale * 40
    far = torch.randn(n, generator=g, dtype=dtype) * scale * 2000
    pick = torch.randint(0, 4, (n,), generator=g)
    return torch.where(pick < 2, ties, torch.where(pick == 2, plain, far)).contiguous()


def bits(t: torch.Tensor) -> torch.Tensor:
    """The bit pattern of a float tensor (so that −0.0 and +0.0 differ)."""
    view = {torch.float64: torch.int64, torch.float32: torch.int32}
    return t.view(view.get(t.dtype, torch.int16))


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("rounding", DETERMINISTIC)
def test_every_path_gives_the_reference_codes(rounding: str, dtype: torch.dtype, n: int) -> None:
    scheme = Scheme(bits=8, signed=False, rounding=rounding)
    qp = zp.qparams_from_range(-3.1, 2.7, scheme)
    s, z = float(qp.scale), int(qp.zero_point)
    x = near_ties(n, s, dtype, seed=n % 97)
    expected = reference_codes(x.numpy(), s, z, scheme)
    q = zp.quantize_int(x, qp)
    np.testing.assert_array_equal(q.to(torch.int64).numpy(), expected)
    # fake_quantize is dequantize(quantize) bit for bit, in the input's dtype
    qt = zp.quantize(x, qp)
    assert qt.dtype == dtype
    assert torch.equal(bits(zp.fake_quantize(x, qp)), bits(zp.dequantize(qt)))
    reals = (expected - z).astype(np.float64) * s  # exact: (q − Z)·S has ≤ 33 bits
    np.testing.assert_array_equal(zp.dequantize(qt).numpy(), reals.astype(x.numpy().dtype))
    if dtype == torch.float32 and n >= fused.MIN_ELEMENTS and has_compiler:
        got = zp.quantize_int(x, qp, fused=True)
        assert fused.available()
        np.testing.assert_array_equal(got.to(torch.int64).numpy(), expected)
        assert torch.equal(zp.dequantize(got, qp, fused=True), zp.dequantize(got, qp))


def test_float64_input_is_divided_in_float64() -> None:
    # x/S in float64 lies just above k + ½ where the float32 quotient is exactly on it: rounding
    # the float32 quotient (the old behaviour) gives the even neighbour k, float64 gives k + 1
    s = 0.125  # a power of two: every product below is exact
    qp = QParams(torch.tensor(s), torch.tensor(0), Scheme(bits=8))
    x = torch.tensor([2.5 * s * (1 + 2**-40), -6.5 * s * (1 + 2**-40)], dtype=torch.float64)
    assert (x.float() / qp.scale).tolist() == [2.5, -6.5]
    assert zp.quantize_int(x, qp).tolist() == [3, -7]
    assert zp.quantize_int(x.float(), qp).tolist() == [2, -6]
    big = x.repeat(CHUNK)  # the chunked path divides in float64 too
    assert zp.quantize_int(big, qp)[:2].tolist() == [3, -7]
    assert torch.equal(bits(zp.fake_quantize(x, qp)), bits(zp.dequantize(zp.quantize(x, qp))))
    assert zp.fake_quantize(x, qp).tolist() == [3 * s, -7 * s]


@pytest.mark.parametrize("n", SIZES)
def test_stochastic_rounding_is_unbiased_on_every_path(n: int) -> None:
    # r = x/S = 0.3 everywhere: each code is 1 with probability 0.3 (the old chunked path
    # returned the scratch buffer: all codes 0); draws are independent across chunks
    qp = QParams(torch.tensor(1.0), torch.tensor(0), Scheme(bits=8, rounding="stochastic"))
    x = torch.full((n,), 0.3)
    q = zp.quantize_int(x, qp, generator=torch.Generator().manual_seed(n)).double()
    assert set(q.unique().tolist()) <= {0.0, 1.0}
    # the mean of n Bernoulli(0.3) draws lies within 5 standard errors of 0.3
    assert abs(q.mean().item() - 0.3) < 5 * (0.3 * 0.7 / n) ** 0.5
    if n > CHUNK:
        assert not torch.equal(q[:CHUNK], q[CHUNK : 2 * CHUNK])
    again = zp.quantize_int(x, qp, generator=torch.Generator().manual_seed(n)).double()
    assert torch.equal(q, again)  # the generator alone decides the draws
    # codes are ⌊r⌋ or ⌊r⌋ + 1 for any r, and E[q] = r on average over mixed fractions
    r = torch.rand(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 100 - 50
    q = zp.quantize_int(r.float(), qp, 7).double()
    floor = torch.floor(r.float().double())
    assert bool(((q == floor) | (q == floor + 1)).all())
    assert abs((q - r.float().double()).mean().item()) < 5 * 0.5 / n**0.5


def test_stochastic_rounding_needs_a_generator() -> None:
    scheme = Scheme(bits=8, rounding="stochastic")
    qp = QParams(torch.tensor(1.0), torch.tensor(0), scheme)
    for call in (zp.quantize_int, zp.quantize, zp.fake_quantize):
        with pytest.raises(ValueError, match="generator"):
            call(torch.full((4,), 0.3), qp)
    with pytest.raises(ValueError, match="generator"):
        zp.nn.FakeQuant(scheme)
    fq = zp.nn.FakeQuant(scheme, mode="quantize", generator=torch.Generator().manual_seed(0))
    fq.set_qparams(qp)
    out = fq(torch.full((10_000,), 0.3))
    assert 0.25 < out.mean().item() < 0.35


@pytest.mark.parametrize(
    "dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str
)
def test_reduced_precision_inputs_are_widened_exactly(dtype: torch.dtype) -> None:
    x = torch.randn(5000, generator=torch.Generator().manual_seed(3)).to(dtype) * 3
    qp = zp.calibrate(x.float(), Scheme(bits=6, symmetric=True, rounding="half_away"))
    s = float(qp.scale)
    data = x.numpy() if dtype != torch.bfloat16 else x.float().numpy()
    if dtype == torch.float16:
        data = data.astype(np.float32)
    np.testing.assert_array_equal(
        zp.quantize_int(x, qp).long().numpy(), reference_codes(data, s, 0, qp.scheme)
    )
    y = zp.fake_quantize(x, qp)
    assert y.dtype == dtype
    assert torch.equal(bits(y), bits(zp.dequantize(zp.quantize(x, qp))))


# --------------------------------------------------------------------------- properties


@st.composite
def cases(draw: st.DrawFn) -> tuple[torch.Tensor, QParams]:
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=0, max_size=3)))
    dtype = draw(st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]))
    bits_ = draw(st.integers(2, 16))
    signed = draw(st.booleans())
    symmetric = draw(st.booleans())
    narrow = draw(st.booleans())
    rounding = draw(st.sampled_from(DETERMINISTIC))
    granularity = draw(st.sampled_from(["tensor", "channel", "group"]))
    axis: int | None = None
    group: int | None = None
    if shape and granularity != "tensor":
        axis = draw(st.integers(-len(shape), len(shape) - 1))
        if granularity == "group":
            size = shape[axis]
            group = draw(st.sampled_from([d for d in range(1, size + 1) if size % d == 0]))
    scheme = Scheme(
        bits=bits_,
        signed=signed,
        symmetric=symmetric,
        narrow=narrow,
        rounding=rounding,
        axis=axis,
        group_size=group,
    )
    seed = draw(st.integers(0, 2**16))
    spread = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * spread
    x = x.to(dtype)
    qp = zp.calibrate(x.float(), scheme)
    # values beyond the calibrated range, so that clipping happens too
    return x * 1.25, qp


@settings(max_examples=300, deadline=None)
@given(case=cases())
def test_properties_over_shapes_sizes_dtypes_and_schemes(
    case: tuple[torch.Tensor, QParams],
) -> None:
    x, qp = case
    scheme = qp.scheme
    q = zp.quantize_int(x, qp)
    assert q.shape == x.shape and q.dtype == scheme.format.storage_dtype
    if q.numel():
        assert int(q.min()) >= scheme.qmin and int(q.max()) <= scheme.qmax
    qt = zp.quantize(x, qp)
    assert torch.equal(qt.int_repr(), q)
    y = zp.fake_quantize(x, qp)
    assert y.dtype == x.dtype and torch.equal(bits(y), bits(zp.dequantize(qt)))
    # inside the range the error is at most half a step (float64 math on the exact codes)
    s, z, view = qp.broadcast(x.shape)
    xd = x.double().reshape(view)
    sd, zd = s.double(), z.double()
    lo, hi = sd * (scheme.qmin - zd), sd * (scheme.qmax - zd)
    err = ((q.reshape(view).double() - zd) * sd - xd).abs()
    inside = (xd >= lo) & (xd <= hi)
    # x/S is computed in float32 (as ONNX QuantizeLinear does): at a near-tie its rounding error,
    # up to |x/S|·2^-24 steps, can pick the other side of the tie
    slack = sd * (xd.abs() / sd * 2.0**-23 + 1e-6)
    bound = (sd / 2 if scheme.rounding != "floor" else sd) + slack
    assert bool((err <= bound)[inside].all())
