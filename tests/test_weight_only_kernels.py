"""The compiled weight-only kernels (`zeropoint.kernels`) against independent references:
QTensor's dequantization (bit for bit), torch's float8 casts, a float64 matrix product with the
float32 summation bound, and the pure-torch fallback."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zeropoint as zp
from zeropoint.kernels import packed as kernels
from zeropoint.kernels.build import build, load
from zeropoint.nn.weight_only import WeightOnlyLinear
from zeropoint.qtensor import QTensor, container_bits

needs_kernels = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler"
)
U = 2.0**-24  # float32 unit round-off


def _summation_bound(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """|fl(Σ_k x_k·w_k + b) − exact| ≤ γ_{K+1}·(Σ|x_k||w_k| + |b|), γ_n = n·u / (1 − n·u)
    (Higham, Accuracy and Stability of Numerical Algorithms, §3.1) for any summation order."""
    n = x.shape[-1] + 1
    gamma = n * U / (1 - n * U)
    mag = x.double().abs() @ w.double().abs().T
    if b is not None:
        mag = mag + b.double().abs()
    return gamma * mag


def _weight(
    bits: int, scheme: zp.Scheme, n: int = 48, k: int = 256
) -> tuple[QTensor, torch.Tensor]:
    torch.manual_seed(bits)
    w = torch.randn(n, k) * torch.rand(n, 1)
    qp = zp.calibrate(w, scheme)
    return QTensor.from_int(zp.quantize_int(w, qp), qp), w


SCHEMES = [
    zp.Scheme(bits=4, symmetric=True, group_size=32),
    zp.Scheme(bits=4, symmetric=False, group_size=128),
    zp.Scheme(bits=3, symmetric=False, group_size=64),
    zp.Scheme(bits=2, symmetric=True, axis=0),
    zp.Scheme(bits=8, symmetric=True, axis=0),
    zp.Scheme(bits=8, symmetric=False, signed=False),
    zp.Scheme(bits=6, symmetric=False, group_size=32),
]


@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
def test_packed_weight_decodes_qtensor_bytes_bit_for_bit(scheme: zp.Scheme) -> None:
    qt, _ = _weight(scheme.bits, scheme)
    pw = kernels.affine(qt.data, qt.qparams, tuple(qt.shape), qt.packed)
    assert pw.container == (container_bits(scheme.bits) if qt.packed else 8)
    assert pw.codes.data_ptr() == qt.data.data_ptr()  # QTensor's own bytes, not a copy
    reference = qt.dequantize()  # S·(q − Z), zeropoint.functional
    assert torch.equal(pw.dequantize(), reference)
    if load():
        assert torch.equal(kernels.dequantize(pw, kernel=True), reference)


def test_pack_codes_round_trips_and_matches_qtensor_layout() -> None:
    g = torch.Generator().manual_seed(0)
    for c in (1, 2, 4, 8):
        u = torch.randint(0, 1 << c, (5, 40), generator=g)
        packed = kernels.pack_codes(u, c)
        assert packed.shape == (5, 40 * c // 8)
        assert torch.equal(kernels.unpack_codes(packed, c, 40), u.int())
        if c < 8:  # QTensor packs unsigned codes the same way (first element in the low bits)
            scheme = zp.Scheme(bits=c, signed=False)
            qp = zp.QParams(torch.tensor(1.0), torch.tensor(0), scheme)
            assert torch.equal(QTensor.from_int(u.to(torch.uint8), qp).data, packed.reshape(-1))


def _kernel_cases() -> list[kernels.PackedWeight]:
    g = torch.Generator().manual_seed(1)
    n, k = 40, 256
    cases = []
    for scheme in SCHEMES:
        qt, _ = _weight(scheme.bits, scheme, n, k)
        cases.append(kernels.affine(qt.data, qt.qparams, (n, k), qt.packed))
    for bits in (1, 2, 3, 4, 8):
        codes = torch.randint(0, 1 << bits, (n, k), generator=g)
        rows = 1 if bits in (2, 8) else n  # one table for the tensor, or one per row
        cases.append(kernels.table(codes, torch.randn(rows, 1 << bits, generator=g), bits))
    w = torch.randn(n, k, generator=g)
    for dtype, kind in ((torch.float8_e4m3fn, "fp8_e4m3fn"), (torch.float8_e5m2, "fp8_e5m2")):
        bits = w.to(dtype).view(torch.uint8)
        cases.append(kernels.fp8(bits, torch.rand(n, generator=g) + 0.5, kind))
    return cases


@needs_kernels
@pytest.mark.parametrize("case", range(len(SCHEMES) + 7))
@pytest.mark.parametrize("rows", [1, 3, 8, 9, 16, 40])
def test_kernel_matches_float64_within_the_summation_bound(case: int, rows: int) -> None:
    pw = _kernel_cases()[case]
    assert load(), "the kernels should build where a compiler exists"
    torch.manual_seed(rows)
    x = torch.randn(rows, pw.shape[1])
    bias = torch.randn(pw.shape[0])
    w = pw.dequantize()
    y = kernels.linear(x, pw, bias, kernel=True)  # register kernel ≤ 16 rows, tiled above
    exact = x.double() @ w.double().T + bias.double()
    assert ((y.double() - exact).abs() <= _summation_bound(x, w, bias)).all()
    # the fallback: the same weights through F.linear
    assert torch.equal(kernels.linear(x, pw, bias, kernel=False), F.linear(x, w, bias))


def test_table_and_fp8_weights_decode_like_torch() -> None:
    g = torch.Generator().manual_seed(2)
    codes = torch.randint(0, 16, (6, 32), generator=g)
    values = torch.randn(6, 16, generator=g)
    pw = kernels.table(codes, values, 4)
    assert torch.equal(pw.dequantize(), values.gather(1, codes))
    w = torch.randn(6, 32, generator=g) * 100
    scale = torch.rand(6, generator=g) + 0.1
    for dtype, kind in ((torch.float8_e4m3fn, "fp8_e4m3fn"), (torch.float8_e5m2, "fp8_e5m2")):
        f8 = w.to(dtype)
        pw = kernels.fp8(f8.view(torch.uint8), scale, kind)
        assert torch.equal(pw.dequantize(), f8.float() * scale.unsqueeze(1))
        if load():
            assert torch.equal(kernels.dequantize(pw, kernel=True), f8.float() * scale.unsqueeze(1))


@needs_kernels
def test_every_fp8_bit_pattern_decodes_like_torch() -> None:
    """All 256 codes of both formats through the vector decoder (subnormals included); the NaN
    patterns are left out: weights are quantized with saturation, never to NaN."""
    assert load()
    codes = torch.arange(256, dtype=torch.uint8).reshape(1, 256).repeat(2, 1)
    for dtype, kind in ((torch.float8_e4m3fn, "fp8_e4m3fn"), (torch.float8_e5m2, "fp8_e5m2")):
        got = kernels.dequantize(kernels.fp8(codes, torch.ones(2), kind), kernel=True)[0]
        ref = codes[0].view(dtype).float()
        finite = torch.isfinite(ref)
        assert torch.equal(got[finite], ref[finite])


@needs_kernels
def test_rows_that_are_not_a_multiple_of_8_run_the_scalar_path() -> None:
    qt, _ = _weight(4, zp.Scheme(bits=4, symmetric=True, axis=0), n=10, k=20)
    pw = kernels.affine(qt.data, qt.qparams, (10, 20), qt.packed)
    x = torch.randn(2, 20)
    y = kernels.linear(x, pw, kernel=True)
    w = pw.dequantize()
    exact = x.double() @ w.double().T
    assert ((y.double() - exact).abs() <= _summation_bound(x, w, None)).all()


def test_weight_only_linear_with_input_scale_and_autograd_fallback() -> None:
    torch.manual_seed(5)
    layer = nn.Linear(64, 24)
    scheme = zp.Scheme(bits=4, symmetric=True, group_size=32)
    s = torch.rand(64) + 0.5
    w_scaled = layer.weight.detach() * s
    qp = zp.calibrate(w_scaled, scheme)
    q = WeightOnlyLinear.from_codes(layer, zp.quantize_int(w_scaled, qp), qp, input_scale=s)
    x = torch.randn(5, 64)
    w_hat = zp.fake_quantize(w_scaled, qp)
    ref = (x / s).double() @ w_hat.double().T + layer.bias.double()
    y = q(x)
    assert (
        (y.double() - ref).abs() <= _summation_bound(x / s, w_hat, layer.bias) + 2 * U * ref.abs()
    ).all()
    # the effective weight: ŵ·diag(1/s)
    torch.testing.assert_close(q.dequantized_weight(), w_hat / s, rtol=2 * U, atol=0)
    # autograd through the input runs the torch path
    xg = x.clone().requires_grad_(True)
    q(xg).sum().backward()
    torch.testing.assert_close(xg.grad, (w_hat / s).sum(0).expand(5, -1), rtol=1e-5, atol=1e-6)


@needs_kernels
def test_build_is_cached_by_source_and_torch_version() -> None:
    first = build()
    assert build() == first and first.is_file()
    assert load() and torch.ops.zeropoint_wo.vector_isa() in (0, 2)


def test_tiled_kernel_runs_inside_and_outside_inference_mode() -> None:
    """sentence-transformers encodes under torch.inference_mode: the many-rows path must not
    update an inference tensor from a worker thread (it did: 'Inplace update to inference
    tensor outside InferenceMode')."""
    import zeropoint as zp

    gen = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(256, 128)
    model = zp.quantize_dynamic(torch.nn.Sequential(layer), zp.int4_weight_only(32))
    x = torch.randn(64, 256, generator=gen)  # more rows than the register kernel takes
    with torch.inference_mode():
        inside = model(x)
    outside = model(x)
    torch.testing.assert_close(inside, outside, rtol=0, atol=0)
