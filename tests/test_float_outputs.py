"""``QuantConfig(quantize_outputs=False)``: the values a model returns stay float. The layer that
produces them keeps its integer weights and quantized input and scales its int32 accumulator
back to real units, y = S_x·S_w·Σ(q_x − Z_x)·q_w + S_x·S_w·q_b (clipped in real units where a
ReLU follows) — in the simulation, the integer program and the ONNX export alike."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx.reference import ReferenceEvaluator
from torch import nn

import zeropoint as zp
from zeropoint.bias import bias_qparams
from zeropoint.functional import quantize_int
from zeropoint.nn.modules import QuantMixin
from zeropoint.nn.quantizers import FakeQuant


class Head(nn.Module):
    """conv → ReLU → flatten → linear: the logits are the model's output."""

    def __init__(self, final_relu: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 6 * 6, 5)
        self.final_relu = final_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(torch.relu(self.conv(x)).flatten(1))
        return torch.relu(y) if self.final_relu else y


def _config(**changes: object) -> zp.QuantConfig:
    # per-channel 8-bit weights, pair-bounded: exact in ONNX Runtime on every x86 CPU
    options: dict[str, object] = {"quantize_outputs": False, "pair_bounded_weights": True}
    return zp.int8_static(reduce_range=False).with_(**{**options, **changes})


def _quantized(final_relu: bool = False) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = Head(final_relu).eval()
    x = torch.randn(64, 3, 6, 6)
    return model, zp.quantize_static(model, [x], _config(), progress=False), x


def _logits_float64(q: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The last layer from its codes in float64: S_x·S_w·(Σ(q_x − Z_x)·q_w + q_b)."""
    fc = q.get_submodule("fc")
    assert isinstance(fc, QuantMixin)
    captured: dict[str, torch.Tensor] = {}
    handle = fc.register_forward_pre_hook(lambda m, a: captured.setdefault("x", a[0]))
    with torch.no_grad():
        q(x)
    handle.remove()
    x_qp = fc.input_qparams()
    w_qp = fc.weight_qparams()
    assert x_qp is not None
    q_x = quantize_int(captured["x"], x_qp).double() - float(x_qp.zero_point)
    q_w = quantize_int(fc.weight.detach(), w_qp).double()
    q_b = quantize_int(fc.bias.detach(), bias_qparams(x_qp, w_qp)).double()
    s = float(x_qp.scale) * w_qp.scale.double().reshape(-1)
    return (q_x @ q_w.t() + q_b) * s


def test_the_output_quantizer_is_gone_and_the_logits_are_the_accumulator_in_real_units() -> None:
    _, q, x = _quantized()
    act_keys = [n for n, m in q.named_modules() if isinstance(m, FakeQuant) and "act_quant" in n]
    assert not any(k.endswith(".fc") for k in act_keys), act_keys
    with torch.no_grad():
        y = q(x)
    reference = _logits_float64(q, x)
    torch.testing.assert_close(y.double(), reference, rtol=2e-6, atol=2e-6)
    # and the quantized model is close to the float one, not on an 8-bit grid of the logits
    assert len(torch.unique(y)) > 200


def test_a_model_with_quantized_outputs_puts_its_logits_on_a_grid() -> None:
    torch.manual_seed(0)
    model = Head().eval()
    x = torch.randn(64, 3, 6, 6)
    q = zp.quantize_static(model, [x], _config(quantize_outputs=True), progress=False)
    with torch.no_grad():
        y = q(x)
    assert len(torch.unique(y)) <= 256


@pytest.mark.parametrize("final_relu", [False, True])
def test_program_onnx_runtime_and_the_reference_evaluator_agree_with_the_simulation(
    tmp_path: object, final_relu: bool
) -> None:
    _, q, x = _quantized(final_relu)
    with torch.no_grad():
        y_sim = q(x).numpy()
    program = zp.to_integer(q, x[:2])
    assert program.fallbacks == []  # the last layer runs its integer kernel
    y_prog = program(x).numpy()
    path = zp.export_onnx(q, f"{tmp_path}/head.onnx", x[:2])
    proto = onnx.load(str(path))
    ops = [n.op_type for n in proto.graph.node]
    assert ops[-2] in ("Gemm", "Relu", "Clip", "Max")  # no QuantizeLinear after the last layer
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    y_ort = session.run(None, {name: x.numpy()})[0]
    y_ref = ReferenceEvaluator(proto).run(None, {name: x.numpy()})[0]
    for other in (y_prog, y_ort, y_ref):
        np.testing.assert_allclose(other, y_sim, rtol=1e-6, atol=1e-6)
    if final_relu:
        assert (y_sim >= 0).all() and (y_sim == 0).any()


def test_a_value_the_model_also_uses_inside_stays_quantized() -> None:
    class TwoOutputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = self.a(x)
            return h, self.b(h)

    torch.manual_seed(0)
    model = TwoOutputs().eval()
    x = torch.randn(32, 4)
    q = zp.quantize_static(model, [x], _config(), progress=False)
    with torch.no_grad():
        h, y = q(x)
    assert len(torch.unique(h)) <= 256  # h feeds b: it is quantized
    assert len(torch.unique(y)) > 64  # y only leaves the model: float
    program = zp.to_integer(q, x[:2])
    torch.testing.assert_close(program(x)[1], y, rtol=1e-6, atol=1e-6)


def test_quantize_outputs_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="quantize_outputs must be a bool"):
        zp.QuantConfig(quantize_outputs="no")  # type: ignore[arg-type]


def test_a_checkpoint_keeps_the_float_outputs(tmp_path: object) -> None:
    _, q, x = _quantized()
    zp.save(q, f"{tmp_path}/ckpt")
    loaded = zp.load(f"{tmp_path}/ckpt", Head().eval())
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), q(x), rtol=0, atol=0)


def test_compare_executions_reports_the_float_outputs_difference() -> None:
    _, q, x = _quantized(final_relu=True)
    report = zp.compare_executions(q, x)
    assert set(report.float_outputs) == {"sim_engine", "engine_ort", "sim_ort"}
    assert all(0.0 <= d < 1e-6 for d in report.float_outputs.values())  # float32 rounding
    assert all(p == 1.0 for p in report.predictions.values())
    assert "float outputs, largest difference" in report.summary()


def test_a_residual_output_keeps_its_final_clamp_in_every_execution(tmp_path: object) -> None:
    # the U-Net shape of the zoo: clamp(x + head(x), 0, 1). The add's quantizer would follow the
    # clamp, so the clamp fuses into it; with no quantizer the add runs in float — with the clamp
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.clamp(x + self.head(x), 0.0, 1.0)

    torch.manual_seed(0)
    model = Residual().eval()
    x = torch.rand(32, 1, 8, 8) * 1.4 - 0.2
    q = zp.quantize_static(model, [x], _config(), progress=False)
    with torch.no_grad():
        y_sim = q(x)
    assert float(y_sim.min()) == 0.0 and float(y_sim.max()) == 1.0  # the clamp is active
    program = zp.to_integer(q, x[:2])
    torch.testing.assert_close(program(x), y_sim, rtol=0, atol=1e-6)
    path = zp.export_onnx(q, f"{tmp_path}/residual.onnx", x[:2])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y_ort = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(y_ort, y_sim.numpy(), rtol=0, atol=1e-6)
