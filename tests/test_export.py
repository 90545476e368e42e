"""ONNX QDQ export run by ONNX Runtime, and safetensors + JSON checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import zeropoint as zp
from demo.zoo.digits import DigitsCNN, DigitsData, accuracy


@pytest.fixture(scope="module")
def quantized(digits: tuple[DigitsCNN, DigitsData]) -> nn.Module:
    model, data = digits
    return zp.quantize_static(model, data.calibration_batches(), progress=False)


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def test_onnx_runtime_agrees_with_the_simulation(
    quantized: nn.Module, digits: tuple[DigitsCNN, DigitsData], tmp_path: Path
) -> None:
    _, data = digits
    path = zp.export_onnx(quantized, tmp_path / "digits.onnx", data.x_test[:4])
    out = _session(path).run(None, {"x": data.x_test.numpy()})[0]
    with torch.no_grad():
        sim = quantized(data.x_test).numpy()
    step = quantized.act_quant["head"].scale.item()
    lsb = np.abs(out - sim) / step
    # ONNX Runtime requantizes in float (round half to even) where the simulation computes
    # y = fq(W)∗fq(x) + b in float: the logits agree to within one output step
    assert (lsb <= 1 + 1e-4).mean() >= 0.99
    ort_acc = 100 * (out.argmax(1) == data.y_test.numpy()).mean()
    assert abs(ort_acc - accuracy(quantized, data.x_test, data.y_test)) <= 0.3


def test_onnx_runtime_runs_int8_kernels(
    quantized: nn.Module, digits: tuple[DigitsCNN, DigitsData], tmp_path: Path
) -> None:
    _, data = digits
    path = zp.export_onnx(quantized, tmp_path / "digits.onnx", data.x_test[:4])
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    assert {"QLinearConv", "QLinearAdd", "QGemm"} <= ops
    weights = [
        i
        for i in onnx.load(str(path)).graph.initializer
        if i.name.endswith("weight_quantized_1") or "weight_quantized" in i.name
    ]
    assert weights and all(w.data_type == onnx.TensorProto.INT8 for w in weights)


def test_failed_export_leaves_no_file(quantized: nn.Module, tmp_path: Path) -> None:
    target = tmp_path / "bad.onnx"
    with pytest.raises(ValueError, match="example input does not fit"):
        zp.export_onnx(quantized, target, torch.randn(2, 3, 8, 8))
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_unwritable_path_is_a_clear_error(quantized: nn.Module, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(PermissionError, match="cannot create output directory"):
        zp.export_onnx(quantized, blocker / "sub" / "m.onnx", torch.zeros(1, 1, 8, 8))


# checkpoint tests (round trip, int4 packing, malformed checkpoints) moved to tests/test_checkpoint.py
