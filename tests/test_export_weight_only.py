"""ONNX export of weight-only (MatMulNBits) and coded-weight (Gather / DequantizeLinear) models,
run by ONNX Runtime and compared with the PyTorch model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import zeropoint as zp
from zeropoint.export.onnx_weight_only import export_weight_only_onnx
from zeropoint.nn.codebook_weights import WeightSpec, quantize_weights
from zeropoint.ptq.awq import awq_quantize
from zeropoint.ptq.hqq import hqq_quantize

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 96), nn.GELU(), nn.Linear(96, 32))


def _config(scheme: zp.Scheme) -> zp.QuantConfig:
    return zp.QuantConfig(weight=scheme, activation=None, module_types=(nn.Linear,))


def _models() -> dict[str, nn.Module]:
    m = _mlp()
    models: dict[str, nn.Module] = {}
    for scheme in (
        zp.Scheme(bits=4, symmetric=True, group_size=32),
        zp.Scheme(bits=4, symmetric=False, group_size=32),
        zp.Scheme(bits=3, symmetric=False, group_size=16),
        zp.Scheme(bits=2, symmetric=False, group_size=32),
        zp.Scheme(bits=8, symmetric=True, group_size=32),
    ):
        models[f"rtn {scheme}"] = zp.quantize_dynamic(m, _config(scheme))
    models["hqq"] = hqq_quantize(m, _config(zp.Scheme(bits=4, signed=False, group_size=32)))
    g = torch.Generator().manual_seed(1)
    models["awq"] = awq_quantize(
        m,
        [torch.randn(64, 64, generator=g) * torch.linspace(0.1, 5, 64)],
        _config(zp.Scheme(bits=4, symmetric=False, group_size=32)),
    )
    for spec in (
        WeightSpec("kmeans", 3),
        WeightSpec("binary", 2, per_channel=False),
        WeightSpec("log2", 4),
        WeightSpec("fp4_e2m1"),
        WeightSpec("fp8_e4m3fn"),
        WeightSpec("fp8_e5m2", per_channel=False),
    ):
        models[spec.label] = quantize_weights(m, spec)
    return models


MODELS = _models()
#: the operator each layer must become (the point of the export: codes in the file)
EXPECTED_OP = {
    "kmeans": "Gather",
    "binary": "Gather",
    "log2": "Gather",
    "fp4_e2m1": "Gather",
    "fp8_e4m3fn": "DequantizeLinear",
    "fp8_e5m2": "DequantizeLinear",
}


@pytest.mark.parametrize("name", list(MODELS))
def test_onnx_runtime_agrees_with_the_model(name: str, tmp_path: Path) -> None:
    model = MODELS[name]
    x = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(2))
    path = export_weight_only_onnx(
        model, tmp_path / "m.onnx", (x,), input_names=["x"], output_names=["y"],
        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
    )  # fmt: skip
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    op = EXPECTED_OP.get(name.split()[0], "MatMulNBits")
    assert ops.count(op) == 2 and "Gemm" not in ops
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (x, x[:1]):
        y = session.run(None, {"x": batch.numpy()})[0]
        with torch.no_grad():
            ref = model(batch).double().numpy()
        assert (np.abs(y - ref) <= _bound(model, batch)).all()


def _bound(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Both sides compute the same weights' products in float32, summed in different orders:
    per layer |Δ| ≤ 2·γ_{K+1}·(|x|·|Ŵ|ᵀ + |b|) (Higham §3.1, each side within γ of the exact
    value), carried through GELU (Lipschitz constant < 1.13) and the second layer's |Ŵ|."""
    u = 2.0**-24
    with torch.no_grad():
        w1, w2 = (model[i].dequantized_weight().double() for i in (0, 2))
        b1, b2 = model[0].bias.double(), model[2].bias.double()
        x = x.double()
        h = torch.nn.functional.gelu(x @ w1.T + b1)
        g1, g2 = 2 * 65 * u / (1 - 65 * u), 2 * 97 * u / (1 - 97 * u)
        e1 = g1 * (x.abs() @ w1.abs().T + b1.abs())
        e2 = 1.13 * e1 @ w2.abs().T + g2 * (h.abs() @ w2.abs().T + b2.abs())
    return e2.numpy()
