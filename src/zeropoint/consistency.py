"""Three executions of one quantized model, compared on the user's data: the simulation (what
QAT and calibration see), the integer program (`zp.to_integer`) and ONNX Runtime running the
export (`zp.export_onnx`).

Per operation, each execution is fed the SAME input codes — the simulation's, on that operation's
input grids — so differences do not accumulate from earlier layers: the share of identical output
codes and the largest difference in LSB (one code) say how faithfully each execution implements
the operation. End to end, every execution runs on its own from the float input: the share of
identical output codes and the agreement of predictions (argmax over the last dimension) say
what a user deploying the model will see.

    report = zp.compare_executions(model_q, batches)
    print(report.table()); report.worst("sim_engine")
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn

from zeropoint.engine.program import IntegerProgram, to_integer
from zeropoint.extras import require
from zeropoint.functional import quantize_int
from zeropoint.lowering import QGraph, QOp, build_qgraph
from zeropoint.qparams import QParams
from zeropoint.workflows.graph import link, state_of

_SKIP = ("quantize", "dequantize", "float", "python", "constant")


@dataclass
class Agreement:
    """Identical codes and the largest difference (in LSB) between two executions."""

    elements: int = 0
    identical: int = 0
    max_lsb: int = 0

    def add(self, a: Tensor, b: Tensor) -> None:
        diff = (a.to(torch.int32) - b.to(torch.int32)).abs()
        self.elements += diff.numel()
        self.identical += int((diff == 0).sum())
        self.max_lsb = max(self.max_lsb, int(diff.max()) if diff.numel() else 0)

    @property
    def share(self) -> float:
        return self.identical / self.elements if self.elements else 1.0


@dataclass
class LayerAgreement:
    """One operation: where it is, its kind, and its agreements (fed the same input codes)."""

    where: str
    kind: str
    sim_engine: Agreement = field(default_factory=Agreement)
    engine_ort: Agreement | None = None


@dataclass
class ConsistencyReport:
    layers: list[LayerAgreement]
    outputs: dict[str, Agreement]  # "sim_engine", "engine_ort", "sim_ort": final output codes
    predictions: dict[str, float]  # same pairs: share of equal argmax predictions
    samples: int
    # float outputs (quantize_outputs=False): the same pairs' largest |Δ| relative to max |y|
    float_outputs: dict[str, float] = field(default_factory=dict)

    def worst(self, pair: str = "sim_engine") -> LayerAgreement | None:
        """The operation with the lowest share of identical codes for ``pair``."""
        rows = [r for r in self.layers if getattr(r, pair) is not None]
        return min(rows, key=lambda r: getattr(r, pair).share, default=None)

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for r in self.layers:
            row: dict[str, Any] = {
                "operation": r.where, "kind": r.kind, "elements": r.sim_engine.elements,
                "sim=engine %": 100 * r.sim_engine.share, "sim-engine max LSB": r.sim_engine.max_lsb,
            }  # fmt: skip
            if r.engine_ort is not None:
                row["engine=ORT %"] = 100 * r.engine_ort.share
                row["engine-ORT max LSB"] = r.engine_ort.max_lsb
            out.append(row)
        return out

    def summary(self) -> str:
        lines = [f"{self.samples} samples, {len(self.layers)} operations"]
        for pair, agreement in self.outputs.items():
            pred = self.predictions.get(pair)
            extra = f", predictions agree {100 * pred:.2f} %" if pred is not None else ""
            if pair in self.float_outputs:
                lines.append(
                    f"  {pair}: float outputs, largest difference "
                    f"{self.float_outputs[pair]:.2g} of max |y|{extra}"
                )
                continue
            lines.append(
                f"  {pair}: output codes identical {100 * agreement.share:.3f} % "
                f"(max {agreement.max_lsb} LSB){extra}"
            )
        for pair in ("sim_engine", "engine_ort"):
            w = self.worst(pair)
            if w is not None:
                a = getattr(w, pair)
                lines.append(
                    f"  worst layer {pair}: {w.where} ({w.kind}) {100 * a.share:.3f} % identical,"
                    f" max {a.max_lsb} LSB"
                )
        return "\n".join(lines)

    def table(self) -> str:
        from zeropoint.report.tables import format_table

        digits = {"sim=engine %": 3, "engine=ORT %": 3}
        return self.summary() + "\n" + format_table(self.rows(), digits=digits)


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, wanted: set[str]) -> None:
        super().__init__(gm)
        self.wanted = wanted
        self.values: dict[str, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        if n.name in self.wanted:
            self.values[n.name] = value
        return value


def _codes(value: Tensor, qp: QParams) -> Tensor:
    return quantize_int(value.detach().float(), qp)


def _ort_session(model: Any) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])  # fmt: skip


def _single_op_graph(op: QOp, graph: QGraph) -> QGraph:
    """The op alone, its quantized inputs fed as floats through their QuantizeLinear."""
    ops: list[QOp] = []
    edges: dict[str, QParams | None] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    inputs = []
    for edge in dict.fromkeys(op.inputs):
        qp = graph.edges[edge]
        name = f"{edge}__float"
        inputs.append(name)
        edges[name], shapes[name] = None, graph.shapes[edge]
        ops.append(QOp("quantize", [name], edge, qp, shape=graph.shapes[edge]))
        edges[edge], shapes[edge] = qp, graph.shapes[edge]
    ops.append(op)
    edges[op.output], shapes[op.output] = op.out_qparams, graph.shapes[op.output]
    out = QOp("dequantize", [op.output], f"{op.output}__out", shape=graph.shapes[op.output])
    ops.append(out)
    edges[out.output], shapes[out.output] = None, out.shape
    return QGraph(ops, edges, inputs, [out.output], shapes)


def compare_executions(
    model: nn.Module,
    data: Tensor | Iterable[Any],
    onnx: bool = True,
    per_layer: bool = True,
    program: IntegerProgram | None = None,
) -> ConsistencyReport:
    """Compare the simulation, the integer program and ONNX Runtime on ``data`` (a tensor or an
    iterable of batches: tensors or (x, ...) tuples) — see the module docstring."""
    batches: list[Tensor] = [data] if isinstance(data, Tensor) else [_first(b) for b in data]
    if not batches:
        raise ValueError("compare_executions needs at least one batch of data")
    state = state_of(model)
    gm = state.graph_module
    if gm is not None:
        link(model, gm)
    graph = build_qgraph(model, batches[0][:2])
    if gm is None:  # build_qgraph already raised for module-boundary models
        raise ValueError("the model has no captured graph")
    program = program or to_integer(model, batches[0][:2])
    full_ort = layer_ort = None
    if onnx:
        require("onnx", "compare_executions(onnx=True)")
        require("onnxruntime", "compare_executions(onnx=True)")
        from zeropoint.export.onnx import qgraph_to_onnx

        full_ort = _ort_session(qgraph_to_onnx(graph))
    ops = [op for op in graph.ops if op.kind not in _SKIP and op.out_qparams is not None]
    ops = [op for op in ops if all(graph.edges[i] is not None for i in op.inputs)]
    rows = {op.output: LayerAgreement(op.where, op.kind) for op in ops} if per_layer else {}
    if onnx and per_layer:
        layer_ort = {op.output: _ort_session(qgraph_to_onnx(_single_op_graph(op, graph)))
                     for op in ops}  # fmt: skip
        for op in ops:
            rows[op.output].engine_ort = Agreement()
    outputs = {k: Agreement() for k in (("sim_engine", "engine_ort", "sim_ort") if onnx
                                         else ("sim_engine",))}  # fmt: skip
    agree = dict.fromkeys(outputs, 0)
    float_diff: dict[str, float] = {}
    samples = 0
    wanted = set(graph.sim_nodes.values())
    out_edges = program._int_outputs()
    for x in batches:
        with torch.no_grad():
            recorder = _Recorder(gm, wanted)
            sim_out = recorder.run(x)
            if per_layer:
                _compare_layers(ops, graph, program, recorder.values, rows, layer_ort)
            eng_out = program(x)
            final = {"sim": sim_out, "engine": eng_out}
            if full_ort is not None:
                final["ort"] = torch.from_numpy(full_ort.run(None, {graph.inputs[0]: x.numpy()})[0])
        qp = graph.edges[out_edges[0]]
        for pair in outputs:
            a, b = pair.split("_")
            fa, fb = _tensor(final[a]), _tensor(final[b])
            if qp is not None:
                outputs[pair].add(_codes(fa, qp), _codes(fb, qp))
            else:  # the model's output stays float: the relative difference
                scale = max(float(fa.abs().max()), 1e-30)
                rel = float((fa.float() - fb.float()).abs().max()) / scale
                float_diff[pair] = max(float_diff.get(pair, 0.0), rel)
            agree[pair] += int((fa.argmax(-1) == fb.argmax(-1)).sum()) if fa.dim() > 1 else 0
        samples += x.shape[0]
    predictions = {k: v / samples for k, v in agree.items()}
    return ConsistencyReport(list(rows.values()), outputs, predictions, samples, float_diff)


def _first(batch: Any) -> Tensor:
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, Sequence) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    raise TypeError(f"compare_executions expects tensors or (x, ...) batches, got {type(batch)}")


def _tensor(value: Any) -> Tensor:
    return value[0] if isinstance(value, tuple | list) else value


def _compare_layers(
    ops: list[QOp], graph: QGraph, program: IntegerProgram, values: dict[str, Any],
    rows: dict[str, LayerAgreement], layer_ort: dict[str, Any] | None,
) -> None:  # fmt: skip
    def sim_codes(edge: str) -> Tensor:
        qp = graph.edges[edge]
        assert qp is not None
        return _codes(values[graph.sim_nodes[edge]], qp).to(_container(qp))

    for op in ops:
        ins = [sim_codes(e) for e in op.inputs]
        expected = sim_codes(op.output)
        engine = program.run_op(op.output, ins)
        rows[op.output].sim_engine.add(engine, expected)
        if layer_ort is not None:
            feed = {f"{e}__float": values[graph.sim_nodes[e]].detach().float().numpy()
                    for e in dict.fromkeys(op.inputs)}  # fmt: skip
            out = torch.from_numpy(layer_ort[op.output].run(None, feed)[0])
            qp = op.out_qparams
            assert qp is not None
            agreement = rows[op.output].engine_ort
            assert agreement is not None
            agreement.add(engine, _codes(out, qp).to(engine.dtype))


def _container(qp: QParams) -> torch.dtype:
    return torch.int8 if qp.scheme.signed else torch.uint8


__all__ = ["Agreement", "ConsistencyReport", "LayerAgreement", "compare_executions"]
