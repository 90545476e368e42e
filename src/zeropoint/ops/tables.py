"""Element-wise operations as tables, exact by construction (TFLite's approach for 8-bit inputs).

An element-wise function of one 8-bit input has 256 possible inputs, of two 8-bit inputs 65,536.
The integer engine therefore runs it as a lookup: lowering evaluates the model's own torch
operation on the real values of every input code — what the simulation feeds it — and quantizes
the results with the output quantizer's (S, Z), exactly as the simulation does:

    T[q] = Q_y( f( S_x·(q − Z_x) ) )                         sigmoid, tanh, hardswish, SiLU,
                                                             GELU, LeakyReLU, x + 3, x / 6, ...
    T[q_a, q_b] = Q_y( f( S_a·(q_a − Z_a), S_b·(q_b − Z_b) ) )  add, sub, mul (e.g. the
                                                             squeeze-excitation gate), div, max

so the engine's output is the simulation's, code for code. At run time it is one gather:
q_y = T[byte(q)] or T[256·byte(q_a) + byte(q_b)] (broadcasting like the op). A clip that follows
(ReLU, ReLU6, hardtanh, clamp) narrows the table's codes. In ONNX the standard operator is written
between DequantizeLinear and QuantizeLinear where one exists (ONNX Runtime fuses many into its
QLinear ops), otherwise the table itself as a Gather.
"""

from __future__ import annotations

import math
import operator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from zeropoint.nn.channel_clip import ChannelClip
from zeropoint.ops.common import byte_index, clip_codes, engine_dtype, gather, levels, table_codes
from zeropoint.ops.spec import Kernel, OpSpec

if TYPE_CHECKING:
    from zeropoint.lowering import QGraph, QOp

UNARY_MODULES: tuple[type[nn.Module], ...] = (
    nn.Sigmoid, nn.Tanh, nn.Hardsigmoid, nn.Hardswish, nn.SiLU, nn.GELU, nn.LeakyReLU, nn.ELU,
    nn.SELU, nn.CELU, nn.Softplus, nn.Mish, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid,
    nn.Hardshrink, nn.Softshrink, nn.Threshold,
)  # fmt: skip
UNARY_FUNCTIONS: tuple[Any, ...] = (
    torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.hardsigmoid, F.hardswish, F.silu, F.gelu,
    F.leaky_relu, F.elu, F.selu, F.celu, F.softplus, F.mish, F.softsign, F.tanhshrink,
    F.logsigmoid, F.hardshrink, F.softshrink, F.threshold, torch.abs, torch.neg, torch.exp,
    torch.erf, torch.sqrt, torch.square, torch.rsqrt, torch.reciprocal,
)  # fmt: skip
UNARY_METHODS = ("sigmoid", "tanh", "abs", "neg", "exp", "sqrt", "square", "rsqrt", "reciprocal")
BINARY_FUNCTIONS: tuple[Any, ...] = (
    operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub,
    torch.mul, torch.div, torch.maximum, torch.minimum, operator.iadd, operator.imul,
)  # fmt: skip
BINARY_METHODS = ("add", "sub", "mul", "div", "add_", "sub_", "mul_", "div_", "pow")
CLIP_MODULES: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
CLIP_FUNCTIONS: tuple[Any, ...] = (F.relu, torch.relu, F.relu6, F.hardtanh, torch.clamp, torch.clip)
CLIP_METHODS = ("relu", "relu_", "clamp", "clamp_", "clip")


def _node_args(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) or n)  # type: ignore[func-returns-value]
    return found


def _one_tensor(node: fx.Node, module: nn.Module | None) -> bool:
    return len(_node_args(node)) == 1


def _two_tensors(node: fx.Node, module: nn.Module | None) -> bool:
    return len(_node_args(node)) == 2


def _static_clip(node: fx.Node, module: nn.Module | None) -> bool:
    return len(_node_args(node)) == 1  # bounds are numbers, not tensors


def clip_bounds(
    node: fx.Node, module: nn.Module | None, values: dict[fx.Node, Any]
) -> tuple[float, float]:
    """(lo, hi) of a ReLU / ReLU6 / hardtanh / clamp node in real units (±∞ where open); of a
    `ChannelClip`, the envelope [min lᵢ, max uᵢ] of its per-channel bounds."""
    inf = math.inf
    if isinstance(module, ChannelClip):  # the envelope of its per-channel bounds
        return float(module.lower.min()), float(module.upper.max())
    if isinstance(module, nn.ReLU6):
        return 0.0, 6.0
    if isinstance(module, nn.Hardtanh):
        return float(module.min_val), float(module.max_val)
    if isinstance(module, nn.ReLU):
        return 0.0, inf
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    if name in ("relu", "relu_"):
        return 0.0, inf
    if name == "relu6":
        return 0.0, 6.0

    def arg(i: int, key: str, default: Any) -> Any:
        v = node.args[i] if i < len(node.args) else node.kwargs.get(key, default)
        return values.get(v, default) if isinstance(v, fx.Node) else v

    if name == "hardtanh":
        return float(arg(1, "min_val", -1.0)), float(arg(2, "max_val", 1.0))
    lo, hi = arg(1, "min", None), arg(2, "max", None)
    return (-inf if lo is None else float(lo)), (inf if hi is None else float(hi))


# ----------------------------------------------------------------------------- evaluation


def evaluate(op: QOp, tensors: list[Tensor]) -> Tensor:
    """The op's own torch operation on ``tensors`` in place of its tensor arguments (in order of
    appearance; other arguments keep their example values)."""
    node, module = op.node, op.module
    assert node is not None
    queue = list(tensors)

    def substitute(n: fx.Node) -> Any:
        return queue.pop(0)

    args = fx.node.map_arg(node.args, substitute)
    kwargs = fx.node.map_arg(node.kwargs, substitute)
    with torch.no_grad():
        if node.op == "call_module":
            assert module is not None
            return module(*args, **kwargs)  # type: ignore[no-any-return]
        if node.op == "call_method":
            self_arg, *rest = args
            return getattr(self_arg, str(node.target))(*rest, **kwargs)  # type: ignore[no-any-return]
        return node.target(*args, **kwargs)  # type: ignore[operator,no-any-return]


def _finalize_unary(op: QOp, graph: QGraph) -> None:
    qp = graph.edges[op.inputs[0]]
    assert qp is not None
    values = evaluate(op, [levels(qp)])
    op.attrs["table"] = table_codes(values.reshape(256), op)


def _finalize_binary(op: QOp, graph: QGraph) -> None:
    qa, qb = graph.edges[op.inputs[0]], graph.edges[op.inputs[1]]
    assert qa is not None and qb is not None
    values = evaluate(op, [levels(qa).view(256, 1), levels(qb).view(1, 256)])
    op.attrs["table"] = table_codes(values.expand(256, 256).reshape(-1), op)


def _plain_add(node: fx.Node, module: nn.Module | None) -> bool:
    """a + b of two tensors, without torch.add's alpha."""
    return bool(
        _two_tensors(node, module) and node.kwargs.get("alpha", 1) == 1 and len(node.args) <= 2
    )


def _lower_add(ctx: Any) -> dict[str, Any]:
    """Which operand ONNX Runtime's broadcasting loop treats as a scalar (its QLinearAdd
    rounds that case differently): "a", "b" or "none" (same shapes)."""
    a, b = (tuple(ctx.shapes[i]) for i in ctx.inputs[:2])
    if a == b:
        return {"scalar": "none"}
    return {"scalar": "b" if math.prod(b) < math.prod(a) else "a"}


def _r32(x: Tensor | float) -> Tensor:
    """Round float64 values to float32 (and back to float64 for exact further arithmetic)."""
    return torch.as_tensor(x, dtype=torch.float64).float().double()


def ort_add_table(qa: Any, qb: Any, op: QOp, scalar: str) -> Tensor:
    """q_y for every pair of codes as ONNX Runtime's AVX2 QLinearAdd computes it, bit for bit:
    r_a = fl32(S_a/S_y), r_b = fl32(S_b/S_y), F = fl32(Z_y − fl32(fl32(r_a·Z_a) + fl32(r_b·Z_b))),
    v = fma(q_a, r_a, fma(q_b, r_b, F)) in float32 (one rounding per fused multiply-add; float64
    holds each product and sum exactly), q_y = rne(v) saturated — or, where one operand is
    broadcast as a scalar, F' = fl32(F + fl32(q_s·r_s)) and v = fma(q, r, F')."""
    qy = op.out_qparams
    assert qy is not None
    ra = _r32(_r32(float(qa.scale)) / _r32(float(qy.scale)))
    rb = _r32(_r32(float(qb.scale)) / _r32(float(qy.scale)))
    za, zb, zy = int(qa.zero_point), int(qb.zero_point), int(qy.zero_point)
    fixed = _r32(_r32(float(zy)) - _r32(_r32(ra * za) + _r32(rb * zb)))
    ca = _codes_by_byte(qa).view(256, 1)
    cb = _codes_by_byte(qb).view(1, 256)
    if scalar == "b":
        v = _r32(ca * ra + _r32(fixed + _r32(cb * rb)))
    elif scalar == "a":
        v = _r32(cb * rb + _r32(fixed + _r32(ca * ra)))
    else:
        v = _r32(ca * ra + _r32(cb * rb + fixed))
    lo, hi = clip_codes(op)
    return v.round().clamp(lo, hi).to(engine_dtype(qy)).reshape(-1)


def _codes_by_byte(qp: Any) -> Tensor:
    """The code of each byte value, as float64 (byte 255 is −1 for int8)."""
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(engine_dtype(qp))
    return codes.to(torch.float64)


def _add_kernel(op: QOp, graph: QGraph, rounding: str) -> Kernel:
    """a + b as a table: ONNX Runtime's QLinearAdd arithmetic under "float32" requantization,
    the simulation's float sum otherwise."""
    qa, qb = graph.edges[op.inputs[0]], graph.edges[op.inputs[1]]
    assert qa is not None and qb is not None
    if rounding == "float32":
        table = ort_add_table(qa, qb, op, str(op.attrs.get("scalar", "none")))
    else:
        table = table_codes((levels(qa).view(256, 1) + levels(qb).view(1, 256)).reshape(-1), op)

    def run(x: list[Tensor]) -> Tensor:
        index = torch.add(x[1].view(torch.uint8), x[0].view(torch.uint8).to(torch.int32), alpha=256)
        return gather(table, index)

    return run


def _emit_add(b: Any, op: QOp, graph: QGraph, ins: list[str]) -> str:
    return b.node("Add", ins[:2])  # type: ignore[no-any-return]


def _unary_kernel(op: QOp, graph: QGraph, rounding: str) -> Kernel:
    table: Tensor = op.attrs["table"]
    return lambda x: gather(table, byte_index(x[0]))


def _binary_kernel(op: QOp, graph: QGraph, rounding: str) -> Kernel:
    table: Tensor = op.attrs["table"]

    def run(x: list[Tensor]) -> Tensor:
        index = torch.add(x[1].view(torch.uint8), x[0].view(torch.uint8).to(torch.int32), alpha=256)
        return gather(table, index)

    return run


# ----------------------------------------------------------------------------- ONNX


def emit_table(b: Any, op: QOp, graph: QGraph, ins: list[str]) -> str:
    """The table itself: codes of the input (QuantizeLinear, exact), Gather, DequantizeLinear."""
    from onnx import TensorProto

    in_qp, out_qp = graph.edges[op.inputs[0]], op.out_qparams
    assert in_qp is not None and out_qp is not None
    table: Tensor = op.attrs["table"]
    in_signed = engine_dtype(in_qp) == torch.int8
    by_code = torch.roll(table, 128) if in_signed else table  # index q + 128 for int8 codes
    s_in, z_in = b.qparams(in_qp, f"{op.output}_in")
    codes = b.node("QuantizeLinear", [ins[0], s_in, z_in])
    index = b.node("Cast", [codes], to=TensorProto.INT32)
    if in_signed:
        index = b.node("Add", [index, b.const("offset", np.array(128, dtype=np.int32))])
    lut = b.const("table", by_code.numpy().astype(np.int64), b.int_type(out_qp))
    out = b.node("Gather", [lut, index], axis=0)
    s_out, z_out = b.qparams(out_qp, f"{op.output}_out")
    return b.node("DequantizeLinear", [out, s_out, z_out])  # type: ignore[no-any-return]


def _const_args(op: QOp) -> list[Any]:
    node = op.node
    assert node is not None
    return [a for a in node.args if not isinstance(a, fx.Node)]


def _scalar_operand(op: QOp) -> tuple[float, bool] | None:
    """(c, tensor_first) for x ∘ c or c ∘ x with a Python number c; None otherwise."""
    node = op.node
    assert node is not None
    if len(node.args) < 2 or node.kwargs.get("alpha", 1) != 1:
        return None
    a, c = node.args[0], node.args[1]
    if isinstance(a, fx.Node) and isinstance(c, int | float):
        return float(c), True
    if isinstance(c, fx.Node) and isinstance(a, int | float):
        return float(a), False
    return None


_ARITH = {"add": "Add", "iadd": "Add", "add_": "Add", "sub": "Sub", "sub_": "Sub", "mul": "Mul",
          "imul": "Mul", "mul_": "Mul", "truediv": "Div", "div": "Div", "div_": "Div",
          "pow": "Pow", "maximum": "Max", "minimum": "Min"}  # fmt: skip


def _name(op: QOp) -> str:
    node = op.node
    assert node is not None
    if node.op == "call_module":
        return type(op.module).__name__.lower()
    if node.op == "call_method":
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target))


def _emit_unary(b: Any, op: QOp, graph: QGraph, ins: list[str]) -> str:
    """The standard ONNX operator of the function where one exists, else the table."""
    name, m, x = _name(op), op.module, ins[0]
    simple = {"sigmoid": "Sigmoid", "tanh": "Tanh", "abs": "Abs", "neg": "Neg", "exp": "Exp",
              "erf": "Erf", "sqrt": "Sqrt", "softsign": "Softsign", "hardswish": "HardSwish",
              "relu": "Relu", "relu_": "Relu"}  # fmt: skip
    if name in simple and not _const_args(op)[1:] and not (op.node and op.node.kwargs):
        return b.node(simple[name], [x])  # type: ignore[no-any-return]
    if name == "hardsigmoid":
        return b.node("HardSigmoid", [x], alpha=1.0 / 6.0, beta=0.5)  # type: ignore[no-any-return]
    if name == "silu":
        return b.node("Mul", [x, b.node("Sigmoid", [x])])  # type: ignore[no-any-return]
    if name == "gelu":
        approx = (
            m.approximate
            if isinstance(m, nn.GELU)
            else (op.node.kwargs.get("approximate", "none") if op.node else "none")
        )  # type: ignore[union-attr]
        return b.node("Gelu", [x], approximate=str(approx))  # type: ignore[no-any-return]
    if name in ("leakyrelu", "leaky_relu"):
        slope = (
            m.negative_slope if isinstance(m, nn.LeakyReLU) else (_const_args(op)[1:] or [0.01])[0]
        )
        return b.node("LeakyRelu", [x], alpha=float(slope))  # type: ignore[no-any-return]
    if name in ("relu6", "hardtanh", "clamp", "clamp_", "clip"):
        lo, hi = clip_bounds(op.node, m, {})  # type: ignore[arg-type]
        return emit_clip(b, x, lo, hi)
    scalar = _scalar_operand(op) if name in _ARITH else None
    if scalar is not None:
        c, tensor_first = scalar
        const = b.const("operand", np.array(c, dtype=np.float32))
        pair = [x, const] if tensor_first else [const, x]
        return b.node(_ARITH[name], pair)  # type: ignore[no-any-return]
    return emit_table(b, op, graph, ins)


def emit_clip(b: Any, x: str, lo: float, hi: float) -> str:
    """Relu for [0, ∞), else Clip(lo, hi) (an open end is left out)."""
    if lo == 0.0 and hi == math.inf:
        return b.node("Relu", [x])  # type: ignore[no-any-return]
    lo_name = "" if lo == -math.inf else b.const("clip_min", np.array(lo, dtype=np.float32))
    hi_name = "" if hi == math.inf else b.const("clip_max", np.array(hi, dtype=np.float32))
    return b.node("Clip", [x, lo_name, hi_name])  # type: ignore[no-any-return]


def _emit_binary(b: Any, op: QOp, graph: QGraph, ins: list[str]) -> str:
    name = _name(op)
    node = op.node
    if name in _ARITH and node is not None and node.kwargs.get("alpha", 1) == 1:
        return b.node(_ARITH[name], ins[:2])  # type: ignore[no-any-return]
    return _emit_pair_table(b, op, graph, ins)


def _emit_pair_table(b: Any, op: QOp, graph: QGraph, ins: list[str]) -> str:
    """The 65,536-entry table as a Gather at (q_a − qmin_a)·256 + (q_b − qmin_b)."""
    from onnx import TensorProto

    out_qp = op.out_qparams
    assert out_qp is not None
    table = op.attrs["table"].reshape(256, 256)
    index = None
    for i, edge in enumerate(op.inputs[:2]):
        qp = graph.edges[edge]
        assert qp is not None
        signed = engine_dtype(qp) == torch.int8
        if signed:  # rows / columns in code order: byte (i + 128) mod 256 for index i
            table = torch.roll(table, 128, dims=i)
        s, z = b.qparams(qp, f"{op.output}_in{i}")
        idx = b.node("Cast", [b.node("QuantizeLinear", [ins[i], s, z])], to=TensorProto.INT32)
        if signed:
            idx = b.node("Add", [idx, b.const("offset", np.array(128, dtype=np.int32))])
        if i == 0:
            index = b.node("Mul", [idx, b.const("row", np.array(256, dtype=np.int32))])
        else:
            index = b.node("Add", [index, idx])
    lut = b.const("table", table.reshape(-1).numpy().astype(np.int64), b.int_type(out_qp))
    out = b.node("Gather", [lut, index], axis=0)
    s_out, z_out = b.qparams(out_qp, f"{op.output}_out")
    return b.node("DequantizeLinear", [out, s_out, z_out])  # type: ignore[no-any-return]


def _finalize_cat(op: QOp, graph: QGraph) -> None:
    """One table per input: T_i[q] = Q_y(S_i·(q − Z_i)) (the identity where grids agree)."""
    out = op.out_qparams
    assert out is not None
    tables = []
    for edge in op.inputs:
        qp = graph.edges[edge]
        assert qp is not None
        same = torch.equal(qp.scale, out.scale) and torch.equal(qp.zero_point, out.zero_point)
        tables.append(None if same and op.clip is None else table_codes(levels(qp), op))
    op.attrs["tables"] = [t for t in tables if t is not None]
    op.attrs["rescaled"] = [t is not None for t in tables]


def _lower_cat(ctx: Any) -> dict[str, Any]:
    rank = len(ctx.shape)
    return {"dim": int(ctx.arg(1, "dim", 0)) % rank}


def _cat_kernel(op: QOp, graph: QGraph, rounding: str) -> Kernel:
    dim, flags = int(op.attrs["dim"]), list(op.attrs["rescaled"])
    tables = iter(op.attrs["tables"])
    per_input = [next(tables) if f else None for f in flags]

    def run(x: list[Tensor]) -> Tensor:
        parts = [q if t is None else gather(t, byte_index(q)) for q, t in zip(x, per_input)]
        return torch.cat(parts, dim)

    return run


def _emit_cat(b: Any, op: QOp, graph: QGraph, ins: list[str]) -> str:
    return b.node("Concat", ins, axis=int(op.attrs["dim"]))  # type: ignore[no-any-return]


ADD_FUNCTIONS: tuple[Any, ...] = (operator.add, torch.add, operator.iadd)

SPECS = [
    OpSpec("add", "requant", functions=ADD_FUNCTIONS, methods=("add", "add_"), when=_plain_add,
           lower=_lower_add, kernel=_add_kernel, emit=_emit_add, fuses_clip=True,
           doc="a + b: ONNX Runtime's QLinearAdd arithmetic as a 65,536-entry table"),
    OpSpec("unary_table", "requant", modules=UNARY_MODULES,
           functions=UNARY_FUNCTIONS + BINARY_FUNCTIONS, methods=UNARY_METHODS + BINARY_METHODS,
           when=_one_tensor, finalize=_finalize_unary, kernel=_unary_kernel, emit=_emit_unary,
           fuses_clip=True, doc="element-wise f(x) as a 256-entry table"),
    OpSpec("binary_table", "requant", functions=BINARY_FUNCTIONS, methods=BINARY_METHODS,
           when=_two_tensors, finalize=_finalize_binary, kernel=_binary_kernel,
           emit=_emit_binary, fuses_clip=True,
           doc="element-wise f(a, b) with broadcasting as a 65,536-entry table"),
    OpSpec("cat", "requant", functions=(torch.cat, torch.concat, torch.concatenate),
           lower=_lower_cat, finalize=_finalize_cat, kernel=_cat_kernel, emit=_emit_cat,
           doc="concatenation, each input mapped onto the output grid by a table"),
    OpSpec("clip", "clip", modules=CLIP_MODULES, functions=CLIP_FUNCTIONS, methods=CLIP_METHODS,
           when=_static_clip, doc="ReLU / ReLU6 / hardtanh / clamp: fused, else a table"),
    OpSpec("channel_clip", "clip", modules=(ChannelClip,),
           doc="equalization's per-channel clip [0, uᵢ]: the layer before it requantizes onto "
               "the grid after it (envelope clamp), the per-channel clamp runs on those codes; "
               "else float"),
]  # fmt: skip

#: what a clip that cannot be fused becomes (its own table)
CLIP_TABLE = OpSpec(
    "table",
    "requant",
    finalize=_finalize_unary,
    kernel=_unary_kernel,
    emit=_emit_unary,
    doc="a clip (ReLU6, hardtanh, clamp) that could not be fused, as a table",
)
