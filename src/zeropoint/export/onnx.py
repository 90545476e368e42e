"""Export a converted model to ONNX in the QDQ format that ONNX Runtime runs with int8 kernels.

The graph is written from the lowering IR (`zeropoint.lowering`) — the one the integer engine
runs, so no scale is re-derived — one operator-table entry at a time (`zeropoint.ops`):

* every quantized edge is QuantizeLinear → DequantizeLinear with the edge's (S, Z) (codes of a
  grid narrower than 8 bits are clipped to its range in between);
* weights are int8 initializers behind a per-axis DequantizeLinear, biases int32 initializers
  with scale S_x·S_w and zero point 0, exactly the codes the engine uses;
* each operation is written on dequantized (float) inputs by its table entry, followed by its
  fused clip (Relu / Clip) and its output's QuantizeLinear → DequantizeLinear. ONNX Runtime's
  graph optimizer then fuses DQ → Conv → Q into QLinearConv, DQ → Gemm → Q into QGemm,
  DQ → Add → Q into QLinearAdd, and runs MaxPool / Reshape / Transpose / Pad / Resize / Concat
  on the integers;
* an operation the table does not know is written by PyTorch's own exporter
  (``torch.onnx.export`` of that one operation) between DequantizeLinear and QuantizeLinear,
  as ONNX Runtime's quantizer leaves unsupported ops in float; `export_report` names them.

The batch dimension is dynamic: inputs and outputs are declared (batch, ...) and reshapes copy
the batch size from their input. The file is written atomically: a failed export leaves none.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, fx

from zeropoint.extras import require
from zeropoint.lowering import QGraph, QOp, build_qgraph
from zeropoint.ops.table import spec_for
from zeropoint.ops.tables import emit_clip
from zeropoint.qparams import QParams
from zeropoint.report.files import atomic_path

OPSET = 21


def _int_types() -> dict[tuple[int, bool], int]:
    from onnx import TensorProto

    return {(8, True): TensorProto.INT8, (8, False): TensorProto.UINT8,
            (16, True): TensorProto.INT16, (16, False): TensorProto.UINT16}  # fmt: skip


def _float_types() -> dict[str, int]:
    """ONNX element types of the float formats (QuantizeLinear / DequantizeLinear, opset ≥ 19:
    the zero point's type carries the float8 type)."""
    from onnx import TensorProto

    return {"e4m3fn": TensorProto.FLOAT8E4M3FN, "e5m2": TensorProto.FLOAT8E5M2,
            "e2m1": TensorProto.FLOAT4E2M1}  # fmt: skip


#: float formats whose QuantizeLinear / DequantizeLinear ONNX Runtime 1.32's CPU provider runs
#: (float8 since opset 19); e2m1 (float4, opset 23) has no CPU kernel — not for Q/DQ, not for
#: Cast — so fp4 grids are written as the same rounding in standard operators (`_emulated_qdq`)
#: and fp4 weights as their dequantized values.
ORT_FLOAT_TYPES = ("e4m3fn", "e5m2")


class OnnxBuilder:
    """Nodes and initializers of the graph being written, with QDQ helpers."""

    def __init__(self) -> None:
        from onnx import TensorProto

        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.counter = 0
        self.INT32 = TensorProto.INT32
        self.extra_opsets: dict[str, int] = {}

    def name(self, base: str) -> str:
        self.counter += 1
        return f"{base}_{self.counter}"

    def int_type(self, qp: QParams) -> int:
        """The ONNX type holding the codes of ``qp``: integers in 8-bit containers up to 8 bits,
        16-bit ones above; a float format its float8 / float4 type."""
        if qp.scheme.float_format is not None:
            return _float_types()[qp.scheme.float_format]
        bits = 8 if qp.scheme.bits <= 8 else 16 if qp.scheme.bits <= 16 else 0
        key = (bits, qp.scheme.signed)
        types = _int_types()
        if key not in types:
            raise ValueError(f"ONNX has no integer type for {qp.scheme} (up to 16 bits)")
        return types[key]

    @staticmethod
    def runs_type(scheme: object) -> bool:
        """Does ONNX Runtime run QuantizeLinear / DequantizeLinear of this scheme's type?"""
        fmt = getattr(scheme, "float_format", None)
        return fmt is None or fmt in ORT_FLOAT_TYPES

    def const(self, base: str, array: np.ndarray, elem_type: int | None = None) -> str:
        from onnx import helper, numpy_helper

        name = self.name(base)
        if elem_type is None:
            self.inits.append(numpy_helper.from_array(np.asarray(array), name))
            return name
        np_type = helper.tensor_dtype_to_np_dtype(elem_type)
        self.inits.append(numpy_helper.from_array(np.asarray(array).astype(np_type), name))
        return name

    def node(self, op: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        from onnx import helper

        out = output or self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name(op), **attrs))
        return out

    def qparams(self, qp: QParams, base: str) -> tuple[str, str]:
        scale = self.const(f"{base}_scale", qp.scale.numpy().astype(np.float32))
        zero = self.const(f"{base}_zero_point", qp.zero_point.numpy(), self.int_type(qp))
        return scale, zero

    def qdq(self, x: str, qp: QParams | None, output: str) -> str:
        """QuantizeLinear → (clip to a sub-8-bit range) → DequantizeLinear onto ``qp``; a
        float8 grid as QuantizeLinear → DequantizeLinear of its float8 type (saturating, as
        the simulation); an fp4 grid as `_emulated_qdq`."""
        assert qp is not None
        if not self.runs_type(qp.scheme):
            return self._emulated_qdq(x, qp, output)
        scale, zero = self.qparams(qp, output)
        axis: dict[str, Any] = {} if qp.axis is None else {"axis": qp.axis}
        q = self.node("QuantizeLinear", [x, scale, zero], **axis)
        lo, hi = qp.scheme.qrange
        container = {8: (-128, 127), 16: (-32768, 32767)}[8 if qp.scheme.bits <= 8 else 16]
        if not qp.scheme.signed:
            container = (0, 2 * container[1] + 1)
        if (lo, hi) != container and qp.scheme.float_format is None:
            bounds = [self.const("code_bound", np.array(v), self.int_type(qp)) for v in (lo, hi)]
            q = self.node("Clip", [q, *bounds])
        return self.node("DequantizeLinear", [q, scale, zero], output, **axis)

    def _emulated_qdq(self, x: str, qp: QParams, output: str) -> str:
        """Q → DQ onto a float-format grid that ONNX Runtime has no kernel for (fp4 e2m1),
        written as the simulation's arithmetic in standard operators, bit for bit:

            u = x / S;  a = clip(u, −max, max);  q = 2^(max(⌊log2|a|⌋, emin) − m)
            x̂ = S · (q · round(a / q))

        with q chosen by comparisons of |a| against the binade edges 2^emin+1, ..., 2^emax
        (round: half to even; every step after the division is exact)."""
        fmt = qp.scheme.floating
        assert fmt is not None
        if qp.axis is not None:
            raise ValueError(f"{output}: emulated {fmt.name} grids are per tensor, got {qp.scheme}")
        s = self.const(f"{output}_scale", qp.scale.numpy().astype(np.float32))
        u = self.node("Div", [x, s])
        bound = [
            self.const("float_max", np.array(v, dtype=np.float32)) for v in (-fmt.max, fmt.max)
        ]
        a = self.node("Clip", [u, *bound])
        mag = self.node("Abs", [a])
        step = self.const("ulp", np.array(2.0 ** (fmt.emin - fmt.man_bits), dtype=np.float32))
        for k in range(fmt.emin + 1, fmt.emax + 1):
            edge = self.const("binade", np.array(2.0**k, dtype=np.float32))
            wider = self.const("ulp", np.array(2.0 ** (k - fmt.man_bits), dtype=np.float32))
            step = self.node("Where", [self.node("GreaterOrEqual", [mag, edge]), wider, step])
        rounded = self.node("Mul", [self.node("Round", [self.node("Div", [a, step])]), step])
        return self.node("Mul", [rounded, s], output)

    def dq_const(self, codes: Tensor, qp: QParams, base: str, elem_type: int) -> str:
        """An integer initializer behind a DequantizeLinear (weights, biases); for a float8
        scheme its bit patterns as a float8 initializer."""
        if qp.scheme.float_format is not None:
            return self._float_dq_const(codes, qp, base, elem_type)
        q = self.const(f"{base}_quantized", codes.numpy(), elem_type)
        scale = self.const(f"{base}_scale", qp.scale.numpy().astype(np.float32))
        zero = self.const(f"{base}_zero_point", qp.zero_point.numpy(), elem_type)
        attrs: dict[str, Any] = {} if qp.axis is None else {"axis": qp.axis}
        return self.node("DequantizeLinear", [q, scale, zero], f"{base}_dequantized", **attrs)

    def _float_dq_const(self, codes: Tensor, qp: QParams, base: str, elem_type: int) -> str:
        from onnx import helper, numpy_helper

        np_type = helper.tensor_dtype_to_np_dtype(elem_type)
        name = self.name(f"{base}_quantized")
        bits = codes.to(torch.uint8).numpy().view(np_type)  # the codes are the bit patterns
        self.inits.append(numpy_helper.from_array(bits, name))
        scale = self.const(f"{base}_scale", qp.scale.numpy().astype(np.float32))
        zero = self.const(f"{base}_zero_point", qp.zero_point.numpy(), elem_type)
        attrs: dict[str, Any] = {} if qp.axis is None else {"axis": qp.axis}
        return self.node("DequantizeLinear", [name, scale, zero], f"{base}_dequantized", **attrs)


def _emit(b: OnnxBuilder, op: QOp, graph: QGraph) -> None:
    ins, kind = op.inputs, op.kind
    if kind == "quantize" or kind == "requantize":
        b.qdq(ins[0], op.out_qparams, op.output)
        return
    if kind == "dequantize":
        b.node("Identity", [ins[0]], op.output)
        return
    if kind == "constant":
        b.inits.append(_initializer(op.output, op.attrs["value"]))
        return
    if kind == "python":
        return  # shapes and sizes: read statically by the ops that use them
    if kind == "float":
        y = _emit_float(b, op, graph)
    else:
        spec = spec_for(kind)
        if spec.emit is None:
            raise ValueError(f"{op.where}: operation {kind!r} has no ONNX form")
        y = spec.emit(b, op, graph, list(ins))
    if op.clip is not None:
        y = emit_clip(b, y, *op.clip)
    if op.out_qparams is None:
        b.node("Identity", [y], op.output)
    else:
        b.qdq(y, op.out_qparams, op.output)


def _initializer(name: str, value: Tensor) -> Any:
    from onnx import numpy_helper

    return numpy_helper.from_array(value.detach().cpu().numpy(), name)


def _emit_float(b: OnnxBuilder, op: QOp, graph: QGraph) -> str:
    """The operation written by torch.onnx.export (one node, on example inputs of its shapes)
    and spliced in: its tensors renamed, its inputs wired to our (dequantized) edges."""
    import onnx

    node = op.node
    if node is None:
        raise ValueError(f"{op.where}: float operation without a torch node")
    edges: dict[str, str] = op.attrs.get("node_edges", {})
    tensor_edges = [e for e in dict.fromkeys(edges.values()) if graph.shapes.get(e)]
    examples = [torch.randn(*graph.shapes[e]) for e in tensor_edges]
    module = _OneNode(op, edges, tensor_edges)
    buffer = io.BytesIO()
    names = [f"in{i}" for i in range(len(examples))]
    dynamic = {n: {0: "batch"} for n in [*names, "out"]}
    try:
        target: Any = buffer  # torch.onnx.export writes to a file object too
        torch.onnx.export(module, tuple(examples), target, dynamo=False, opset_version=20,
                          input_names=names, output_names=["out"], dynamic_axes=dynamic)  # fmt: skip
    except Exception as exc:
        raise ValueError(
            f"{op.where}: this operation runs in float and PyTorch's ONNX exporter cannot write "
            f"it either ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        ) from exc
    sub = onnx.load_from_string(buffer.getvalue())
    sub = onnx.version_converter.convert_version(sub, OPSET)
    prefix = b.name(f"{op.output}_float")
    rename = {f"in{i}": e for i, e in enumerate(tensor_edges)}
    rename["out"] = f"{prefix}_out"

    def renamed(n: str) -> str:
        return n if not n else rename.get(n, f"{prefix}/{n}")

    for init in sub.graph.initializer:
        init.name = renamed(init.name)
        b.inits.append(init)
    for n in sub.graph.node:
        n.input[:] = [renamed(i) for i in n.input]
        n.output[:] = [renamed(o) for o in n.output]
        n.name = renamed(n.name)
        b.nodes.append(n)
    for opset in sub.opset_import:
        if opset.domain not in ("", "ai.onnx"):
            b.extra_opsets[opset.domain] = opset.version
    return rename["out"]


class _OneNode(torch.nn.Module):
    """One fx node as a module of its tensor inputs (other arguments as recorded)."""

    def __init__(self, op: QOp, edges: dict[str, str], tensor_edges: list[str]) -> None:
        super().__init__()
        self.op = op
        self.edges = edges
        self.tensor_edges = tensor_edges
        if op.module is not None:
            self.inner = op.module

    def forward(self, *xs: Tensor) -> Any:
        node = self.op.node
        assert node is not None
        by_edge = dict(zip(self.tensor_edges, xs, strict=True))
        consts: dict[str, Any] = self.op.attrs.get("arg_values", {})

        def arg(n: fx.Node) -> Any:
            edge = self.edges.get(n.name)
            return by_edge[edge] if edge in by_edge else consts.get(n.name)

        args = fx.node.map_arg(node.args, arg)
        kwargs = fx.node.map_arg(node.kwargs, arg)
        if node.op == "call_module":
            return self.inner(*args, **kwargs)
        if node.op == "call_method":
            self_arg, *rest = args
            return getattr(self_arg, str(node.target))(*rest, **kwargs)
        return node.target(*args, **kwargs)  # type: ignore[operator]


def _keep_clips_before_float8(b: OnnxBuilder) -> None:
    """Write Relu as Max(x, 0) and Clip as Min(Max(x, lo), hi) where they feed a float8
    QuantizeLinear. ONNX Runtime 1.32's QDQ rules assume int8 / uint8 zero points there: its
    ReluQuantFusion removes a Relu before any other QuantizeLinear (as if the grid began at 0,
    which drops the negative half of an fp8 grid), and its ClipQuantFusion throws on a float8
    zero point. Max / Min compute the same values (NaN aside) and match neither rule."""
    from onnx import TensorProto, helper

    float8 = {TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2}
    zero_types = {init.name: init.data_type for init in b.inits}
    fed = {
        node.input[0]
        for node in b.nodes
        if node.op_type == "QuantizeLinear"
        and len(node.input) == 3
        and zero_types.get(node.input[2]) in float8
    }
    nodes: list[Any] = []
    for node in b.nodes:
        if node.op_type not in ("Relu", "Clip") or node.output[0] not in fed:
            nodes.append(node)
            continue
        if node.op_type == "Relu":
            bounds = [("Max", b.const("clip_zero", np.array(0.0, dtype=np.float32)))]
        else:  # Clip(x, lo, hi): an empty or missing bound is open
            given = [*node.input[1:3], "", ""][:2]
            bounds = [(kind, name) for kind, name in zip(("Max", "Min"), given) if name]
        x = node.input[0]
        for i, (kind, bound) in enumerate(bounds):
            out = node.output[0] if i == len(bounds) - 1 else b.name(kind.lower())
            nodes.append(helper.make_node(kind, [x, bound], [out], name=b.name(kind)))
            x = out
        if not bounds:
            nodes.append(
                helper.make_node("Identity", [x], [node.output[0]], name=b.name("Identity"))
            )
    b.nodes[:] = nodes


def to_onnx_model(model: torch.nn.Module, example_inputs: Any) -> Any:
    """The QDQ onnx.ModelProto of a converted model (see the module docstring)."""
    return qgraph_to_onnx(build_qgraph(model, example_inputs), f"{type(model).__name__}_qdq")


def qgraph_to_onnx(graph: QGraph, name: str = "zeropoint_qdq") -> Any:
    """The QDQ onnx.ModelProto of a lowered graph (also used for single operations)."""
    import onnx
    from onnx import TensorProto, helper

    b = OnnxBuilder()
    for op in graph.ops:
        _emit(b, op, graph)
    _keep_clips_before_float8(b)

    def info(name: str) -> Any:
        shape: list[Any] = ["batch", *graph.shapes[name][1:]] if graph.shapes[name] else []
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    g = helper.make_graph(
        b.nodes, name, [info(n) for n in graph.inputs], [info(n) for n in graph.outputs], b.inits
    )
    opsets = [helper.make_opsetid("", OPSET)]
    opsets += [helper.make_opsetid(d, v) for d, v in b.extra_opsets.items()]
    m = helper.make_model(g, opset_imports=opsets, producer_name="zeropoint")
    m.ir_version = min(m.ir_version, 10)
    onnx.checker.check_model(m)
    return m


def export_report(model: torch.nn.Module, example_inputs: Any) -> dict[str, list[str]]:
    """Which operations of the export run in float (module paths), and which on integers."""
    graph = build_qgraph(model, example_inputs)
    return {
        "float": [op.where for op in graph.fallbacks],
        "integer": [op.where for op in graph.ops if op.out_qparams is not None],
    }


def export_onnx(model: torch.nn.Module, path: str | Path, example_inputs: Any) -> Path:
    """Write the QDQ ONNX model of a converted model to ``path`` (atomically).

    Inputs keep the model's argument names (e.g. ``x``) and outputs are named after the graph's
    last values; both have a dynamic batch dimension. Inputs and outputs are float: the model
    quantizes its inputs and dequantizes its outputs itself."""
    onnx = require("onnx", "ONNX export")
    proto = to_onnx_model(model, example_inputs)
    target = Path(path)
    with atomic_path(target) as tmp:
        onnx.save(proto, str(tmp))
    return target
