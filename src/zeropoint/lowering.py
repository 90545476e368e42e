"""From a converted (simulated) model to a list of quantized operations: what the integer engine and
the ONNX export both read, so that neither re-derives a scale or a weight code on its own.

Every tensor edge gets either QParams (it lives on an integer grid) or None (it is float). The
activation quantizers of the simulation are absorbed into the operation that produces their
input; every other node is looked up in the operator table (`zeropoint.ops`):

    conv → relu → act_quant     QOp("conv2d", clip=(0, ∞), out=(S_y, Z_y))
    placeholder → act_quant     QOp("quantize")
    maxpool / view / slicing    keep their input's (S, Z)           (role "shared")
    sigmoid, x * gate, x + 3    a table from the simulation's own arithmetic (role "requant")
    anything not in the table   QOp("float"): the torch op on dequantized inputs

Values come from running the graph once on the example input (shapes, and the Python values of
non-tensor nodes such as ``x.size(0)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn

from zeropoint.nn.quantizers import FakeQuant
from zeropoint.ops.simulated import SimulatedOp
from zeropoint.ops.table import spec_for
from zeropoint.qparams import QParams
from zeropoint.workflows.graph import link, state_of, tensor_inputs


@dataclass
class QOp:
    """One operation: ``kind`` (an operator-table entry, or "quantize", "dequantize", "float",
    "python", "constant"), input edge names, output edge name, the quantization parameters of
    its output (None: float), a fused output clip in real units, attributes (JSON values and
    tensors), where it comes from (module path), and its output shape."""

    kind: str
    inputs: list[str]
    output: str
    out_qparams: QParams | None = None
    clip: tuple[float, float] | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    where: str = ""
    shape: tuple[int, ...] = ()
    node: fx.Node | None = None
    module: nn.Module | None = None


@dataclass
class QGraph:
    """The operations in execution order, and the qparams of every edge (None: float)."""

    ops: list[QOp]
    edges: dict[str, QParams | None]
    inputs: list[str]
    outputs: list[str]
    shapes: dict[str, tuple[int, ...]]
    capture: str = "fx"
    #: edge → the fx node of the simulation whose output holds that edge's (quantized) value
    sim_nodes: dict[str, str] = field(default_factory=dict)

    @property
    def fallbacks(self) -> list[QOp]:
        """Operations that run in float (no integer kernel): the table has no entry for them."""
        return [op for op in self.ops if op.kind == "float"]

    def producer(self, edge: str) -> QOp | None:
        for op in self.ops:
            if op.output == edge:
                return op
        return None


@dataclass
class LowerContext:
    """What an operator-table entry sees when it lowers one node."""

    node: fx.Node
    module: nn.Module | None
    root: nn.Module
    inputs: list[str]
    edges: dict[str, QParams | None]
    shapes: dict[str, tuple[int, ...]]
    shape: tuple[int, ...]
    where: str
    values: dict[fx.Node, Any]

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        """The node's argument by position or keyword (its recorded value if it is a node)."""
        args = self.node.args
        value = args[index] if index < len(args) else self.node.kwargs.get(name, default)
        return self.resolve(value)

    def resolve(self, value: Any) -> Any:
        """Replace fx nodes inside ``value`` by the values they had on the example input."""
        return fx.node.map_arg(value, lambda n: self.values.get(n))

    def in_qparams(self, i: int = 0) -> QParams | None:
        return self.edges[self.inputs[i]]


class _Recorder(fx.Interpreter):
    """Runs the graph once, keeping each node's output (tensors as shapes are enough, but the
    Python values of non-tensor nodes are needed as they are)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        self.values[n] = value
        return value


def where_of(node: fx.Node) -> str:
    """The module path a node belongs to: its target for a module call, else the innermost
    module on its stack plus the operation ("layer3.0: add")."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    owner = next(reversed(stack.values()))[0] if stack else ""
    target = getattr(node.target, "__name__", str(node.target))
    return f"{owner}: {target}" if owner else str(target)


def build_qgraph(model: nn.Module, example_inputs: Any) -> QGraph:
    """Run the converted model's graph once on ``example_inputs`` and collect its quantized
    operations (see the module docstring)."""
    from zeropoint.ops.table import find_op

    state = state_of(model)
    gm = state.graph_module
    if gm is None:
        raise ValueError(_no_graph_reason(model, state))
    link(model, gm)
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    recorder = _Recorder(gm)
    try:
        with torch.no_grad():
            recorder.run(*args)
    except Exception as exc:
        raise ValueError(
            f"the example input does not fit the model ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); shapes given: "
            f"{[tuple(a.shape) for a in args if isinstance(a, Tensor)]}"
        ) from exc
    return _Builder(gm, model, recorder.values, find_op).build()


def _no_graph_reason(model: nn.Module, state: Any) -> str:
    name = type(model).__name__
    if state.workflow in ("dynamic", "weight_only"):
        return (
            f"{name} was quantized by zp.quantize_dynamic ({state.workflow}): its activations are "
            "quantized at run time, per call, so it has no fixed activation grids for an "
            "integer-only program or a static QDQ export; use zp.quantize_static (or QAT) for "
            "zp.to_integer / zp.export_onnx"
        )
    return (
        f"{name} was quantized at module boundaries because torch.fx could not capture it "
        f"({state.reason or 'no reason recorded'}); zp.to_integer and zp.export_onnx need the "
        "captured graph: make that construct traceable (or pass the argument it branches on "
        "as a constant: zp.prepare(..., concrete_args={...}))"
    )


class _Builder:
    def __init__(
        self, gm: fx.GraphModule, root: nn.Module, values: dict[fx.Node, Any], find_op: Any
    ) -> None:
        self.gm, self.root, self.values, self.find_op = gm, root, values, find_op
        self.ops: list[QOp] = []
        self.edges: dict[str, QParams | None] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.alias: dict[fx.Node, str] = {}
        self.producer: dict[str, QOp] = {}
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.sim_nodes: dict[str, str] = {}

    # ------------------------------------------------------------------ helpers
    def add(self, op: QOp) -> QOp:
        self.ops.append(op)
        self.edges[op.output] = op.out_qparams
        self.shapes[op.output] = op.shape
        self.producer[op.output] = op
        return op

    def is_tensor(self, node: fx.Node) -> bool:
        return isinstance(self.values.get(node), Tensor)

    def shape(self, node: fx.Node) -> tuple[int, ...]:
        v = self.values.get(node)
        return tuple(v.shape) if isinstance(v, Tensor) else ()

    def tensor_args(self, node: fx.Node) -> list[fx.Node]:
        return [a for a in tensor_inputs(node) if self.is_tensor(a)]

    def node_edges(self, node: fx.Node) -> dict[str, str]:
        """Argument node name → the edge holding its value (for ops that run torch code)."""
        return {a.name: self.alias[a] for a in tensor_inputs(node) if a in self.alias}

    def float_op_attrs(self, node: fx.Node) -> dict[str, Any]:
        """What a float operation's torch code reads: its argument edges and constants."""
        consts = {a.name: self.values.get(a) for a in tensor_inputs(node) if not self.is_tensor(a)}
        return {"node_edges": self.node_edges(node), "arg_values": consts}

    def float_op(self, node: fx.Node, module: nn.Module | None) -> QOp:
        attrs = self.float_op_attrs(node)
        ins = [e for e in attrs["node_edges"].values() if e in self.edges or e in self.producer]
        return self.add(
            QOp("float", ins, node.name, attrs=attrs,
                where=where_of(node), shape=self.shape(node), node=node, module=module)
        )  # fmt: skip

    # ------------------------------------------------------------------ the walk
    def build(self) -> QGraph:
        for node in self.gm.graph.nodes:
            self.visit(node)
        self.finish()
        sim = {op.output: self.sim_nodes.get(op.output, op.output) for op in self.ops}
        return QGraph(self.ops, self.edges, self.inputs, self.outputs, self.shapes, "fx", sim)

    def visit(self, node: fx.Node) -> None:
        module = self.root.get_submodule(str(node.target)) if node.op == "call_module" else None
        if node.op == "placeholder":
            if self.is_tensor(node):
                self.inputs.append(node.name)
                self.edges[node.name] = None
                self.shapes[node.name] = self.shape(node)
                self.alias[node] = node.name
            return
        if node.op == "output":
            self.visit_output(node)
            return
        if node.op == "get_attr":
            value = self.values.get(node)
            if isinstance(value, Tensor):
                self.alias[node] = self.add(
                    QOp("constant", [], node.name, attrs={"value": value.detach().clone()},
                        where=str(node.target), shape=tuple(value.shape))
                ).output  # fmt: skip
            return
        if not self.is_tensor(node):
            # x.size(0), torch._assert, tuple indexing...: Python values, evaluated at run time
            # only where a float fallback needs them (shape arguments are read statically)
            if node.users:
                consts = {a.name: self.values.get(a) for a in tensor_inputs(node)}
                self.alias[node] = self.add(
                    QOp("python", [], node.name,
                        attrs={"node_edges": self.node_edges(node), "arg_values": consts},
                        where=where_of(node), node=node)
                ).output  # fmt: skip
            return
        if isinstance(module, FakeQuant):
            self.visit_quantizer(node, module)
            return
        if isinstance(module, SimulatedOp):  # lowered as the operation it wraps
            wrapped = module.original if isinstance(module.original, nn.Module) else None
            self.visit_table_op(node, wrapped, spec_for(module.kind), module.where)
            return
        spec = self.find_op(node, module)
        if spec is None:
            self.alias[node] = self.float_op(node, module).output
            return
        if spec.role == "identity":
            self.alias[node] = self.alias[self.tensor_args(node)[0]]
            return
        self.visit_table_op(node, module, spec)

    def visit_output(self, node: fx.Node) -> None:
        outs: Any = node.args[0] if isinstance(node.args[0], tuple | list) else (node.args[0],)
        for o in outs:
            name = self.alias[o]
            if self.edges[name] is not None:
                name = self.add(
                    QOp("dequantize", [name], f"{name}_dequantized", shape=self.shapes[name])
                ).output
            self.outputs.append(name)

    def visit_quantizer(self, node: fx.Node, module: FakeQuant) -> None:
        if not module.frozen or module.mode != "quantize":
            raise ValueError(
                f"activation quantizer {node.target} has no frozen (S, Z): the model was not "
                "calibrated and converted (zp.quantize_static, or zp.convert after QAT)"
            )
        qp = module.qparams()
        src = self.alias[node.args[0]]  # type: ignore[index]
        pending = self.producer.get(src)
        if pending is not None and pending.out_qparams is None and _requantizes(pending):
            pending.out_qparams = qp  # the producer writes straight onto this grid
            self.edges[src] = qp
            self.alias[node] = src
            self.sim_nodes[src] = node.name
            return
        kind = "quantize" if self.edges[src] is None else "requantize"
        self.alias[node] = self.add(
            QOp(kind, [src], node.name, qp, where=where_of(node), shape=self.shape(node))
        ).output

    def visit_table_op(
        self, node: fx.Node, module: nn.Module | None, spec: Any, where: str | None = None
    ) -> None:
        ins = [self.alias[a] for a in self.tensor_args(node)]
        if not ins:  # e.g. indexing the tuple a float op returned
            self.alias[node] = self.float_op(node, module).output
            return
        quantized = [self.edges[i] is not None for i in ins]
        if spec.kind == "channel_clip":
            self.visit_channel_clip(node, module, ins[0])
            return
        if spec.role == "clip":
            producer = self.producer.get(ins[0])
            if _fusable(producer, ins[0], self):
                assert producer is not None
                producer.clip = _clip_bounds(node, module, self.values)
                self.alias[node] = producer.output
                return
            if not quantized[0]:
                self.alias[node] = self.float_op(node, module).output
                return
            spec = self.find_op_kind("relu_codes" if _is_relu(node, module) else "table")
        if spec.role == "shared" and not (quantized and quantized[0]):
            self.alias[node] = self.float_op(node, module).output
            return
        if spec.role in ("layer", "requant") and not all(quantized):
            self.alias[node] = self.float_op(node, module).output
            return
        ctx = LowerContext(node, module, self.root, ins, self.edges, self.shapes,
                           self.shape(node), where or where_of(node), self.values)  # fmt: skip
        attrs = spec.lower(ctx) if spec.lower is not None else {}
        out_qp = self.edges[ins[0]] if spec.role == "shared" else None
        op = QOp(spec.kind, ins, node.name, out_qp, attrs=attrs, where=ctx.where,
                 shape=ctx.shape, node=node, module=module)  # fmt: skip
        self.alias[node] = self.add(op).output

    def visit_channel_clip(self, node: fx.Node, module: nn.Module | None, edge: str) -> None:
        """A per-channel clip [lᵢ, uᵢ] (`ChannelClip`). After a layer that fuses clips, followed
        by a quantizer G: the layer requantizes onto G with the envelope [min lᵢ, max uᵢ] as
        its clamp, and the per-channel clamp runs on those values, re-quantized by G — exact,
        since Q_G is monotone: Q_G(clamp(y, lᵢ, uᵢ)) = clamp(Q_G(y), Q_G(lᵢ), Q_G(uᵢ)). Else it
        runs in float."""
        producer = self.producer.get(edge)
        users = list(node.users)
        quantizer = (
            self.root.get_submodule(str(users[0].target))
            if len(users) == 1 and users[0].op == "call_module"
            else None
        )
        if (
            _fusable(producer, edge, self)
            and isinstance(quantizer, FakeQuant)
            and quantizer.frozen
            and quantizer.mode == "quantize"
        ):
            assert producer is not None
            qp = quantizer.qparams()
            producer.clip = _clip_bounds(node, module, self.values)
            producer.out_qparams = qp
            self.edges[edge] = qp  # the simulation's layer node itself holds these codes
        self.alias[node] = self.float_op(node, module).output

    def prune_python(self) -> None:
        """Keep only the Python-value ops a float fallback reads (directly or through others)."""
        by_output = {op.output: op for op in self.ops}
        needed: set[str] = set()
        stack = [e for op in self.ops if op.kind == "float"
                 for e in op.attrs.get("node_edges", {}).values()]  # fmt: skip
        while stack:
            edge = stack.pop()
            op = by_output.get(edge)
            if op is not None and op.kind == "python" and edge not in needed:
                needed.add(edge)
                stack.extend(op.attrs.get("node_edges", {}).values())
        self.ops = [op for op in self.ops if op.kind != "python" or op.output in needed]

    def find_op_kind(self, kind: str) -> Any:
        from zeropoint.ops.table import spec_for

        return spec_for(kind)

    def finish(self) -> None:
        from zeropoint.ops.table import spec_for

        self.prune_python()
        for i, op in enumerate(self.ops):
            if op.kind in _BUILTIN:
                continue
            spec = spec_for(op.kind)
            if spec.role == "layer" and op.out_qparams is None and self.float_output(op):
                continue  # int32 accumulator → float (`Dequantizer`): the model's output
            if spec.role in ("layer", "requant") and op.out_qparams is None:
                # no quantizer followed it (e.g. it feeds only float code): it runs in float,
                # with the clip that was fused into it (e.g. the model's final clamp)
                assert op.node is not None
                self.ops[i] = QOp("float", op.inputs, op.output, clip=op.clip,
                                  attrs={"node_edges": self.node_edges(op.node)},
                                  where=op.where, shape=op.shape, node=op.node,
                                  module=op.module)  # fmt: skip
                self.producer[op.output] = self.ops[i]
                continue
            if spec.finalize is not None and self.on_float_grid(op):
                # tables index the 256 codes of an integer grid: on an fp8 / fp4 grid the
                # operation runs in float between DequantizeLinear and QuantizeLinear
                assert op.node is not None
                self.ops[i] = QOp("float", op.inputs, op.output, op.out_qparams,
                                  attrs=self.float_op_attrs(op.node), where=op.where,
                                  shape=op.shape, node=op.node, module=op.module)  # fmt: skip
                self.producer[op.output] = self.ops[i]
                continue
            if spec.finalize is not None:
                spec.finalize(op, QGraph(self.ops, self.edges, self.inputs, self.outputs,
                                         self.shapes))  # fmt: skip

    def float_output(self, op: QOp) -> bool:
        """A layer with integer weights and quantized inputs whose value only leaves the model
        (``quantize_outputs=False``): it keeps its integer kernel and dequantizes the
        accumulator."""
        return (
            op.output in self.outputs
            and "w_format" not in op.attrs
            and all(self.edges.get(e) is not None for e in op.inputs)
            and not any(op.output in other.inputs for other in self.ops)
        )

    def on_float_grid(self, op: QOp) -> bool:
        """Does ``op`` read or write a float-format (fp8 / fp4) grid?"""
        grids = [self.edges.get(e) for e in op.inputs] + [op.out_qparams]
        return any(g is not None and g.scheme.float_format is not None for g in grids)


_BUILTIN = ("quantize", "requantize", "dequantize", "float", "python", "constant")


def _requantizes(op: QOp) -> bool:
    """Does ``op`` write its output onto a grid of its own (and absorb the next quantizer)?"""
    if op.kind in ("quantize", "requantize"):
        return False
    if op.kind in _BUILTIN:
        return False
    from zeropoint.ops.table import spec_for

    return spec_for(op.kind).role in ("layer", "requant")


def _fusable(producer: QOp | None, edge: str, builder: _Builder) -> bool:
    """A clip fuses into the op producing its input when that op requantizes, has no output
    grid yet (its quantizer comes after the clip), accepts a clip, and the clip is its only
    user."""
    if producer is None or producer.out_qparams is not None or producer.clip is not None:
        return False
    if producer.kind in _BUILTIN:
        return False
    from zeropoint.ops.table import spec_for

    if not spec_for(producer.kind).fuses_clip:
        return False
    return producer.node is None or len(producer.node.users) == 1


def _is_relu(node: fx.Node, module: nn.Module | None) -> bool:
    lo, hi = _clip_bounds(node, module, {})
    return lo == 0.0 and hi == float("inf")


def _clip_bounds(
    node: fx.Node, module: nn.Module | None, values: dict[fx.Node, Any]
) -> tuple[float, float]:
    """(lo, hi) in real units of a ReLU / ReLU6 / hardtanh / clamp node (±∞ where open)."""
    from zeropoint.ops.table import clip_bounds

    return clip_bounds(node, module, values)


def constant_arg(value: Any) -> Any:
    """``value`` unless it is an fx node (then None): for attributes that must be static."""
    return None if isinstance(value, fx.Node) else value


__all__ = ["LowerContext", "QGraph", "QOp", "build_qgraph", "constant_arg", "where_of"]
