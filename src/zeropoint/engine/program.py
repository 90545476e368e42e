"""Lowering a simulated model to an integer-only program, and running it.

`to_integer(model_q, example_input)` reads the lowering IR (`zeropoint.lowering`: every edge's
(S, Z), every layer's integer weights and tables) and asks the operator table
(`zeropoint.ops`) for each operation's kernel, prepared once:

    quantize                              float → uint8/int8, once at each input
    conv / linear / channel affine        int8 × int8 → int32 (+ int32 bias) → M0·2^−n → int8
    element-wise ops, concatenation       tables computed from the simulation's arithmetic
    max pool, reshape, slicing, padding   on the codes
    average pools, means                  integer sums × M0·2^−n
    dequantize                            int → float, once at each output

Between the input quantize and the output dequantize no float arithmetic touches the data
(float BLAS runs only as an exact integer GEMM, see `kernels`). An operation that the table does
not know runs in float between a dequantize and a quantize and is listed in ``fallbacks`` by its
module path.

``program(x)`` takes and returns float tensors (quantize → integer steps → dequantize);
``program.run_int(q)`` takes the input quantizers' codes and returns the output codes.
``program.save(dir)`` / ``IntegerProgram.load(dir)`` use safetensors + JSON (no pickle).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, fx, nn

from zeropoint.engine.program_io import op_from_json, op_to_json
from zeropoint.functional import dequantize_int, quantize_int
from zeropoint.lowering import QGraph, QOp, build_qgraph
from zeropoint.ops.common import (
    REQUANTIZATIONS,
    byte_index,
    check_integer_grids,
    engine_dtype,
    gather,
    levels,
)
from zeropoint.ops.table import spec_for
from zeropoint.qparams import QParams
from zeropoint.report.files import atomic_path, atomic_write_text, check_writable_dir
from zeropoint.workflows.graph import state_of

ROUNDING = "float32"  # ONNX Runtime's requantization: see to_integer
FORMAT, VERSION = "zeropoint-integer-program", 2
#: operations that need the model's Python code: a program holding them cannot be saved
_CODE_KINDS = ("float", "python")


@dataclass
class Step:
    """One prepared operation: ``run(values)`` reads its inputs from ``values`` (edge → tensor)
    and returns its output; every constant is bound once when the program is built."""

    op: QOp
    run: Callable[[dict[str, Any]], Any] = field(repr=False)

    @property
    def kind(self) -> str:
        return self.op.kind


class IntegerProgram:
    """An integer-only program lowered from a quantized simulation (see the module docstring)."""

    def __init__(self, graph: QGraph, steps: list[Step], rounding: str = ROUNDING) -> None:
        self.graph = graph
        self.steps = steps
        self.rounding = rounding

    # ------------------------------------------------------------------ execution
    @property
    def fallbacks(self) -> list[str]:
        """Where the operations that run in float come from (module paths)."""
        return [s.op.where or s.op.output for s in self.steps if s.kind == "float"]

    @property
    def input_qparams(self) -> list[Any]:
        """The (S, Z) of each input's quantizer (None for an input used in float)."""
        steps = [self._input_quant(name) for name in self.graph.inputs]
        return [None if s is None else s.op.out_qparams for s in steps]

    def _input_quant(self, name: str) -> Step | None:
        for s in self.steps:
            if s.kind == "quantize" and s.op.inputs[0] == name:
                return s
        return None

    def __call__(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        """Float in, float out: quantize → integer steps → dequantize."""
        if len(inputs) != len(self.graph.inputs):
            raise ValueError(
                f"the program takes {len(self.graph.inputs)} input(s) "
                f"({', '.join(self.graph.inputs)}), got {len(inputs)}"
            )
        values = self._run(dict(zip(self.graph.inputs, inputs, strict=True)), stop_at_int=False)
        outs = tuple(values[name].contiguous() for name in self.graph.outputs)
        return outs[0] if len(outs) == 1 else outs

    def run_int(self, *q_inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        """Integer codes in (on the input quantizers' grids), integer codes out."""
        values: dict[str, Any] = {}
        for name, q in zip(self.graph.inputs, q_inputs, strict=True):
            quant = self._input_quant(name)
            if quant is None:
                raise ValueError(f"input {name} is not quantized: pass it to program(...)")
            values[quant.op.output] = q
        values = self._run(values, stop_at_int=True)
        outs = tuple(values[name].contiguous() for name in self._int_outputs())
        return outs[0] if len(outs) == 1 else outs

    def run_op(self, op_output: str, inputs: list[Tensor]) -> Tensor:
        """One operation alone, on the given input codes (for per-layer comparisons)."""
        step = next(s for s in self.steps if s.op.output == op_output)
        return step.run(dict(zip(step.op.inputs, inputs, strict=True)))  # type: ignore[no-any-return]

    def _int_outputs(self) -> list[str]:
        by_output = {s.op.output: s for s in self.steps}
        return [
            by_output[n].op.inputs[0] if n in by_output and by_output[n].kind == "dequantize" else n
            for n in self.graph.outputs
        ]

    def _run(self, values: dict[str, Any], stop_at_int: bool) -> dict[str, Any]:
        with torch.no_grad():
            for step in self.steps:
                if step.op.output in values:
                    continue
                if stop_at_int and step.kind == "dequantize":
                    continue
                values[step.op.output] = step.run(values)
        return values

    # ------------------------------------------------------------------ reporting
    def summary(self) -> str:
        lines = [f"IntegerProgram: {len(self.steps)} steps, rounding={self.rounding}"]
        for s in self.steps:
            qp = s.op.out_qparams
            grid = (
                f"S={float(qp.scale):.4g} Z={int(qp.zero_point)} {qp.scheme}"
                if qp is not None and qp.scale.dim() == 0
                else "float"
            )
            kind = s.kind + ("+clip" if s.op.clip is not None else "")
            lines.append(f"  {kind:<22} {s.op.where or s.op.output:<28} -> {grid}")
        if self.fallbacks:
            lines.append(f"  float fallbacks: {', '.join(self.fallbacks)}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write the program as safetensors (integer weights, biases, tables) + JSON."""
        code = [s.op.where or s.op.output for s in self.steps if s.kind in _CODE_KINDS]
        if code:
            raise ValueError(
                f"a program with float fallbacks ({', '.join(code)}) references the model's "
                "Python code and cannot be saved without pickle"
            )
        directory = check_writable_dir(Path(path))
        tensors: dict[str, Tensor] = {}
        steps = [op_to_json(s.op, i, tensors) for i, s in enumerate(self.steps)]
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "rounding": self.rounding,
            "inputs": self.graph.inputs,
            "outputs": self.graph.outputs,
            "shapes": {k: list(v) for k, v in self.graph.shapes.items()},
            "steps": steps,
        }
        with atomic_path(directory / "program.safetensors") as tmp:
            save_file(tensors, str(tmp))
        atomic_write_text(directory / "program.json", json.dumps(doc, indent=1))
        return directory

    @classmethod
    def load(cls, path: str | Path) -> IntegerProgram:
        directory = Path(path)
        try:
            doc = json.loads((directory / "program.json").read_text(encoding="utf-8"))
            tensors = load_file(str(directory / "program.safetensors"))
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{directory} is not a saved integer program: {exc}") from exc
        except (json.JSONDecodeError, ValueError, OSError) as exc:
            raise ValueError(f"{directory} holds a malformed integer program: {exc}") from exc
        if doc.get("format") != FORMAT or doc.get("version") != VERSION:
            raise ValueError(
                f"{directory} is not a zeropoint integer program of version {VERSION} "
                f"(format {doc.get('format')!r}, version {doc.get('version')!r})"
            )
        try:
            ops = [op_from_json(e, tensors) for e in doc["steps"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{directory} holds a malformed integer program: {exc}") from exc
        edges: dict[str, QParams | None] = {name: None for name in doc["inputs"]}
        edges.update({op.output: op.out_qparams for op in ops})
        shapes = {k: tuple(v) for k, v in doc["shapes"].items()}
        graph = QGraph(ops, edges, doc["inputs"], doc["outputs"], shapes)
        return _prepare(graph, doc["rounding"])


# ---------------------------------------------------------------------- preparation


def to_integer(
    model: nn.Module, example_inputs: Any, rounding: str | None = None
) -> IntegerProgram:
    """Lower a converted (simulated) model to an integer-only program.

    ``rounding`` (default: the config's ``requantization``, which the converted simulation uses
    too) — how a layer's int32 accumulator becomes an output code:

    * "float32": ONNX Runtime's arithmetic, rne(fl32(acc)·fl32(fl32(S_x·S_w)/S_y)) — the program,
      the simulation and ONNX Runtime running the export then give the same codes;
    * "single": acc·M0·2^−n rounded once, half away from zero (TFLite's single rounding) — the
      fixed-point form for targets without float;
    * "double": gemmlowp's SaturatingRoundingDoublingHighMul then RoundingDivideByPOT, bit for bit.

    Average pools and means divide exactly and round half to even under "float32" (as ONNX
    Runtime and the simulation average in float), and use M0·2^−n under "single" / "double".
    """
    if rounding is None:
        rounding = state_of(model).config.requantization
    if rounding not in REQUANTIZATIONS:
        raise ValueError(f"rounding={rounding!r}: expected one of {REQUANTIZATIONS}")
    graph = build_qgraph(model, example_inputs)
    check_integer_grids(graph)  # fp8 / fp4 grids have no integer kernels
    return _prepare(graph, rounding)


def _prepare(graph: QGraph, rounding: str) -> IntegerProgram:
    steps = [Step(op, _bind(op, graph, rounding)) for op in graph.ops]
    return IntegerProgram(graph, steps, rounding)


def _bind(op: QOp, graph: QGraph, rounding: str) -> Callable[[dict[str, Any]], Any]:
    """The step as a closure over its prepared constants: one call per execution."""
    ins = op.inputs
    builtin = _BUILTINS.get(op.kind)
    if builtin is not None:
        return builtin(op, graph)
    spec = spec_for(op.kind)
    if spec.kernel is None:
        raise ValueError(f"operation {op.kind!r} ({op.where}) has no integer kernel")
    try:
        kernel = spec.kernel(op, graph, rounding)
    except ValueError as exc:
        raise ValueError(f"{op.where or op.output} ({op.kind}): {exc}") from exc
    if len(ins) == 1:
        i0 = ins[0]
        return lambda v: kernel([v[i0]])
    return lambda v: kernel([v[i] for i in ins])


def _quantize(op: QOp, graph: QGraph) -> Callable[[dict[str, Any]], Any]:
    qp, i0 = op.out_qparams, op.inputs[0]
    assert qp is not None
    dtype = engine_dtype(qp, f"input {i0}")
    return lambda v: quantize_int(v[i0].float(), qp).to(dtype)


def _requantize(op: QOp, graph: QGraph) -> Callable[[dict[str, Any]], Any]:
    """Codes onto another grid: the table T[q] = Q_y(S_x·(q − Z_x)), as the simulation does."""
    src, qp, i0 = graph.edges[op.inputs[0]], op.out_qparams, op.inputs[0]
    assert src is not None and qp is not None
    table = quantize_int(levels(src), qp).to(engine_dtype(qp, op.where))
    return lambda v: gather(table, byte_index(v[i0]))


def _dequantize(op: QOp, graph: QGraph) -> Callable[[dict[str, Any]], Any]:
    qp, i0 = graph.edges[op.inputs[0]], op.inputs[0]
    assert qp is not None
    return lambda v: dequantize_int(v[i0], qp)


def _constant(op: QOp, graph: QGraph) -> Callable[[dict[str, Any]], Any]:
    value = op.attrs["value"]
    return lambda v: value


def _python(op: QOp, graph: QGraph) -> Callable[[dict[str, Any]], Any]:
    """A non-tensor node (x.size(0), tuple indexing): evaluated on the values it reads."""
    return lambda v: _evaluate(op, v, graph, dequantize=False)


def _float(op: QOp, graph: QGraph) -> Callable[[dict[str, Any]], Any]:
    """A fallback: dequantize the inputs, run the original torch op, return a float tensor
    (clipped by a clip fused into it: an op whose quantizer was to follow the clip)."""
    if op.clip is None:
        return lambda v: _evaluate(op, v, graph, dequantize=True)
    lo, hi = op.clip
    return lambda v: _evaluate(op, v, graph, dequantize=True).clamp(lo, hi)


def _evaluate(op: QOp, values: dict[str, Any], graph: QGraph, dequantize: bool) -> Any:
    node = op.node
    if node is None:
        raise ValueError(f"{op.where or op.output} has no torch operation to run")
    edges: dict[str, str] = op.attrs.get("node_edges", {})
    consts: dict[str, Any] = op.attrs.get("arg_values", {})

    def arg(n: fx.Node) -> Any:
        edge = edges.get(n.name)
        if edge is None or edge not in values:
            return consts.get(n.name)  # a constant argument (e.g. a flag taken as constant)
        value = values[edge]
        qp = graph.edges.get(edge)
        if dequantize and qp is not None and isinstance(value, Tensor):
            return dequantize_int(value, qp)
        return value

    args = fx.node.map_arg(node.args, arg)
    kwargs = fx.node.map_arg(node.kwargs, arg)
    if node.op == "call_module":
        assert op.module is not None
        return op.module(*args, **kwargs)
    if node.op == "call_method":
        self_arg, *rest = args
        return getattr(self_arg, str(node.target))(*rest, **kwargs)
    return node.target(*args, **kwargs)  # type: ignore[operator]


_BUILTINS: dict[str, Callable[[QOp, QGraph], Callable[[dict[str, Any]], Any]]] = {
    "quantize": _quantize,
    "requantize": _requantize,
    "dequantize": _dequantize,
    "constant": _constant,
    "python": _python,
    "float": _float,
}
