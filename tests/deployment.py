"""The deployment check every network of the zoo goes through: quantize_static → to_integer and
export_onnx, then the three executions compared (zp.compare_executions) and the export run by
ONNX Runtime at other batch sizes than the one it was exported at."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn

import zeropoint as zp
from zeropoint.consistency import ConsistencyReport, compare_executions


@dataclass
class Deployed:
    model_q: nn.Module
    program: zp.IntegerProgram
    onnx_path: Path
    report: ConsistencyReport


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def deploy(
    model: nn.Module,
    calib: list[Tensor],
    test: Tensor,
    tmp_path: Path,
    config: zp.QuantConfig | None = None,
    float_ok: tuple[str, ...] = (),
) -> Deployed:
    """Quantize, lower, export and compare; assert the issue's acceptance for one network:
    no float fallback except ``float_ok``; per layer, fed the same codes, simulation and engine
    identical on ≥ 99.9 % of codes and never more than 1 LSB apart, engine and ONNX Runtime
    likewise; the export (written at batch 4) runs at batch 1 and 7 and gives the codes the
    engine gives."""
    model_q = zp.quantize_static(model.eval(), calib, config, progress=False)
    program = zp.to_integer(model_q, test[:4])
    unexpected = [f for f in program.fallbacks if not any(ok in f for ok in float_ok)]
    assert not unexpected, f"float fallbacks: {unexpected}"
    path = zp.export_onnx(model_q, tmp_path / "model.onnx", test[:4])
    report = compare_executions(model_q, [test], program=program)
    for row in report.layers:
        a = row.sim_engine
        assert a.share >= 0.999 and a.max_lsb <= 1, (row.where, row.kind, a)
        b = row.engine_ort
        assert b is not None and b.share >= 0.999 and b.max_lsb <= 1, (row.where, row.kind, b)
    sess = session(path)
    name = sess.get_inputs()[0].name
    for n in (1, 7):
        x = test[:n]
        out = sess.run(None, {name: x.numpy()})[0]
        assert out.shape[0] == n
        engine = program(x)
        assert isinstance(engine, Tensor)
        step = _output_step(program)
        same = np.abs(out - engine.numpy()) <= 0.5 * step
        assert same.mean() >= 0.99, f"batch {n}: engine and ONNX Runtime agree on {same.mean():.3%}"
    return Deployed(model_q, program, path, report)


def _output_step(program: zp.IntegerProgram) -> float:
    for s in program.steps:
        if s.kind == "dequantize":
            qp = program.graph.edges[s.op.inputs[0]]
            assert qp is not None
            return float(qp.scale)
    return 1e-6


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
