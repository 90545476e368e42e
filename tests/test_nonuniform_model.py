"""Non-uniform and floating-point weights at model level (`zeropoint.nn.codebook_weights`):
each kind against its tensor-level quantizer or torch's casts, per-row k-means against a plain
Lloyd iteration, packed storage through safetensors, and the digits CNN at 2–4 bits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

import zeropoint as zp
from demo.zoo.digits import accuracy
from zeropoint.formats import FP4_E2M1
from zeropoint.nn.codebook_weights import (
    CodedConv,
    CodedLinear,
    WeightSpec,
    fit_rows_kmeans,
    model_nbytes,
    quantize_weights,
)
from zeropoint.nonuniform import BinaryCodeQuantizer, KMeansCodebook, LogQuantizer


def _lloyd(row: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain Lloyd iteration on one row: quantile start, nearest level (ties to the lower),
    cell means (an empty cell keeps its level), until the assignment stops changing."""
    x = row.double()
    r = torch.sort(x).values
    n = 1 << bits
    levels = r[((torch.arange(n, dtype=torch.float64) + 0.5) * x.numel() / n).long()].clone()
    assign = None
    while True:
        dist = (x.unsqueeze(1) - levels.unsqueeze(0)).abs()
        new = dist.argmin(1)  # argmin returns the first (lower) index on ties
        if assign is not None and torch.equal(new, assign):
            return levels, new
        assign = new
        for i in range(n):
            cell = x[assign == i]
            if cell.numel():
                levels[i] = cell.mean()


def test_per_row_kmeans_matches_plain_lloyd() -> None:
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(6, 200, generator=g) * torch.rand(6, 1, generator=g)
    for bits in (2, 3):
        levels, codes = fit_rows_kmeans(rows, bits, iters=1000)
        for i in range(rows.shape[0]):
            ref_levels, ref_codes = _lloyd(rows[i], bits)
            torch.testing.assert_close(levels[i].double(), ref_levels, rtol=1e-6, atol=1e-7)
            assert torch.equal(codes[i], ref_codes)
    # and the library's tensor-level k-means from the same start reaches the same levels
    book = KMeansCodebook.fit(rows[0], 3, init="quantile", tol=0, max_iter=1000)
    torch.testing.assert_close(
        fit_rows_kmeans(rows[:1], 3, 1000)[0][0], book.table, rtol=1e-6, atol=1e-7
    )


def _linear(k: int = 64, n: int = 24) -> nn.Linear:
    torch.manual_seed(1)
    return nn.Linear(k, n)


def _expected_weight(w: torch.Tensor, spec: WeightSpec) -> torch.Tensor:
    """The weight each kind's tensor-level quantizer (or torch's cast) gives, row by row."""
    rows = [w] if not spec.per_channel else list(w)
    out = []
    for r in rows:
        if spec.kind == "int":
            scheme = zp.Scheme(bits=spec.bits, signed=False)
            out.append(zp.fake_quantize(r, zp.calibrate(r, scheme)))
        elif spec.kind == "log2":
            q = LogQuantizer.fit(r, spec.bits, rounding="linear")
            out.append(q.decode(q.encode(r)))
        elif spec.kind == "binary":
            q = BinaryCodeQuantizer.fit(r.reshape(1, -1), spec.bits, axis=0)
            out.append(q.decode(q.encode(r.reshape(1, -1))).reshape(r.shape))
        elif spec.kind == "kmeans":  # per tensor: the library's KMeansCodebook, same seed
            q = KMeansCodebook.fit(r, spec.bits, generator=spec.seed)
            out.append(q.decode(q.encode(r)))
        elif spec.kind == "fp4_e2m1":
            s = r.abs().max() / 6
            out.append(FP4_E2M1.round(r / s, saturate=True) * s)
        else:  # torch's own float8 casts
            dtype = torch.float8_e4m3fn if spec.kind == "fp8_e4m3fn" else torch.float8_e5m2
            s = r.abs().max() / torch.finfo(dtype).max
            out.append((r / s).to(dtype).float() * s)
    return torch.stack(out) if spec.per_channel else out[0]


SPECS = [
    WeightSpec("int", 3),
    WeightSpec("log2", 4),
    WeightSpec("log2", 3, per_channel=False),
    WeightSpec("binary", 2),
    WeightSpec("binary", 3, per_channel=False),
    WeightSpec("kmeans", 4, per_channel=False),
    WeightSpec("fp4_e2m1"),
    WeightSpec("fp8_e4m3fn"),
    WeightSpec("fp8_e5m2", per_channel=False),
    WeightSpec("fp8_e4m3fn", per_channel=False),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.label)
def test_coded_linear_decodes_like_the_tensor_quantizers(spec: WeightSpec) -> None:
    layer = _linear()
    coded = CodedLinear(layer, spec)
    expected = _expected_weight(layer.weight.detach(), spec)
    w = coded.dequantized_weight()
    if spec.kind == "binary":  # the α's are fitted in float64, the table in float32
        torch.testing.assert_close(w, expected, rtol=1e-6, atol=1e-7)
    else:
        assert torch.equal(w, expected)
    x = torch.randn(5, 64)
    torch.testing.assert_close(coded(x), F.linear(x, w, layer.bias), rtol=1e-5, atol=1e-5)
    # packed: c bits per code
    assert coded.weight_codes.numel() == 24 * 64 * spec.container // 8


def test_packed_storage_round_trips_through_safetensors(tmp_path: Path) -> None:
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 10)
    )
    x = torch.randn(2, 3, 4, 4)
    for spec in (WeightSpec("kmeans", 3), WeightSpec("binary", 2), WeightSpec("fp8_e5m2")):
        coded = quantize_weights(model, spec)
        assert isinstance(coded[0], CodedConv) and isinstance(coded[3], CodedLinear)
        path = tmp_path / f"{spec.kind}.safetensors"
        save_file({k: v.contiguous() for k, v in coded.state_dict().items()}, str(path))
        skeleton = quantize_weights(model, spec, fit=False)
        skeleton.load_state_dict(load_file(str(path)))
        with torch.no_grad():
            assert torch.equal(skeleton(x), coded(x))
        assert coded[0].weight_codes.dtype == torch.uint8


def test_transposed_conv_codes_per_output_channel() -> None:
    torch.manual_seed(3)
    layer = nn.ConvTranspose2d(4, 6, 2, stride=2)
    coded = CodedConv(layer, WeightSpec("int", 4, symmetric=True))
    assert coded.rows_shape == (6, 16)  # output channels are axis 1
    w = coded.dequantized_weight()
    x = torch.randn(1, 4, 3, 3)
    torch.testing.assert_close(
        coded(x), F.conv_transpose2d(x, w, layer.bias, stride=2), rtol=1e-5, atol=1e-5
    )


def test_digits_cnn_non_uniform_beats_uniform_at_two_bits(digits) -> None:  # type: ignore[no-untyped-def]
    model, data = digits
    fp32 = accuracy(model, data.x_test, data.y_test)
    acc = {}
    for kind in ("int", "kmeans"):
        q = quantize_weights(model, WeightSpec(kind, 2))
        acc[kind] = accuracy(q, data.x_test, data.y_test)
    # 4 levels: k-means places them where the weights are; min-max int wastes them on the tails
    assert acc["kmeans"] > acc["int"] + 10
    q4 = quantize_weights(model, WeightSpec("kmeans", 4))
    assert accuracy(q4, data.x_test, data.y_test) >= fp32 - 1.5
    assert model_nbytes(q4) < model_nbytes(model) / 3


# --------------------------------------------------------------------------- learned levels (QAT)


def test_learned_codebook_gradients_are_straight_through_and_summed_per_level() -> None:
    from zeropoint.nn.learned_codebook import LearnedCodebook

    g = torch.Generator().manual_seed(4)
    w = torch.randn(3, 2, 5, generator=g, requires_grad=True)
    levels = torch.tensor([[-1.0, -0.2, 0.3, 1.1], [-0.5, 0.0, 0.5, 1.0], [-2.0, -1.0, 1.0, 2.0]])
    quant = LearnedCodebook(levels, axis=0)
    q = quant(w)
    rows = w.detach().reshape(3, -1)
    idx = (rows.unsqueeze(-1) - levels.unsqueeze(1)).abs().argmin(-1)  # nearest, ties lower
    assert torch.equal(q.detach().reshape(3, -1), levels.gather(1, idx))
    upstream = torch.randn(q.shape, generator=g)
    q.backward(upstream)
    # straight through inside [min level, max level] of each row, 0 beyond (clipped)
    inside = (rows >= levels.amin(1, keepdim=True)) & (rows <= levels.amax(1, keepdim=True))
    assert not inside.all() and inside.any()
    assert torch.equal(w.grad, upstream * inside.reshape(w.shape))
    one_hot = F.one_hot(idx, 4).float()  # (3, 10, 4)
    expected = (upstream.reshape(3, -1, 1) * one_hot).sum(1)
    torch.testing.assert_close(quant.levels.grad, expected)


def test_learned_binary_code_gradients() -> None:
    from zeropoint.nn.learned_codebook import LearnedBinaryCodes

    g = torch.Generator().manual_seed(5)
    w = torch.randn(4, 12, generator=g)
    quant = LearnedBinaryCodes(torch.tensor([[0.8, 0.3]]).expand(4, 2), axis=0)
    q = quant(w)
    upstream = torch.randn(q.shape, generator=g)
    q.backward(upstream)
    # b_j(w): the signs of the nearest of the four candidates ±0.8 ± 0.3
    cand = torch.tensor([[s1 * 0.8 + s2 * 0.3 for s1 in (-1, 1) for s2 in (-1, 1)]])
    signs = torch.tensor([[s1, s2] for s1 in (-1.0, 1.0) for s2 in (-1.0, 1.0)])
    nearest = (w.unsqueeze(-1) - cand).abs().argmin(-1)
    torch.testing.assert_close(q.detach(), cand[0][nearest])
    torch.testing.assert_close(quant.alphas.grad, (upstream.unsqueeze(-1) * signs[nearest]).sum(1))


def test_prepare_codebook_qat_replaces_only_the_low_bit_weights(digits) -> None:  # type: ignore[no-untyped-def]
    from zeropoint.nn.learned_codebook import LearnedCodebook, prepare_codebook_qat
    from zeropoint.nn.modules import QuantMixin

    model, data = digits
    qat = prepare_codebook_qat(model, zp.w2a2_qat("lsq"), bits=2, example_inputs=data.x_train[:64])
    quants = [m.weight_quant for m in qat.modules() if isinstance(m, QuantMixin)]
    learned = [q for q in quants if isinstance(q, LearnedCodebook)]
    assert learned and len(learned) == len(quants) - 2  # first and last layers stay 8-bit LSQ
    params = {id(p) for p in qat.parameters()}
    assert all(id(q.levels) in params for q in learned)  # the optimizer will see the levels
    loss = F.cross_entropy(qat(data.x_train[:64]), data.y_train[:64])
    loss.backward()
    assert all(q.levels.grad is not None and q.levels.grad.abs().sum() > 0 for q in learned)
