"""Bad input to deployment: to_integer, export_onnx, compare_executions, saved integer programs and
the deployment settings of configs. Each case asserts the exception type and that the message
names the offending value, layer or construct."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import zeropoint as zp
from zeropoint.consistency import compare_executions
from zeropoint.engine.program import IntegerProgram


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2))


X = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(1))


def _converted() -> nn.Module:
    return zp.quantize_static(_net().eval(), [X], progress=False)


def _prepared() -> nn.Module:
    return zp.prepare(_net().eval())


class _Flag(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: Tensor, scale: float = 2.0) -> Tensor:
        return self.fc(x) * scale


def _broken_program(tmp: Path) -> Path:
    d = _converted()
    directory = zp.to_integer(d, X).save(tmp / "prog")
    (directory / "program.json").write_text('{"format": "zeropoint-integer-program", "version": 1}')
    return directory


CASES: list[tuple[str, Callable[[Path], object], type[Exception], str]] = [
    ("to_integer float model", lambda t: zp.to_integer(_net(), X), ValueError,
     r"Sequential was not prepared by zeropoint"),
    ("to_integer example of the wrong shape", lambda t: zp.to_integer(_converted(), torch.randn(2, 5, 4, 4)),
     ValueError, r"example input does not fit the model .*\(2, 5, 4, 4\)"),
    ("to_integer not calibrated", lambda t: zp.to_integer(_prepared(), X), ValueError,
     r"activation quantizer act_quant\.\w+ has no frozen \(S, Z\)"),
    ("to_integer unknown rounding", lambda t: zp.to_integer(_converted(), X, rounding="up"),
     ValueError, r"rounding='up': expected one of"),
    ("to_integer dynamic model", lambda t: zp.to_integer(zp.quantize_dynamic(nn.Sequential(nn.Linear(4, 4))), torch.randn(2, 4)),
     ValueError, r"quantized at run time, per call"),
    ("to_integer 16-bit activations", lambda t: zp.to_integer(
        zp.quantize_static(_net().eval(), [X], zp.int8_static().with_(activation=zp.Scheme(bits=16, signed=False)), progress=False), X),
     ValueError, r"integer engine runs ≤ 8-bit activations, got uint16"),
    ("to_integer group-wise weights", lambda t: zp.to_integer(
        zp.quantize_static(nn.Sequential(nn.Linear(8, 4)).eval(), [torch.randn(4, 8)],
                           zp.int8_static().with_(weight=zp.Scheme(bits=4, symmetric=True, group_size=4)), progress=False),
        torch.randn(2, 8)), ValueError, r"layer 0: group-wise weights have no integer kernel"),
    ("export to a directory", lambda t: zp.export_onnx(_converted(), t, X), (IsADirectoryError, PermissionError, OSError),
     r""),
    ("export not calibrated", lambda t: zp.export_onnx(_prepared(), t / "m.onnx", X), ValueError,
     r"has no frozen \(S, Z\)"),
    ("program run with two inputs", lambda t: zp.to_integer(_converted(), X)(X, X), ValueError,
     r"takes 1 input\(s\) \(\w+\), got 2"),
    ("program load missing", lambda t: IntegerProgram.load(t / "nothing"), FileNotFoundError,
     r"is not a saved integer program"),
    ("program load old version", lambda t: IntegerProgram.load(_broken_program(t)), ValueError,
     r"not a zeropoint integer program of version 2 .*version 1"),
    ("compare without data", lambda t: compare_executions(_converted(), []), ValueError,
     r"needs at least one batch"),
    ("compare with strings", lambda t: compare_executions(_converted(), ["x"]), TypeError,
     r"expects tensors or \(x, \.\.\.\) batches, got <class 'str'>"),
    ("reduce_range bad value", lambda t: zp.int8_static(reduce_range="yes"), ValueError,
     r"reduce_range='yes': expected True, False or 'auto'"),
    ("requantization unknown", lambda t: zp.QuantConfig(requantization="nearest"), ValueError,
     r"requantization='nearest' is unknown"),
    ("concrete arg not a parameter", lambda t: zp.prepare(_Flag().eval(), concrete_args={"shift": 1}),
     ValueError, r"concrete_args names 'shift', but _Flag\.forward has no such parameter"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "call", "error", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_deployment_input_is_named(
    name: str, call: Callable[[Path], object], error: type[Exception], message: str, tmp_path: Path
) -> None:
    with pytest.raises(error, match=message):
        call(tmp_path)


def test_python_arguments_become_constants_by_default() -> None:
    """forward(x, scale=2.0): the default is taken as a constant; the program computes what the
    simulation computes, code for code, and that is fc(x)·2 within the grids' rounding."""
    model = _Flag().eval()
    calib = torch.randn(64, 4, generator=torch.Generator().manual_seed(2))
    q = zp.quantize_static(model, [calib], progress=False)
    state = zp.workflows.graph.state_of(q)
    assert state.capture == "fx (constants: scale=2.0)"
    x = calib[:5]
    program = zp.to_integer(q, x)
    with torch.no_grad():
        sim, ref = q(x), model(x)
    assert torch.equal(program(x), sim)
    # input, fc output and product are each rounded once: |error| ≤ ½ step of each, the first
    # two scaled through the layer (|W|₁ ≤ 4·max|w|) and the product (×2)
    steps = [float(q.act_quant[k].scale) for k in ("x", "fc", "mul")]
    w = float(model.fc.weight.abs().sum(1).max())
    bound = 0.5 * (steps[0] * w * 2 + steps[1] * 2 + steps[2]) + 1e-6
    assert float((sim - ref).abs().max()) <= bound


def test_keyword_arguments_of_the_calibration_batches_become_the_constants() -> None:
    """Calibrating with {"x": ..., "scale": 3.0} captures the scale=3.0 branch; the graph then
    asserts that value (a call with another value fails loudly instead of running the wrong
    branch)."""
    model = _Flag().eval()
    calib = torch.randn(16, 4, generator=torch.Generator().manual_seed(3))
    q = zp.quantize_static(model, [{"x": calib, "scale": 3.0}], progress=False)
    assert zp.workflows.graph.state_of(q).capture == "fx (constants: scale=3.0)"
    with torch.no_grad():
        assert float((q(calib, scale=3.0) - model(calib, scale=3.0)).abs().max()) < 0.1
    with pytest.raises(AssertionError, match=r"scale has been specialized to have value 3\.0"):
        q(calib)  # the default, 2.0, is not the captured branch
