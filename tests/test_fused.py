"""zeropoint.fused: the compiled one-pass quantize / dequantize give exactly the eager codes.

Reference: numpy float32 arithmetic, q = clip(rint(x / S) + Z) (IEEE division, round half to
even), which is ONNX QuantizeLinear's definition, and ONNX's own reference evaluator. Tests of the
compiled kernels skip where no C++ compiler is installed; the eager large-tensor path and the
fallback are checked everywhere (every rounding mode and size: tests/test_quantizer_paths.py).
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

import zeropoint as zp
from tests.test_functional import _onnx_quantize
from zeropoint import fused
from zeropoint.functional import dequantize_int

N = fused.MIN_ELEMENTS + 12_345  # above the size where the fused path runs; not a round length

#: inductor compiles C++ with $CXX or g++; without one, only the fallback test can run
needs_compiler = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "g++")) is None, reason="no C++ compiler for inductor"
)


def _near_ties(scale: float, n: int, gen: torch.Generator) -> torch.Tensor:
    """Values whose quotient x / S lies on or within an ulp of a half-integer (where x·(1/S)
    and x / S round differently), mixed with plain Gaussian values and clipped outliers."""
    k = torch.randint(-140, 140, (n,), generator=gen).to(torch.float32)
    ties = (k + 0.5) * scale
    side = torch.randint(-1, 2, (n,), generator=gen)  # one ulp down, the tie itself, one up
    ties = torch.where(side == 0, ties, torch.nextafter(ties, side * torch.tensor(torch.inf)))
    plain = torch.randn(n, generator=gen) * scale * 40
    pick = torch.rand(n, generator=gen) < 0.5
    return torch.where(pick, ties, plain).contiguous()


def _numpy_codes(x: torch.Tensor, qp: zp.QParams) -> np.ndarray:
    s = np.float32(float(qp.scale))
    q = np.rint(x.numpy() / s).astype(np.float64) + int(qp.zero_point)
    return np.clip(q, qp.scheme.qmin, qp.scheme.qmax).astype(np.int64)


@pytest.mark.parametrize(
    "scheme", [zp.Scheme(bits=8, symmetric=True), zp.Scheme(bits=8, signed=False)]
)
def test_eager_large_path_equals_ieee_division_codes(scheme: zp.Scheme) -> None:
    """Runs with or without a compiler: the chunked eager path on near-ties, where rounding
    x·fl(1/S) (torch's way) would differ."""
    gen = torch.Generator().manual_seed(3)
    qp = zp.qparams_from_range(-3.1, 2.7, scheme)
    x = _near_ties(float(qp.scale), N, gen)
    expected = _numpy_codes(x, qp)
    np.testing.assert_array_equal(zp.quantize_int(x, qp).to(torch.int64).numpy(), expected)
    s = np.float32(float(qp.scale))
    by_inverse = np.rint(x.numpy() * (np.float32(1) / s)).astype(np.float64) + int(qp.zero_point)
    by_inverse = np.clip(by_inverse, qp.scheme.qmin, qp.scheme.qmax)
    assert int((by_inverse != expected).sum()) > 1000


@needs_compiler
@pytest.mark.parametrize(
    "scheme", [zp.Scheme(bits=8, symmetric=True), zp.Scheme(bits=8, signed=False)]
)
def test_fused_quantize_equals_ieee_division_codes(scheme: zp.Scheme) -> None:
    gen = torch.Generator().manual_seed(3)
    qp = zp.qparams_from_range(-3.1, 2.7, scheme)
    x = _near_ties(float(qp.scale), N, gen)
    got = zp.quantize_int(x, qp, fused=True)
    assert fused.available()
    assert got.dtype == scheme.format.storage_dtype
    np.testing.assert_array_equal(got.to(torch.int64).numpy(), _numpy_codes(x, qp))


@needs_compiler
def test_fused_quantize_matches_onnx_reference_on_a_slice() -> None:
    gen = torch.Generator().manual_seed(4)
    qp = zp.qparams_from_range(-2.0, 5.0, zp.Scheme(bits=8, signed=False))
    x = _near_ties(float(qp.scale), N, gen)
    got = zp.quantize_int(x, qp, fused=True).to(torch.int64).numpy()
    np.testing.assert_array_equal(got[:200_000], _onnx_quantize(x[:200_000].numpy(), qp))


@needs_compiler
def test_fused_quantize_keeps_shape_and_reads_non_contiguous_input() -> None:
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2048, 1100, generator=gen).t()  # transposed view
    qp = zp.qparams_from_range(-3.0, 3.0, zp.Scheme(bits=8, symmetric=True))
    got = zp.quantize_int(x, qp, fused=True)
    assert got.shape == x.shape
    np.testing.assert_array_equal(
        got.to(torch.int64).numpy(), _numpy_codes(x.contiguous(), qp).reshape(x.shape)
    )


@needs_compiler
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_fused_quantize_rejects_non_finite_values(bad: float) -> None:
    x = torch.randn(N)
    x[777] = bad
    qp = zp.qparams_from_range(-3.0, 3.0, zp.Scheme(bits=8, symmetric=True))
    with pytest.raises(ValueError, match=r"contains .* value\(s\) out of"):
        zp.quantize_int(x, qp, fused=True)


@needs_compiler
def test_fused_dequantize_equals_float32_formula() -> None:
    gen = torch.Generator().manual_seed(6)
    qp = zp.qparams_from_range(-2.0, 5.0, zp.Scheme(bits=8, signed=False))
    q = torch.randint(0, 256, (N,), generator=gen, dtype=torch.uint8)
    expected = (q.numpy().astype(np.float32) - np.float32(int(qp.zero_point))) * np.float32(
        float(qp.scale)
    )
    got = dequantize_int(q, qp, fused=True)
    assert got.dtype == torch.float32
    np.testing.assert_array_equal(got.numpy(), expected)
    np.testing.assert_array_equal(zp.dequantize(q, qp).numpy(), expected)


def test_a_kernel_that_cannot_compile_falls_back_to_the_eager_codes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(key: object, factory: object) -> object:
        def fail(*args: object) -> None:
            raise RuntimeError("no C++ compiler")

        return fail

    monkeypatch.setattr(fused, "_compiled", broken)
    monkeypatch.setattr(fused, "_failed", [])
    qp = zp.qparams_from_range(-3.0, 3.0, zp.Scheme(bits=8, symmetric=True))
    x = torch.randn(N, generator=torch.Generator().manual_seed(7))
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        got = zp.quantize_int(x, qp, fused=True)
    assert not fused.available()
    np.testing.assert_array_equal(got.to(torch.int64).numpy(), _numpy_codes(x, qp))
    q = zp.quantize_int(x, qp)  # dequantize falls back too, silently after the first warning
    np.testing.assert_array_equal(
        zp.dequantize(q, qp, fused=True).numpy(),
        (q.numpy().astype(np.float32) - np.float32(0)) * np.float32(float(qp.scale)),
    )
