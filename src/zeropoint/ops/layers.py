"""Weighted layers: Linear, Conv1d/2d (groups, depthwise, stride, dilation, every padding mode),
ConvTranspose1d/2d and the per-channel affine a batch norm becomes when it cannot be folded.

    acc = Σ (q_x − Z_x)·q_w + q_b            (int32; q_b at S_b = S_x·S_w, `zeropoint.bias`)
    q_y = clamp(Z_y + round(acc·M), clip)    M = S_x·S_w / S_y as M0·2^−n (`engine.requantize`)

Lowering stores the integer weight and bias codes (computed once, from `QuantMixin.weight_qparams`
— the same scales the simulation uses); 1-D layers run on the 2-D kernels with a unit height.
Padding other than zeros (reflect, replicate, circular) and asymmetric "same" padding copy codes
before a convolution without padding, exactly as torch pads before its convolution.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from zeropoint.bias import bias_safe_weight_qparams, integer_bias, quantize_bias
from zeropoint.engine import conv as conv_k
from zeropoint.engine import conv_transpose as convt_k
from zeropoint.engine import kernels as lin_k
from zeropoint.functional import quantize_int
from zeropoint.nn.convbn import QuantConvBn2d
from zeropoint.nn.modules import (
    QuantChannelAffine,
    QuantConv1d,
    QuantConv2d,
    QuantConvTranspose1d,
    QuantConvTranspose2d,
    QuantLinear,
    QuantMixin,
    frozen_qparams,
)
from zeropoint.nn.quantizers import FakeQuant
from zeropoint.ops.common import float_refusal, grid, layer_requantizer
from zeropoint.ops.movement import pad_codes
from zeropoint.ops.spec import Kernel, OpSpec
from zeropoint.qparams import QParams

if TYPE_CHECKING:
    from zeropoint.lowering import LowerContext, QGraph, QOp


def _tuple(v: Any, n: int) -> list[int]:
    return [int(v)] * n if isinstance(v, int) else [int(i) for i in v]


def layer_attrs(
    m: QuantMixin, x_qp: QParams | None, where: str, output_padding: list[int] | None = None
) -> dict[str, Any]:
    """Everything a layer's kernel needs: integer weight and bias codes (with the scales the
    simulation uses) and the layer's geometry."""
    base = frozen_qparams(m.weight_quant)
    if base is None and not isinstance(m.weight_quant, FakeQuant):
        m.weight_qparams()  # a custom weight quantizer says why it has no single (S, Z)
    if base is None:
        raise ValueError(
            f"layer {where}: its weight quantizer is not frozen (convert the model first)"
        )
    sim_x = m.input_qparams()
    if sim_x is None or x_qp is None or not torch.equal(sim_x.scale, x_qp.scale):
        raise ValueError(
            f"layer {where}: its simulation does not see the grid of its input, so its bias "
            "would differ from the integer program's (re-run zp.prepare / zp.quantize_static)"
        )
    bias = m._parameters.get("bias")
    if not integer_bias(x_qp, base):
        return {**_float_attrs(m, base, bias, where), **_geometry(m, output_padding)}
    w_qp = bias_safe_weight_qparams(base, bias, x_qp, where)
    scheme = w_qp.scheme
    if scheme.bits > 8 or not scheme.symmetric or int(w_qp.zero_point.abs().max()) != 0:
        raise ValueError(
            f"layer {where}: the integer engine needs symmetric ≤ 8-bit weights, got {scheme}"
        )
    if scheme.group_size is not None:
        raise ValueError(f"layer {where}: group-wise weights have no integer kernel")
    q_w = quantize_int(m.float_weight.detach(), w_qp).to(torch.int8)
    attrs: dict[str, Any] = {"q_w": q_w, "w_scale": w_qp.scale.clone(), "w_axis": w_qp.axis}
    if bias is not None:
        attrs["q_b"] = quantize_bias(bias, x_qp, w_qp)[1]
    return {**attrs, **_geometry(m, output_padding)}


def _float_attrs(m: QuantMixin, w_qp: QParams, bias: Tensor | None, where: str) -> dict[str, Any]:
    """A layer on a float-format grid (its weights or its input fp8 / fp4): the weight's codes
    under its own scheme (float bit patterns, or integers beside a float input), its scale, and
    the float bias — for the ONNX export; the integer engine refuses them (``w_format``)."""
    if w_qp.scheme.group_size is not None:
        raise ValueError(
            f"layer {where}: group-wise weights beside a float format are not exported"
        )
    codes = quantize_int(m.float_weight.detach(), w_qp)
    fmt = w_qp.scheme.float_format or f"int{w_qp.scheme.bits} beside a float input"
    attrs: dict[str, Any] = {"w_codes": codes, "w_scale": w_qp.scale.clone(), "w_axis": w_qp.axis,
                             "w_zero": w_qp.zero_point.clone(), "w_format": fmt,
                             "w_scheme": asdict(w_qp.scheme)}  # fmt: skip
    if bias is not None:
        attrs["b"] = bias.detach().float().clone()
    return attrs


def _int_weight(op: QOp) -> Tensor:
    """The int8 weight codes of a layer; a float-format layer has no integer kernel."""
    if "w_format" in op.attrs:
        raise ValueError(float_refusal(f"layer {op.where}", str(op.attrs["w_format"])))
    return op.attrs["q_w"]  # type: ignore[no-any-return]


def _geometry(m: Any, output_padding: list[int] | None) -> dict[str, Any]:
    if isinstance(m, QuantLinear | QuantChannelAffine):
        return {}
    dims = 1 if isinstance(m, QuantConv1d | QuantConvTranspose1d) else 2
    kernel, dilation = _tuple(m.kernel_size, dims), _tuple(m.dilation, dims)
    geometry = {"dims": dims, "stride": _tuple(m.stride, dims), "dilation": dilation,
                "groups": int(m.groups)}  # fmt: skip
    if isinstance(m, QuantConvTranspose1d | QuantConvTranspose2d):
        pads = output_padding if output_padding is not None else _tuple(m.output_padding, dims)
        return {**geometry, "padding": _tuple(m.padding, dims), "output_padding": pads}
    if isinstance(m.padding, str):  # "same" / "valid": torch pads total d·(k−1), extra at the end
        total = [d * (k - 1) if m.padding == "same" else 0 for d, k in zip(dilation, kernel)]
        begin = [t // 2 for t in total]
        end = [t - b for t, b in zip(total, begin)]
    else:
        begin = end = _tuple(m.padding, dims)
    return {**geometry, "pads": begin + end, "pad_mode": str(m.padding_mode)}


def _lower_layer(ctx: LowerContext) -> dict[str, Any]:
    m = ctx.module
    assert isinstance(m, QuantMixin)
    pads = (
        _output_padding(ctx) if isinstance(m, QuantConvTranspose1d | QuantConvTranspose2d) else None
    )
    return layer_attrs(m, ctx.in_qparams(), ctx.where, pads)


def _output_padding(ctx: LowerContext) -> list[int]:
    """The output padding torch used (explicit, or implied by an output_size argument)."""
    m: Any = ctx.module
    dims = len(ctx.shape) - 2
    in_shape = ctx.shapes[ctx.inputs[0]]
    pads = []
    for i in range(dims):
        s, p, d = _tuple(m.stride, dims)[i], _tuple(m.padding, dims)[i], _tuple(m.dilation, dims)[i]
        k = _tuple(m.kernel_size, dims)[i]
        natural = (in_shape[2 + i] - 1) * s - 2 * p + d * (k - 1) + 1
        pads.append(int(ctx.shape[2 + i]) - natural)
    return pads


def deployed_layer(
    m: QuantMixin, x_qp: QParams, y_qp: QParams, clip: tuple[float, float] | None, rounding: str
) -> Kernel:
    """The integer program's kernel for one simulated layer (codes in, codes out): what the
    converted simulation runs at inference, so it computes what is deployed, code for code."""
    from zeropoint.lowering import QGraph, QOp

    spec = next(sp for sp in SPECS if type(m) in sp.modules)
    where = type(m).__name__
    op = QOp(spec.kind, ["x"], "y", y_qp, clip, layer_attrs(m, x_qp, where), where)
    graph = QGraph([op], {"x": x_qp, "y": y_qp}, ["x"], ["y"], {"x": (), "y": ()})
    assert spec.kernel is not None
    return spec.kernel(op, graph, rounding)


# ----------------------------------------------------------------------------- engine


def _requantizer(op: QOp, graph: QGraph, channels: int, rounding: str) -> Any:
    s_x = grid(graph.edges[op.inputs[0]], f"input of {op.where}")[0]
    return layer_requantizer(op, s_x, op.attrs["w_scale"], channels, rounding)


def _conv_kernel(op: QOp, graph: QGraph, rounding: str) -> Kernel:
    a = op.attrs
    dims = int(a["dims"])
    q_w = _int_weight(op)
    z_x = grid(graph.edges[op.inputs[0]], f"input of {op.where}")[1]
    rq = _requantizer(op, graph, q_w.shape[0], rounding)
    pads, mode = list(a["pads"]), str(a["pad_mode"])
    begin, end = pads[:dims], pads[dims:]
    native = mode == "zeros" and begin == end
    w4 = q_w if dims == 2 else q_w.unsqueeze(2)
    stride, dilation = list(a["stride"]), list(a["dilation"])
    if dims == 1:
        stride, dilation = [1, *stride], [1, *dilation]
    padding = (begin if dims == 2 else [0, *begin]) if native else [0, 0]
    weights = conv_k.prepare_conv2d(
        w4, a.get("q_b"), tuple(stride), tuple(padding), tuple(dilation), int(a["groups"])
    )  # type: ignore[arg-type]
    torch_pad = [p for i in reversed(range(dims)) for p in (begin[i], end[i])]

    def run(x: list[Tensor]) -> Tensor:
        q = x[0] if native else pad_codes(x[0], torch_pad, mode, z_x)
        q4 = q if dims == 2 else q.unsqueeze(2)
        y = conv_k.conv2d_nchw(q4, z_x, weights, rq)
        return y if dims == 2 else y.squeeze(2)

    return run


def _conv_transpose_kernel(op: QOp, graph: QGraph, rounding: str) -> Kernel:
    a = op.attrs
    dims = int(a["dims"])
    q_w = _int_weight(op)
    groups = int(a["groups"])
    z_x = grid(graph.edges[op.inputs[0]], f"input of {op.where}")[1]
    rq = _requantizer(op, graph, q_w.shape[1] * groups, rounding)

    def pair(key: str, fill: int) -> tuple[int, int]:
        v = [int(i) for i in a[key]]
        return (v[0], v[1]) if dims == 2 else (fill, v[0])

    w4 = q_w if dims == 2 else q_w.unsqueeze(2)
    weights = convt_k.prepare_conv_transpose2d(
        w4, a.get("q_b"), pair("stride", 1), pair("padding", 0), pair("output_padding", 0),
        groups, pair("dilation", 1),
    )  # fmt: skip

    def run(x: list[Tensor]) -> Tensor:
        q4 = x[0] if dims == 2 else x[0].unsqueeze(2)
        y = convt_k.conv_transpose2d_nchw(q4, z_x, weights, rq)
        return y if dims == 2 else y.squeeze(2)

    return run


def _linear_kernel(op: QOp, graph: QGraph, rounding: str) -> Kernel:
    q_w = _int_weight(op)
    z_x = grid(graph.edges[op.inputs[0]], f"input of {op.where}")[1]
    rq = _requantizer(op, graph, q_w.shape[0], rounding)
    weights = lin_k.prepare_linear(q_w, op.attrs.get("q_b"))
    return lambda x: lin_k.linear(x[0], z_x, weights, rq)


def _affine_kernel(op: QOp, graph: QGraph, rounding: str) -> Kernel:
    """acc_c = q_w,c·(q_x − Z_x) + q_b,c per channel (dimension 1), then the requantizer."""
    q_w = _int_weight(op)
    z_x = grid(graph.edges[op.inputs[0]], f"input of {op.where}")[1]
    rq = _requantizer(op, graph, q_w.shape[0], rounding)
    w = q_w.to(torch.int64)
    b = op.attrs["q_b"].to(torch.int64)

    def run(x: list[Tensor]) -> Tensor:
        q = x[0]
        view = [1, -1] + [1] * (q.dim() - 2)
        acc = (q.to(torch.int64) - z_x) * w.view(view) + b.view(view)
        return rq.apply(acc, 1, bound=None)

    return run


# ----------------------------------------------------------------------------- ONNX


def _weight_inputs(
    b: Any, op: QOp, graph: QGraph, x: str, transposed: bool = False, spatial: int = 0
) -> list[str]:
    """[x, DQ(weight codes), DQ(int32 bias codes)]; ``transposed``: a 2-D weight as (K, N), its
    per-output-channel scales on axis 1 (MatMul's layout). A float-format layer's float bias
    is shaped (C, 1 × ``spatial``) to be added after the layer (`_layer_node`)."""
    from zeropoint.bias import bias_qparams
    from zeropoint.qparams import QParams, Scheme

    a = op.attrs
    if "w_format" in a:
        return _float_weight_inputs(b, op, x, transposed, spatial)
    scale: Tensor = a["w_scale"]
    codes: Tensor = a["q_w"]
    axis = a["w_axis"]
    scheme = Scheme(bits=8, symmetric=True, axis=axis)
    qp = QParams(scale, torch.zeros_like(scale, dtype=torch.int32), scheme, axis)
    stored_qp = qp
    if transposed:
        codes = codes.t().contiguous()
        if axis is not None:
            stored_qp = QParams(qp.scale, qp.zero_point, scheme.with_(axis=1), 1)
    inputs = [x, b.dq_const(codes, stored_qp, f"{op.output}_weight", b.int_type(qp))]
    if "q_b" in a:
        x_qp = graph.edges[op.inputs[0]]
        assert x_qp is not None
        inputs.append(b.dq_const(a["q_b"], bias_qparams(x_qp, qp), f"{op.output}_bias", b.INT32))
    return inputs


def _float_weight_inputs(b: Any, op: QOp, x: str, transposed: bool, spatial: int) -> list[str]:
    """[x, DQ(weight), float bias] for a layer on a float-format grid (`_float_attrs`): the
    weight behind a DequantizeLinear of its own type (float8, or int8 beside a float input),
    or, where ONNX Runtime has no kernel for the type (fp4), its dequantized values."""
    from zeropoint.functional import dequantize_int
    from zeropoint.qparams import QParams, Scheme

    a = op.attrs
    scheme, axis = Scheme(**a["w_scheme"]), a["w_axis"]
    qp = QParams(a["w_scale"], a["w_zero"], scheme, axis)
    codes: Tensor = a["w_codes"]
    stored_qp = qp
    if transposed:
        codes = codes.t().contiguous()
        if axis is not None:
            stored_qp = QParams(qp.scale, qp.zero_point, scheme.with_(axis=1), 1)
    base = f"{op.output}_weight"
    if b.runs_type(scheme):
        weight = b.dq_const(codes, stored_qp, base, b.int_type(qp))
    else:
        values = dequantize_int(codes, stored_qp).numpy()
        weight = b.const(f"{base}_dequantized", values.astype(np.float32))
    inputs = [x, weight]
    if "b" in a:
        bias = a["b"].reshape(-1, *[1] * spatial).numpy().astype(np.float32)
        inputs.append(b.const(f"{op.output}_bias", bias))
    return inputs


def _layer_node(b: Any, kind: str, inputs: list[str], op: QOp, **attrs: Any) -> str:
    """The layer's node. A float-format layer adds its float bias after it (an Add of the bias
    shaped (C, 1, ...)): given as the node's bias input, ONNX Runtime's WeightBiasQuantization
    (1.32) would round it to int32 codes at S_x·S_w — codes that fp8 scales overflow — while
    the simulation adds the float bias."""
    if "w_format" not in op.attrs or len(inputs) < 3:
        return b.node(kind, inputs, **attrs)  # type: ignore[no-any-return]
    return b.node("Add", [b.node(kind, inputs[:2], **attrs), inputs[2]])  # type: ignore[no-any-return]


def _emit_conv(b: Any, op: QOp, graph: QGraph, ins: list[str]) -> str:
    a = op.attrs
    dims = int(a["dims"])
    pads, mode = list(a["pads"]), str(a["pad_mode"])
    x = ins[0]
    if mode != "zeros":  # pad the codes (DQ → Pad → Q: an integer Pad in ONNX Runtime)
        onnx_mode = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}[mode]
        pad_all = np.array([0, 0, *pads[:dims], 0, 0, *pads[dims:]], dtype=np.int64)
        x = b.node("Pad", [x, b.const("pads", pad_all)], mode=onnx_mode)
        x = b.qdq(x, graph.edges[op.inputs[0]], b.name(f"{op.output}_padded"))
        pads = [0] * (2 * dims)
    attrs = {"strides": a["stride"], "dilations": a["dilation"], "group": a["groups"],
             "pads": pads}  # fmt: skip
    return _layer_node(b, "Conv", _weight_inputs(b, op, graph, x, spatial=dims), op, **attrs)


def _emit_conv_transpose(b: Any, op: QOp, graph: QGraph, ins: list[str]) -> str:
    a = op.attrs
    attrs = {"strides": a["stride"], "dilations": a["dilation"], "group": a["groups"],
             "pads": list(a["padding"]) * 2, "output_padding": a["output_padding"]}  # fmt: skip
    inputs = _weight_inputs(b, op, graph, ins[0], spatial=int(a["dims"]))
    return _layer_node(b, "ConvTranspose", inputs, op, **attrs)


def _emit_linear(b: Any, op: QOp, graph: QGraph, ins: list[str]) -> str:
    if len(graph.shapes[op.inputs[0]]) == 2:
        return _layer_node(b, "Gemm", _weight_inputs(b, op, graph, ins[0]), op, transB=1)
    inputs = _weight_inputs(b, op, graph, ins[0], transposed=True)
    y = b.node("MatMul", inputs[:2])
    return y if len(inputs) < 3 else b.node("Add", [y, inputs[2]])  # type: ignore[no-any-return]


def _emit_affine(b: Any, op: QOp, graph: QGraph, ins: list[str]) -> str:
    w, bias = _weight_inputs(b, op, graph, ins[0])[1:]
    rank = len(graph.shapes[op.inputs[0]])
    shape = b.const("channel_shape", np.array([-1] + [1] * (rank - 2), dtype=np.int64))
    w = b.node("Reshape", [w, shape])
    y = b.node("Mul", [ins[0], w])
    return b.node("Add", [y, b.node("Reshape", [bias, shape])])  # type: ignore[no-any-return]


SPECS = [
    OpSpec("linear", "layer", modules=(QuantLinear,), lower=_lower_layer, kernel=_linear_kernel,
           emit=_emit_linear, fuses_clip=True, doc="y = x Wᵀ + b"),
    OpSpec("conv1d", "layer", modules=(QuantConv1d,), lower=_lower_layer,
           kernel=_conv_kernel, emit=_emit_conv, fuses_clip=True, doc="1-D convolution"),
    OpSpec("conv2d", "layer", modules=(QuantConv2d, QuantConvBn2d), lower=_lower_layer,
           kernel=_conv_kernel, emit=_emit_conv, fuses_clip=True, doc="2-D convolution"),
    OpSpec("conv_transpose1d", "layer", modules=(QuantConvTranspose1d,),
           lower=_lower_layer, kernel=_conv_transpose_kernel,
           emit=_emit_conv_transpose, fuses_clip=True, doc="1-D transposed convolution"),
    OpSpec("conv_transpose2d", "layer", modules=(QuantConvTranspose2d,),
           lower=_lower_layer, kernel=_conv_transpose_kernel,
           emit=_emit_conv_transpose, fuses_clip=True, doc="2-D transposed convolution"),
    OpSpec("channel_affine", "layer", modules=(QuantChannelAffine,), lower=_lower_layer,
           kernel=_affine_kernel, emit=_emit_affine, fuses_clip=True,
           doc="y = w_c·x + b_c per channel (a batch norm that could not be folded)"),
]  # fmt: skip

#: float layer type → what the instrumentation swaps in (the layers of this table)
LAYER_TYPES: tuple[type[nn.Module], ...] = tuple(
    t for s in SPECS for t in s.modules if t not in (QuantChannelAffine, QuantConvBn2d)
)
