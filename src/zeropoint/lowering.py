"""From a converted (simulated) model to a list of quantized operations: what lowering to the
integer engine and export to ONNX both read, so that neither re-derives a scale on its own.

Every tensor edge gets either QParams (it lives on an integer grid) or None (it is float). The
activation quantizers of the simulation are absorbed into the op that produces their input:

    conv → relu → act_quant   becomes   QOp("conv2d", act="relu", out=(S_y, Z_y))
    add  → relu → act_quant   becomes   QOp("add",    act="relu", out=(S_y, Z_y))
    placeholder → act_quant   becomes   QOp("quantize")
    maxpool / flatten / view  keep their input's (S, Z)
    anything else             QOp("float"): runs the original torch op on dequantized inputs

Shapes come from running the graph once on the example input (torch.fx ShapeProp).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from zeropoint.functional import quantize_int
from zeropoint.nn.modules import (
    QuantConv1d,
    QuantConv2d,
    QuantConvTranspose2d,
    QuantLinear,
    QuantMixin,
)
from zeropoint.nn.quantizers import FakeQuant
from zeropoint.qparams import QParams, Scheme
from zeropoint.workflows import graph as g
from zeropoint.workflows.graph import state_of


@dataclass
class QOp:
    """One operation: ``kind``, input edge names, output edge name, attributes, and the
    quantization parameters of its output (None: float output)."""

    kind: str
    inputs: list[str]
    output: str
    out_qparams: QParams | None = None
    act: str | None = None  # fused activation: "relu", "relu6" or None
    attrs: dict[str, Any] = field(default_factory=dict)
    module: nn.Module | None = None
    node: fx.Node | None = None
    shape: tuple[int, ...] = ()


@dataclass
class QGraph:
    """The operations in execution order, and the qparams of every edge (None: float)."""

    ops: list[QOp]
    edges: dict[str, QParams | None]
    inputs: list[str]
    outputs: list[str]
    shapes: dict[str, tuple[int, ...]]

    @property
    def fallbacks(self) -> list[QOp]:
        return [op for op in self.ops if op.kind == "float"]


LAYER_KINDS: dict[type[nn.Module], str] = {
    QuantConv2d: "conv2d",
    QuantConv1d: "conv1d",
    QuantConvTranspose2d: "conv_transpose2d",
    QuantLinear: "linear",
}


#: ops whose integer kernel writes its output on a new grid (they absorb the next quantizer)
REQUANTIZING = {*LAYER_KINDS.values(), "add", "cat", "avg_pool2d", "adaptive_avg_pool2d"}


def _act_kind(node: fx.Node, root: nn.Module) -> str | None:
    """'relu' or 'relu6' for the activations integer kernels fuse; None otherwise."""
    if node.op == "call_module":
        m = root.get_submodule(str(node.target))
        if isinstance(m, nn.ReLU):
            return "relu"
        if isinstance(m, nn.ReLU6):
            return "relu6"
        if isinstance(m, nn.Hardtanh) and (m.min_val, m.max_val) == (0.0, 6.0):
            return "relu6"
        return None
    if node.op == "call_function" and node.target in (F.relu, torch.relu):
        return "relu"
    if node.op == "call_function" and node.target is F.relu6:
        return "relu6"
    if node.op == "call_method" and node.target in ("relu", "relu_"):
        return "relu"
    return None


def _shape(node: fx.Node) -> tuple[int, ...]:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else ()


def _pool_attrs(node: fx.Node, module: nn.Module | None) -> dict[str, Any]:
    if module is not None:
        keys = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "count_include_pad",
                "output_size")  # fmt: skip
        return {k: getattr(module, k) for k in keys if hasattr(module, k)}
    names = ["kernel_size", "stride", "padding", "dilation", "ceil_mode"]
    if node.target in (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d):
        names = ["output_size"]
    attrs = dict(zip(names, node.args[1:], strict=False))
    attrs.update(node.kwargs)
    return attrs


def build_qgraph(model: nn.Module, example_inputs: Any) -> QGraph:
    """Run the converted model's graph once on ``example_inputs`` for shapes and collect the
    quantized operations (see the module docstring)."""
    state = state_of(model)
    gm = state.graph_module
    if gm is None:
        raise ValueError(
            f"{type(model).__name__} was quantized at module boundaries ({state.reason}); "
            "lowering and export need a graph captured by torch.fx"
        )
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(*args)
    except Exception as exc:
        raise ValueError(
            f"the example input does not fit the model ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); shapes given: "
            f"{[tuple(a.shape) for a in args if isinstance(a, Tensor)]}"
        ) from exc
    return _collect(gm, model)


def _collect(gm: fx.GraphModule, root: nn.Module) -> QGraph:
    ops: list[QOp] = []
    edges: dict[str, QParams | None] = {}
    producer: dict[str, QOp] = {}  # edge name → the op whose output it is
    alias: dict[fx.Node, str] = {}  # fx node → the edge holding its value
    inputs: list[str] = []
    outputs: list[str] = []
    shapes: dict[str, tuple[int, ...]] = {}

    def edge(n: Any) -> str:
        return alias[n]

    def add(op: QOp) -> QOp:
        ops.append(op)
        edges[op.output] = op.out_qparams
        producer[op.output] = op
        shapes[op.output] = op.shape
        return op

    for node in gm.graph.nodes:
        module = root.get_submodule(str(node.target)) if node.op == "call_module" else None
        shape = _shape(node)
        if node.op == "placeholder":
            inputs.append(node.name)
            edges[node.name] = None
            shapes[node.name] = shape
            alias[node] = node.name
        elif node.op == "output":
            outs = node.args[0] if isinstance(node.args[0], tuple | list) else (node.args[0],)
            for o in outs:
                name = edge(o)
                if edges[name] is not None:
                    name = add(
                        QOp("dequantize", [name], f"{name}_dequantized", shape=shapes[name])
                    ).output
                outputs.append(name)
        elif node.op == "get_attr":
            raise ValueError(f"graph attribute {node.target} (a tensor constant) is not supported")
        elif isinstance(module, FakeQuant):
            if not module.frozen:
                raise ValueError(
                    f"activation quantizer {node.target} has no (S, Z): the model was not "
                    "calibrated and converted (zp.quantize_static, or zp.convert after QAT)"
                )
            qp = module.qparams()
            src = edge(node.args[0])
            pending = producer.get(src)
            if pending is not None and pending.out_qparams is None and pending.kind in REQUANTIZING:
                pending.out_qparams = qp  # the producer requantizes straight to this grid
                edges[src] = qp
                alias[node] = src
            else:
                alias[node] = add(QOp("quantize", [src], node.name, qp, shape=shape)).output
        elif isinstance(module, QuantMixin) and type(module) in LAYER_KINDS:
            attrs: dict[str, Any] = {"weight_qparams": module.weight_qparams()}
            for key in ("stride", "padding", "dilation", "groups", "output_padding"):
                if hasattr(module, key):
                    attrs[key] = getattr(module, key)
            alias[node] = add(
                QOp(LAYER_KINDS[type(module)], [edge(node.args[0])], node.name, attrs=attrs,
                    module=module, node=node, shape=shape)
            ).output  # fmt: skip
        elif _act_kind(node, root) is not None and _fusable(producer.get(edge(node.args[0])), node):
            op = producer[edge(node.args[0])]
            op.act = _act_kind(node, root)
            alias[node] = op.output
        elif g.is_merge(node):
            kind = "cat" if node.target is torch.cat else "add"
            ins = [edge(a) for a in g.tensor_inputs(node)]
            attrs = {"dim": node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)}
            alias[node] = add(QOp(kind, ins, node.name, attrs=attrs, node=node, shape=shape)).output
        elif g.is_avgpool(node, root):
            kind = "adaptive_avg_pool2d" if "adaptive" in str(node.target).lower() or isinstance(
                module, nn.AdaptiveAvgPool2d | nn.AdaptiveAvgPool1d) else "avg_pool2d"  # fmt: skip
            alias[node] = add(
                QOp(kind, [edge(node.args[0])], node.name, attrs=_pool_attrs(node, module),
                    module=module, node=node, shape=shape)
            ).output  # fmt: skip
        elif _is_identity(node, module):
            alias[node] = edge(node.args[0])
        elif g.is_passthrough(node, root) and (
            edges.get(edge(node.args[0])) is not None
            or _passthrough_kind(node, module, root)[0] in ("flatten", "reshape")
        ):
            # on a quantized edge: the op keeps its input's grid; a reshape also works on float
            src = edge(node.args[0])
            kind, attrs = _passthrough_kind(node, module, root)
            alias[node] = add(
                QOp(kind, [src], node.name, edges[src], attrs=attrs, module=module, node=node,
                    shape=shape)
            ).output  # fmt: skip
        else:
            ins = [edge(a) for a in g.tensor_inputs(node) if a in alias]
            alias[node] = add(
                QOp("float", ins, node.name, module=module, node=node, shape=shape)
            ).output
    return QGraph(ops, edges, inputs, outputs, shapes)


def _fusable(op: QOp | None, act_node: fx.Node) -> bool:
    """An activation fuses into the op producing its input when that op's output is still
    float (its quantizer comes after the activation) and the activation is its only user."""
    if op is None or op.out_qparams is not None or op.kind not in (*LAYER_KINDS.values(), "add"):
        return False
    return op.node is None or len(op.node.users) == 1


def _is_identity(node: fx.Node, module: nn.Module | None) -> bool:
    if isinstance(module, nn.Identity | nn.Dropout):
        return True
    return node.op == "call_function" and node.target is F.dropout


def _passthrough_kind(
    node: fx.Node, module: nn.Module | None, root: nn.Module
) -> tuple[str, dict[str, Any]]:
    if isinstance(module, nn.MaxPool2d) or node.target is F.max_pool2d:
        return "max_pool2d", _pool_attrs(node, module)
    if isinstance(module, nn.Flatten):
        return "flatten", {"start_dim": module.start_dim, "end_dim": module.end_dim}
    if node.target is torch.flatten or (node.op == "call_method" and node.target == "flatten"):
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return "flatten", {"start_dim": start, "end_dim": end}
    if _act_kind(node, root) is not None:
        return _act_kind(node, root) or "relu", {}
    if node.target is operator.getitem:
        return "float", {}
    return "reshape", {}


def quantize_bias(bias: Tensor, x_qp: QParams, w_qp: QParams) -> tuple[QParams, Tensor]:
    """The int32 bias of a layer: scale S_b = S_x·S_w (per output channel when the weights are),
    zero point 0, codes q_b = round(b / S_b) — so that the int32 accumulator Σ q_x·q_w + q_b is
    in units of S_x·S_w. S_b is rounded to float32, as ONNX stores it."""
    if x_qp.scale.dim() != 0:
        raise ValueError("a layer's input must be quantized per tensor")
    scale = (x_qp.scale.double() * w_qp.scale.double()).to(torch.float32).reshape(-1)
    per_channel = w_qp.scale.dim() > 0
    scheme = Scheme(bits=32, symmetric=True, axis=0 if per_channel else None)
    if not per_channel:
        scale = scale.reshape(())
    qp = QParams(
        scale, torch.zeros_like(scale, dtype=torch.int32), scheme, 0 if per_channel else None
    )
    return qp, quantize_int(bias.detach().float(), qp)


__all__ = ["LAYER_KINDS", "QGraph", "QOp", "build_qgraph", "quantize_bias"]
