"""Export a converted model to ONNX in the QDQ format that ONNX Runtime runs with int8 kernels.

Every quantized edge is written as QuantizeLinear → DequantizeLinear with the edge's (S, Z);
weights are int8 initializers behind a per-axis DequantizeLinear; biases are int32 initializers
with scale S_x·S_w (zero point 0), as ONNX Runtime's own quantizer writes them. ONNX Runtime's
graph optimizer then fuses DQ → Conv → (Relu) → Q into QLinearConv, DQ → Gemm → Q into QGemm,
DQ → Add → Q into QLinearAdd, and so on. The graph is built directly from the lowering IR
(`zeropoint.lowering`), the same one the integer engine runs, so the scales are not re-derived.

The file is written atomically: a failed export leaves no file behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from zeropoint.functional import quantize_int
from zeropoint.lowering import QGraph, QOp, build_qgraph, quantize_bias
from zeropoint.qparams import QParams
from zeropoint.report.files import atomic_path

OPSET = 21

_INT_TYPES = {
    (8, True): "INT8",
    (8, False): "UINT8",
    (16, True): "INT16",
    (16, False): "UINT16",
    (4, True): "INT4",
    (4, False): "UINT4",
}


def _numpy_types() -> dict[int, Any]:
    import ml_dtypes
    from onnx import TensorProto

    return {
        TensorProto.INT8: np.int8,
        TensorProto.UINT8: np.uint8,
        TensorProto.INT16: np.int16,
        TensorProto.UINT16: np.uint16,
        TensorProto.INT32: np.int32,
        TensorProto.INT4: ml_dtypes.int4,
        TensorProto.UINT4: ml_dtypes.uint4,
    }


try:
    _NUMPY_TYPES = _numpy_types()
except ImportError:  # onnx / ml_dtypes absent: export raises a clear error when called
    _NUMPY_TYPES = {}


def _elem_type(qp: QParams) -> int:
    from onnx import TensorProto

    bits = 8 if 4 < qp.scheme.bits <= 8 else qp.scheme.bits
    key = (bits, qp.scheme.signed)
    if key not in _INT_TYPES:
        raise ValueError(f"ONNX has no integer type for {qp.scheme} (supported: 4, 8 and 16 bits)")
    return int(getattr(TensorProto, _INT_TYPES[key]))


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.counter = 0

    def name(self, base: str) -> str:
        self.counter += 1
        return f"{base}_{self.counter}"

    def const(self, base: str, array: np.ndarray, elem_type: int | None = None) -> str:
        from onnx import helper, numpy_helper

        name = self.name(base)
        if elem_type is None:
            self.inits.append(numpy_helper.from_array(array, name))
            return name
        np_type = _NUMPY_TYPES.get(elem_type)
        if np_type is not None:  # raw little-endian bytes (packed for 4-bit types)
            self.inits.append(numpy_helper.from_array(array.astype(np_type), name))
        else:
            self.inits.append(
                helper.make_tensor(name, elem_type, list(array.shape), array.flatten().tolist())
            )
        return name

    def node(self, op: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        from onnx import helper

        out = output or self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name(op), **attrs))
        return out

    def qparams(self, qp: QParams, base: str) -> tuple[str, str]:
        scale = self.const(f"{base}_scale", qp.scale.numpy().astype(np.float32))
        zp = qp.zero_point.numpy().astype(np.int64)
        zero = self.const(f"{base}_zero_point", zp, _elem_type(qp))
        return scale, zero

    def qdq(self, x: str, qp: QParams, output: str) -> str:
        """QuantizeLinear → DequantizeLinear of a float edge onto the grid of ``qp``."""
        scale, zero = self.qparams(qp, output)
        axis = {} if qp.axis is None else {"axis": qp.axis}
        q = self.node("QuantizeLinear", [x, scale, zero], f"{output}_q", **axis)
        return self.node("DequantizeLinear", [q, scale, zero], output, **axis)

    def dq_const(self, codes: Tensor, qp: QParams, base: str, elem_type: int) -> str:
        """An integer initializer behind a DequantizeLinear (weights, biases)."""
        q = self.const(f"{base}_quantized", codes.numpy().astype(np.int64), elem_type)
        scale = self.const(f"{base}_scale", qp.scale.numpy().astype(np.float32))
        zp = qp.zero_point.numpy().astype(np.int64)
        zero = self.const(f"{base}_zero_point", zp, elem_type)
        attrs: dict[str, Any] = {} if qp.axis is None else {"axis": qp.axis}
        if qp.scheme.group_size is not None:
            attrs["block_size"] = qp.scheme.group_size
        return self.node("DequantizeLinear", [q, scale, zero], f"{base}_dequantized", **attrs)


def _pair(v: Any, n: int = 2) -> list[int]:
    return [int(v)] * n if isinstance(v, int) else [int(i) for i in v]


def _layer(b: _Builder, op: QOp, graph: QGraph, x: str) -> str:
    module: Any = op.module  # a QuantConv2d / QuantConvTranspose2d / QuantLinear
    assert module is not None
    wqp: QParams = op.attrs["weight_qparams"]
    weight = module.float_weight.detach()
    w = b.dq_const(quantize_int(weight, wqp), wqp, f"{op.output}_weight", _elem_type(wqp))
    inputs = [x, w]
    bias = getattr(module, "bias", None)
    x_qp = graph.edges[op.inputs[0]]
    if bias is not None:
        assert x_qp is not None
        b_qp, b_codes = quantize_bias(bias.detach(), x_qp, wqp)
        from onnx import TensorProto

        inputs.append(b.dq_const(b_codes, b_qp, f"{op.output}_bias", TensorProto.INT32))
    if op.kind == "linear":
        return b.node("Gemm", inputs, transB=1)
    attrs: dict[str, Any] = {
        "strides": _pair(module.stride),
        "dilations": _pair(module.dilation),
        "group": int(module.groups),
    }
    pad = _pair(module.padding)
    attrs["pads"] = pad + pad
    if op.kind == "conv_transpose2d":
        attrs["output_padding"] = _pair(module.output_padding)
        return b.node("ConvTranspose", inputs, **attrs)
    return b.node("Conv", inputs, **attrs)


def _pool_window(a: dict[str, Any]) -> dict[str, Any]:
    """ONNX pooling attributes from torch's (stride defaults to the kernel size)."""
    pad = _pair(a.get("padding", 0))
    return {
        "kernel_shape": _pair(a["kernel_size"]),
        "strides": _pair(a.get("stride") or a["kernel_size"]),
        "pads": pad + pad,
        "ceil_mode": int(bool(a.get("ceil_mode", False))),
    }


def _emit(b: _Builder, op: QOp, graph: QGraph) -> None:
    ins = op.inputs
    kind = op.kind
    if kind == "quantize":
        assert op.out_qparams is not None
        b.qdq(ins[0], op.out_qparams, op.output)
        return
    if kind == "dequantize":
        b.node("Identity", [ins[0]], op.output)
        return
    if kind in ("conv2d", "conv_transpose2d", "linear"):
        y = _layer(b, op, graph, ins[0])
    elif kind == "add":
        y = b.node("Add", ins)
    elif kind == "cat":
        y = b.node("Concat", ins, axis=int(op.attrs["dim"]))
    elif kind == "max_pool2d":
        dilations = _pair(op.attrs.get("dilation", 1))
        y = b.node("MaxPool", ins, **_pool_window(op.attrs), dilations=dilations)
    elif kind == "avg_pool2d":
        include_pad = int(bool(op.attrs.get("count_include_pad", True)))
        y = b.node("AveragePool", ins, **_pool_window(op.attrs), count_include_pad=include_pad)
    elif kind == "adaptive_avg_pool2d":
        if _pair(op.attrs.get("output_size", 1)) != [1, 1]:
            raise ValueError(
                f"adaptive average pooling to {op.attrs['output_size']} is not exported"
            )
        y = b.node("GlobalAveragePool", ins)
    elif kind == "flatten":
        if op.attrs.get("end_dim", -1) not in (-1, len(graph.shapes[ins[0]]) - 1):
            y = b.node("Reshape", [ins[0], b.const("shape", np.array(op.shape, dtype=np.int64))])
        else:
            y = b.node("Flatten", ins, axis=int(op.attrs.get("start_dim", 1)))
    elif kind == "reshape":
        y = b.node("Reshape", [ins[0], b.const("shape", np.array(op.shape, dtype=np.int64))])
    elif kind in ("relu", "relu6"):
        y = ins[0]
    else:
        raise ValueError(
            f"operation {kind!r} ({op.node.format_node() if op.node is not None else op.output}) "
            "has no ONNX export: it runs in float in the simulation"
        )
    if op.act == "relu" or kind == "relu":
        y = b.node("Relu", [y])
    elif op.act == "relu6" or kind == "relu6":
        y = b.node(
            "Clip",
            [
                y,
                b.const("zero", np.array(0.0, np.float32)),
                b.const("six", np.array(6.0, np.float32)),
            ],
        )
    if op.out_qparams is None:
        b.node("Identity", [y], op.output)
    else:
        b.qdq(y, op.out_qparams, op.output)


def to_onnx_model(model: torch.nn.Module, example_inputs: Any) -> Any:
    """The QDQ onnx.ModelProto of a converted model (see the module docstring)."""
    import onnx
    from onnx import TensorProto, helper

    graph = build_qgraph(model, example_inputs)
    if graph.fallbacks:
        names = ", ".join(op.output for op in graph.fallbacks)
        raise ValueError(f"these operations run in float and have no QDQ export: {names}")
    b = _Builder()
    for op in graph.ops:
        _emit(b, op, graph)
    inputs = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", *graph.shapes[n][1:]])
        for n in graph.inputs
    ]
    outputs = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", *graph.shapes[n][1:]])
        for n in graph.outputs
    ]
    g = helper.make_graph(b.nodes, f"{type(model).__name__}_qdq", inputs, outputs, b.inits)
    m = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="zeropoint"
    )
    m.ir_version = min(m.ir_version, 10)
    onnx.checker.check_model(m)
    return m


def export_onnx(model: torch.nn.Module, path: str | Path, example_inputs: Any) -> Path:
    """Write the QDQ ONNX model of a converted model to ``path`` (atomically)."""
    try:
        import onnx
    except ImportError as exc:
        raise ImportError(
            "ONNX export needs the 'onnx' extra: pip install 'zeropoint[onnx]'"
        ) from exc
    proto = to_onnx_model(model, example_inputs)
    target = Path(path)
    with atomic_path(target) as tmp:
        onnx.save(proto, str(tmp))
    return target
