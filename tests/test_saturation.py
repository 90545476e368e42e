"""Pair-bounded 8-bit weights (zeropoint.nn.saturation): ONNX Runtime's u8·s8 kernels on x86
without VNNI add consecutive products of the reduction in a saturating int16. The order of that
reduction is measured on ONNX Runtime itself; int8_static() then gives exports that ONNX Runtime
computes exactly on every x86 CPU, with 8-bit (not 7-bit) weights."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import zeropoint as zp
from zeropoint.consistency import compare_executions
from zeropoint.functional import quantize_int
from zeropoint.nn.dynamic import INT8_CHANNEL, PAIR_BOUND, fbgemm_saturates
from zeropoint.nn.modules import QuantMixin
from zeropoint.nn.saturation import (
    from_reduction_rows,
    needs_pair_bound,
    pair_bounded_weight,
    reduction_rows,
)

SATURATES = fbgemm_saturates()
only_without_vnni = pytest.mark.skipif(
    not SATURATES, reason="this CPU's int8 kernels do not saturate (VNNI): nothing to measure"
)


def _ort_conv(q_w: np.ndarray, groups: int = 1) -> np.ndarray:
    """ONNX Runtime's QLinearConv (a QDQ Conv it fuses) on an all-255 uint8 input (S_x = 1,
    Z_x = 0) with integer weights ``q_w`` (S_w = 1): the accumulator at the first output
    position, through an output grid of step 1000 (exact 2·255·127 = 64770 → 65)."""
    c_out, c_in = q_w.shape[0], q_w.shape[1] * groups
    hw = q_w.shape[2]
    inits = [
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(0, np.uint8), "zero"),
        numpy_helper.from_array(q_w.astype(np.int8), "w_q"),
        numpy_helper.from_array(np.ones(c_out, np.float32), "w_s"),
        numpy_helper.from_array(np.zeros(c_out, np.int8), "w_z"),
        numpy_helper.from_array(np.array(1000.0, np.float32), "y_s"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "one", "zero"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "one", "zero"], ["x_d"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w_d"], axis=0),
        helper.make_node("Conv", ["x_d", "w_d"], ["y"], group=groups),
        helper.make_node("QuantizeLinear", ["y", "y_s", "zero"], ["y_q"]),
        helper.make_node("DequantizeLinear", ["y_q", "y_s", "zero"], ["out"]),
    ]
    x = np.full((1, c_in, hw, hw), 255.0, np.float32)
    graph = helper.make_graph(
        nodes, "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0].reshape(c_out, -1)[:, 0]


def _pair_weights(c_out: int, c_in: int, k: int, pairs: list[list[tuple[int, ...]]]) -> np.ndarray:
    """Weights 0 except 127 at the two (c, i, j) indices each output channel names."""
    w = np.zeros((c_out, c_in, k, k))
    for o, where in enumerate(pairs):
        for index in where:
            w[(o, *index)] = 127
    return w


@only_without_vnni
def test_onnxruntime_conv_pairs_are_consecutive_channels_at_one_kernel_position() -> None:
    # exact: 255·(127 + 127) = 64770 → 65 (·1000); saturated: 32767 → 33
    w = _pair_weights(4, 4, 3, [[(0, 0, 0), (0, 0, 1)],   # neighbours in (c, i, j): exact
                                [(0, 0, 0), (1, 0, 0)],   # channels 0, 1 at one position: pair
                                [(1, 0, 0), (2, 0, 0)],   # channels 1, 2: two pairs, exact
                                [(2, 1, 1), (3, 1, 1)]])  # fmt: skip
    assert _ort_conv(w).tolist() == [65000, 33000, 65000, 33000]
    # 3 channels: index (i·3 + j)·3 + c, so channel 2 at (0, 0) pairs with channel 0 at (0, 1)
    w = _pair_weights(2, 3, 3, [[(2, 0, 0), (0, 0, 1)], [(1, 0, 0), (2, 0, 0)]])
    assert _ort_conv(w).tolist() == [33000, 65000]
    # the same pairs after reduction_rows are k = 2j, 2j + 1
    rows = reduction_rows(torch.from_numpy(w))
    assert rows[0].nonzero().flatten().tolist() == [2, 3]
    assert rows[1].nonzero().flatten().tolist() == [1, 2]


@only_without_vnni
def test_onnxruntime_depthwise_conv_accumulates_exactly() -> None:
    w = _pair_weights(4, 1, 3, [[(0, 0, 0), (0, 0, 1)], [(0, 0, 0), (0, 1, 0)], [], []])
    assert _ort_conv(w, groups=4).tolist() == [65000, 65000, 0, 0]


def test_reduction_rows_order_and_inverse() -> None:
    w = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)  # (O, C, i, j)
    rows = reduction_rows(w)
    c, i, j = 2, 1, 0
    assert rows[1, (i * 2 + j) * 3 + c] == w[1, c, i, j]
    assert torch.equal(from_reduction_rows(rows, w.shape), w)
    w1 = torch.randn(4, 5, 3)  # Conv1d
    assert reduction_rows(w1)[2, 1 * 5 + 4] == w1[2, 4, 1]
    assert torch.equal(from_reduction_rows(reduction_rows(w1), w1.shape), w1)
    lin = torch.randn(3, 7)
    assert reduction_rows(lin) is lin


def test_which_layers_are_bounded() -> None:
    assert needs_pair_bound(nn.Linear(4, 4), INT8_CHANNEL)
    assert needs_pair_bound(nn.Conv2d(4, 8, 3), INT8_CHANNEL)
    assert needs_pair_bound(nn.Conv2d(4, 8, 3, groups=2), INT8_CHANNEL)
    assert not needs_pair_bound(nn.Conv2d(8, 8, 3, groups=8), INT8_CHANNEL)  # depthwise
    assert needs_pair_bound(nn.Conv2d(8, 16, 3, groups=8), INT8_CHANNEL)  # multiplier 2: GEMM
    assert not needs_pair_bound(nn.ConvTranspose2d(4, 4, 2), INT8_CHANNEL)
    assert not needs_pair_bound(nn.Linear(4, 4), zp.Scheme(bits=7, symmetric=True, axis=0))
    assert not needs_pair_bound(nn.Linear(4, 4), zp.Scheme(bits=8, symmetric=True))  # per tensor


def test_pair_bounded_weight_is_on_its_grid_and_beats_7_bit() -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(16, 6, 3, 3, generator=gen) * (torch.rand(16, 6, 1, 1, generator=gen) + 0.2)
    snapped, qp = pair_bounded_weight(w, INT8_CHANNEL)
    codes = quantize_int(snapped, qp)
    # Ŵ = S·q: quantizing it again gives q back (within float round-off of S·q / S)
    assert float((snapped / qp.scale.view(-1, 1, 1, 1) - codes).abs().max()) < 1e-4
    pair_sums = reduction_rows(codes.abs()).reshape(16, -1, 2).sum(-1)
    assert float(pair_sums.max()) <= PAIR_BOUND
    assert float(codes.abs().max()) <= 127
    w64 = w.double()
    err = float(((snapped.double() - w64) ** 2).sum())
    s7 = w64.abs().amax((1, 2, 3), keepdim=True) / 63  # 7-bit weights [−63, 63] per channel
    err7 = float(((torch.round(w64 / s7) * s7 - w64) ** 2).sum())
    s8 = w64.abs().amax((1, 2, 3), keepdim=True) / 127
    err8 = float(((torch.round(w64 / s8) * s8 - w64) ** 2).sum())
    assert err8 <= err < 0.5 * err7


class _Saturating(nn.Module):
    """Every kind of layer the bound concerns, with inputs at the top of their uint8 grid and
    large weights of one sign side by side: unbounded 8-bit codes saturate the int16 pairs."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8 * 6 * 6, 10)
        with torch.no_grad():
            for layer in (self.stem, self.dw, self.pw, self.fc):
                w = torch.randn(layer.weight.shape, generator=gen) * 0.3 + 0.4
                layer.weight.copy_(w / w[0].numel() ** 0.5)
                layer.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.dw(x))
        x = torch.relu(self.pw(x))
        return self.fc(x.flatten(1))


def _data() -> tuple[list[torch.Tensor], torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    calib = [torch.rand(8, 3, 6, 6, generator=gen) for _ in range(2)]
    return calib, torch.rand(16, 3, 6, 6, generator=gen)


def test_int8_static_auto_is_exact_in_onnxruntime_with_8_bit_weights() -> None:
    calib, test = _data()
    model_q = zp.quantize_static(_Saturating().eval(), calib, zp.int8_static(), progress=False)
    assert zp.int8_static().pair_bounded_weights == SATURATES
    layers = {n: m for n, m in model_q.named_modules() if isinstance(m, QuantMixin)}
    if SATURATES:
        for name in ("stem", "pw", "fc"):
            m = layers[name]
            scale = m.weight_qparams().scale.view(-1, *[1] * (m.weight.dim() - 1))
            codes = reduction_rows((m.quantized_weight().detach() / scale).round().abs())
            k = codes.shape[1] + codes.shape[1] % 2
            pairs = torch.nn.functional.pad(codes, (0, k - codes.shape[1])).reshape(-1, k // 2, 2)
            assert float(pairs.sum(-1).max()) <= PAIR_BOUND, name
    report = compare_executions(model_q, [test], per_layer=False)
    assert report.outputs["engine_ort"].identical == report.outputs["engine_ort"].elements
    assert report.outputs["sim_engine"].identical == report.outputs["sim_engine"].elements


@only_without_vnni
def test_unbounded_8_bit_weights_are_what_saturates() -> None:
    calib, test = _data()
    config = zp.int8_static(reduce_range=False)
    model_q = zp.quantize_static(_Saturating().eval(), calib, config, progress=False)
    report = compare_executions(model_q, [test], per_layer=False)
    assert report.outputs["sim_engine"].identical == report.outputs["sim_engine"].elements
    assert report.outputs["engine_ort"].identical < 0.5 * report.outputs["engine_ort"].elements


def test_pair_bounded_weights_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="pair_bounded_weights must be a bool, got 'yes'"):
        zp.QuantConfig(pair_bounded_weights="yes")  # type: ignore[arg-type]
