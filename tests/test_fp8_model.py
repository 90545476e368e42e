"""Scaled fp8 (e4m3fn, e5m2) and fp4 (e2m1) weights and activations at model level: the tensor
quantizer against torch's float8 casts and a brute-force fp4 table, the model workflows
(static PTQ, QAT), the ONNX export run by ONNX Runtime, checkpoints, and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import zeropoint as zp
from demo.zoo.digits import DigitsCNN, DigitsData, accuracy, train
from zeropoint.formats import FP4_E2M1, FP8_E4M3, FP8_E5M2
from zeropoint.nn import LSQ, FakeQuant
from zeropoint.ops.common import engine_dtype
from zeropoint.qparams import QParams, Scheme

FP8 = {"e4m3fn": (FP8_E4M3, torch.float8_e4m3fn), "e5m2": (FP8_E5M2, torch.float8_e5m2)}
FORMATS = {"e4m3fn": FP8_E4M3, "e5m2": FP8_E5M2, "e2m1": FP4_E2M1}
ONNX_TYPES = {"e4m3fn": onnx.TensorProto.FLOAT8E4M3FN, "e5m2": onnx.TensorProto.FLOAT8E5M2}


def _scheme(fmt: str, axis: int | None = None) -> Scheme:
    return Scheme(bits=FORMATS[fmt].bits, float_format=fmt, axis=axis)


def _data(seed: int, *shape: int) -> torch.Tensor:
    # a heavy tail, so that the per-channel amax differ and small values reach subnormals
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * torch.rand(*shape, generator=g) ** 4 * 5


# ----------------------------------------------------------------------------- the quantizer


@pytest.mark.parametrize("fmt", sorted(FP8))
@pytest.mark.parametrize("axis", [None, 0])
def test_scaled_fp8_codes_are_torchs_float8_casts(fmt: str, axis: int | None) -> None:
    x = _data(0, 48, 200)
    x[:, 100:] *= 2  # the half not calibrated on exceeds the range here and there
    qp = zp.calibrate(x[:, :100], _scheme(fmt, axis))
    fmax = FORMATS[fmt].max
    scale = qp.scale if axis is None else qp.scale[:, None]
    amax = x[:, :100].abs().amax() if axis is None else x[:, :100].abs().amax(1)
    assert torch.equal(qp.scale, (amax.double() / fmax).float())  # S = amax / max, Z = 0
    assert not bool(qp.zero_point.any())
    # torch's cast of the float32 quotient x / S, saturated (torch's e5m2 cast overflows to inf;
    # the scaled quantizer saturates like ONNX QuantizeLinear's default saturate=1)
    dtype = FP8[fmt][1]
    reference = (x / scale).clamp(-fmax, fmax).to(dtype).view(torch.uint8)
    codes = zp.quantize_int(x, qp)
    assert codes.dtype == torch.uint8 and torch.equal(codes, reference)
    assert bool((x.abs() > fmax * scale).any())  # saturation was exercised
    values = zp.dequantize(zp.quantize(x, qp))
    assert torch.equal(values, reference.view(dtype).float() * scale)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_fake_quantize_is_dequantize_of_quantize_bit_for_bit(fmt: str) -> None:
    for x, axis in ((_data(1, 32, 64), 0), (_data(2, 3000), None), (_data(3, (1 << 18) + 5), None)):
        qp = zp.calibrate(x, _scheme(fmt, axis))
        for data in (x, x.double()):
            fq = zp.fake_quantize(data, qp)
            dq = zp.dequantize(zp.quantize(data, qp))
            assert fq.dtype == data.dtype and torch.equal(fq.view(-1), dq.view(-1))
            assert not bool(torch.signbit(fq[fq == 0]).any())  # −0.0 becomes +0.0, as q − Z


def test_fp4_codes_are_the_nearest_level_ties_to_even() -> None:
    # brute force over the 16 codes of e2m1: nearest value, ties to the even code
    codes = torch.arange(16)
    levels = FP4_E2M1.decode(codes).double()
    x = torch.cat([torch.linspace(-8, 8, 1601), torch.tensor([0.25, 0.75, 1.25, 2.5, 5.0, -5.0])])
    qp = QParams(torch.tensor(1.0), torch.tensor(0), _scheme("e2m1"))
    got = zp.quantize_int(x, qp).long()
    dist = (x.double()[:, None] - levels[None, :]).abs()
    best = dist.min(1, keepdim=True).values
    candidates = dist == best
    # among the nearest, prefer the even mantissa; ±0 are the same value: take +0 (code 0)
    even = candidates & (codes[None, :] % 2 == 0) & (codes[None, :] != 8)
    pick = torch.where(even.any(1), even.float().argmax(1), candidates.float().argmax(1))
    assert torch.equal(levels[got], levels[pick])  # same values (±0 aside)
    assert torch.equal(got[:2], torch.tensor([15, 15]))  # −8, −7.99: saturated to −6
    assert levels[got[-6:]].tolist() == [0.0, 1.0, 1.0, 2.0, 4.0, -4.0]
    qt = zp.quantize(x, qp)
    assert qt.packed and qt.data.numel() == (x.numel() + 1) // 2  # two fp4 codes per byte


def test_float_gradients_pass_inside_and_stop_at_saturation() -> None:
    qp = QParams(torch.tensor(0.5), torch.tensor(0), _scheme("e4m3fn"))
    x = torch.tensor([0.1, -3.0, 200.0, 224.0, 300.0, -500.0], requires_grad=True)
    zp.fake_quantize(x, qp).sum().backward()
    # 448·0.5 = 224 is the largest value: 300 and −500 are clipped (their round exceeds max)
    assert x.grad is not None and x.grad.tolist() == [1, 1, 1, 1, 0, 0]


def test_mse_observer_searches_float_grids_and_integer_only_methods_refuse() -> None:
    x = torch.cat([_data(4, 4000), torch.tensor([60.0])])  # one outlier
    s = _scheme("e2m1")
    mm, mse = zp.calibrate(x, s), zp.calibrate(x, s, method="mse")
    err = [float(((zp.fake_quantize(x, q) - x) ** 2).sum()) for q in (mm, mse)]
    assert float(mse.scale) < float(mm.scale) and err[1] < err[0]
    for method in ("entropy", "aciq"):
        with pytest.raises(ValueError, match=f"{method}.*float format"):
            zp.calibrate(x, s, method=method)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Scheme(float_format="e4m3"), r"float_format='e4m3' is unknown.*e4m3fn"),
        (lambda: Scheme(float_format="e2m1"), r"4-bit codes: pass bits=4, not 8"),
        (lambda: Scheme(float_format="e4m3fn", signed=False), r"signed and has no narrow"),
        (lambda: Scheme(float_format="e5m2", narrow=True), r"no narrow range"),
        (lambda: Scheme(float_format="e4m3fn", rounding="floor"), r"ties to even.*'floor'"),
        (
            lambda: QParams(torch.tensor(1.0), torch.tensor(3), Scheme(float_format="e4m3fn")),
            r"no zero point.*Z must be 0, got 3",
        ),
        (lambda: LSQ(Scheme(float_format="e4m3fn")), r"LSQ learns.*float format.*learnable=None"),
        (lambda: zp.float_static("e3m4"), r"float_format='e3m4' is unknown"),
        (
            lambda: zp.quantize_dynamic(nn.Linear(4, 4), zp.float_static().with_(activation=None)),
            r"float-format schemes.*quantize_weights",
        ),
    ],
)
def test_bad_float_schemes_are_refused(make: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()  # type: ignore[operator]


def test_a_float_scheme_is_symmetric_and_stores_unsigned_bit_patterns() -> None:
    s = Scheme(float_format="e5m2", axis=0)
    assert s.symmetric and s.format.signed is False and s.qrange == (0, 255)
    assert s.level_range == (-57344, 57344) and str(s) == "fp8 e5m2 per-channel(axis=0)"
    with pytest.raises(ValueError, match="float format e5m2: the integer engine"):
        engine_dtype(QParams(torch.tensor(1.0), torch.tensor(0), s.with_(axis=None)), "edge x")


# ----------------------------------------------------------------------------- export


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _step(values: np.ndarray, scale: float, fmt: str) -> np.ndarray:
    """One step of the output grid at each value: S·ulp_fmt(value / S)."""
    return scale * FORMATS[fmt].ulp(torch.from_numpy(values / scale).double()).numpy()


class _Net(nn.Module):
    """Linear (with a bias: e5m2's tiny S_x·S_w would overflow an int32 bias) → ReLU6 (a Clip
    before the float8 QuantizeLinear) → Linear → |x| (a table on integer grids, an operation
    in float on float grids; exact in both runtimes, unlike ONNX Runtime's sigmoid, whose
    absolute error near 0 is many fp8 steps there)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(24, 48), nn.ReLU6(), nn.Linear(48, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.abs(self.fc2(self.act(self.fc1(x))))


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_onnx_runtime_runs_a_float_layer_within_one_step(fmt: str, tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(5)
    model = _Net().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    x = torch.randn(512, 24, generator=g)
    q = zp.quantize_static(model, [x[:256]], zp.float_static(fmt), progress=False)
    path = zp.export_onnx(q, tmp_path / "m.onnx", x[:2])
    out = _session(path).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        sim = q(x).numpy()
    # ONNX Runtime and torch sum the products in other orders (float32 rounding): an fp8 code
    # can differ only where its accumulator lies within that rounding of a rounding boundary —
    # by one step of the grid, rarely
    last = q.act_quant["abs_1"]
    diff = np.abs(out - sim)
    assert (diff <= _step(sim, float(last.scale), fmt) * (1 + 1e-6)).all()
    assert (diff > 0).mean() <= 0.01
    graph = onnx.load(str(path)).graph
    zero_types = {i.name: i.data_type for i in graph.initializer}
    q_types = {zero_types[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear"}
    if fmt in ONNX_TYPES:  # ONNX Runtime runs float8 QuantizeLinear / DequantizeLinear
        assert q_types == {ONNX_TYPES[fmt]}
        assert ONNX_TYPES[fmt] in {i.data_type for i in graph.initializer if "weight" in i.name}
        assert "Relu" not in {n.op_type for n in graph.node}  # written as Max / Min
    else:  # float4: no ONNX Runtime kernel; the rounding is written in standard operators
        assert q_types == set() and "Round" in {n.op_type for n in graph.node}


def test_integer_engine_refuses_float_grids_naming_the_layer(
    digits: tuple[DigitsCNN, DigitsData],
) -> None:
    model, data = digits
    q = zp.quantize_static(model, data.calibration_batches(), zp.float_static(), progress=False)
    with pytest.raises(ValueError, match=r"act_quant.x uses the float format e4m3fn.*export"):
        zp.to_integer(q, data.x_test[:2])
    weights_only = zp.QuantConfig(weight=Scheme(float_format="e5m2", axis=0))
    q = zp.quantize_static(model, data.calibration_batches(), weights_only, progress=False)
    with pytest.raises(ValueError, match=r"layer stem.0 \(weights\) uses the float format e5m2"):
        zp.to_integer(q, data.x_test[:2])


@pytest.mark.slow
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_digits_cnn_float_static_simulation_export_and_checkpoint(
    fmt: str, digits: tuple[DigitsCNN, DigitsData], tmp_path: Path
) -> None:
    model, data = digits
    fp32 = accuracy(model, data.x_test, data.y_test)
    q = zp.quantize_static(model, data.calibration_batches(), zp.float_static(fmt), progress=False)
    acc = accuracy(q, data.x_test, data.y_test)
    print(f"{fmt}: fp32 {fp32:.2f}, simulation {acc:.2f}")
    assert acc >= fp32 - (8.0 if fmt == "e2m1" else 1.5)
    # every conv / linear runs the float simulation (no integer kernel) with a float bias
    assert q.head.quantized_bias() is q.head.bias
    path = zp.export_onnx(q, tmp_path / "digits.onnx", data.x_test[:2])
    out = _session(path).run(None, {"x": data.x_test.numpy()})[0]
    with torch.no_grad():
        sim = q(data.x_test).numpy()
    # summation-order flips (see above) are rare and propagate: nearly every logit identical
    assert (out == sim).mean() >= 0.99
    assert (out.argmax(1) == sim.argmax(1)).mean() >= 0.99
    saved = zp.save(q, tmp_path / "ckpt")
    doc = json.loads((saved / "encodings.json").read_text())
    assert doc["config"]["weight"]["float_format"] == fmt
    loaded = zp.load(saved, DigitsCNN())
    with torch.no_grad():
        assert torch.equal(loaded(data.x_test), q(data.x_test))


@pytest.mark.slow
def test_fp8_qat_trains_with_amax_scales_and_converts(
    digits: tuple[DigitsCNN, DigitsData], tmp_path: Path
) -> None:
    model, data = digits
    config = zp.float_static("e2m1").with_(activation_observer="moving_average")
    ptq = zp.quantize_static(model, data.calibration_batches(), config, progress=False)
    qat = zp.prepare_qat(model, config, example_inputs=data.x_train[:256])
    assert isinstance(qat.head.weight_quant, FakeQuant) and qat.head.weight_quant.mode == "track"
    train(qat, data, epochs=3, lr=1e-3, seed=0)
    q = zp.convert(qat)
    before, after = accuracy(ptq, data.x_test, data.y_test), accuracy(q, data.x_test, data.y_test)
    print(f"fp4 e2m1 W+A: PTQ {before:.2f}, QAT (3 epochs) {after:.2f}")
    assert after > before
    with pytest.raises(ValueError, match="LSQ learns"):
        zp.prepare_qat(model, config.with_(learnable="lsq"))
    path = zp.export_onnx(q, tmp_path / "qat.onnx", data.x_test[:2])
    out = _session(path).run(None, {"x": data.x_test.numpy()})[0]
    with torch.no_grad():
        assert (out == q(data.x_test).numpy()).mean() >= 0.99
