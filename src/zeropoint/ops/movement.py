"""Operations that move, select or copy values: the output lives on the input's grid ("shared").

flatten, view / reshape (the batch dimension stays dynamic), permute / transpose, squeeze /
unsqueeze, slicing and indexing, padding (zeros — the real 0.0 is the code Z —, reflect,
replicate, circular), nearest up-sampling, max pooling 1-D and 2-D (max commutes with the
increasing map q ↦ S·(q − Z)) and a standalone ReLU (a clamp at Z). On codes they are the same
torch operations as on the simulation's values, so simulation and engine agree exactly.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from zeropoint.engine import elementwise as ew
from zeropoint.ops.common import grid
from zeropoint.ops.spec import Kernel, OpSpec

if TYPE_CHECKING:
    from zeropoint.lowering import LowerContext, QGraph, QOp


def pad_codes(
    q: Tensor, pad: list[int], mode: str, zero_point: int, value: int | None = None
) -> Tensor:
    """torch's F.pad on codes (pad in torch's order: last dimension first). Constant padding
    writes the code of the real 0.0, Z (or ``value``); the other modes copy codes."""
    if mode in ("zeros", "constant"):
        return F.pad(q, pad, value=zero_point if value is None else value)
    return F.pad(q, pad, mode=mode)


def _batch_kept(ctx: LowerContext) -> bool:
    shape_in = ctx.shapes[ctx.inputs[0]]
    return bool(shape_in) and bool(ctx.shape) and shape_in[0] == ctx.shape[0]


def _reshape_target(op: QOp) -> list[int]:
    """The static target shape with the batch dimension free (0: ONNX copies it)."""
    shape = list(op.shape)
    return [0, *shape[1:]] if op.attrs.get("batch_kept", True) else shape


# ----------------------------------------------------------------------------- reshape family


def _lower_reshape(ctx: LowerContext) -> dict[str, Any]:
    return {"shape": list(ctx.shape), "batch_kept": _batch_kept(ctx)}


def _reshape_kernel(op: QOp, graph: QGraph, rounding: str) -> Kernel:
    shape = list(op.shape)
    if op.attrs.get("batch_kept", True):
        return lambda x: x[0].reshape(x[0].shape[0], *shape[1:])
    return lambda x: x[0].reshape(shape)


def _emit_reshape(b: Any, op: QOp, graph: QGraph, ins: list[str]) -> str:
    target = np.array(_reshape_target(op), dtype=np.int64)
    return b.node("Reshape", [ins[0], b.const("shape", target)])  # type: ignore[no-any-return]


def _lower_flatten(ctx: LowerContext) -> dict[str, Any]:
    if isinstance(ctx.module, nn.Flatten):
        start, end = ctx.module.start_dim, ctx.module.end_dim
    else:
        start, end = ctx.arg(1, "start_dim", 0), ctx.arg(2, "end_dim", -1)
    return {"start": int(start), "end": int(end), "shape": list(ctx.shape),
            "batch_kept": _batch_kept(ctx)}  # fmt: skip


def _flatten_kernel(op: QOp, graph: QGraph, rounding: str) -> Kernel:
    start, end = int(op.attrs["start"]), int(op.attrs["end"])
    return lambda x: torch.flatten(x[0], start, end)


# ----------------------------------------------------------------------------- permutations


def _lower_permute(ctx: LowerContext) -> dict[str, Any]:
    rank = len(ctx.shapes[ctx.inputs[0]])
    node = ctx.node
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    if name in ("transpose", "swapaxes"):
        d0, d1 = int(ctx.arg(1, "dim0")) % rank, int(ctx.arg(2, "dim1")) % rank
        perm = list(range(rank))
        perm[d0], perm[d1] = perm[d1], perm[d0]
    else:
        dims = ctx.resolve(list(node.args[1:])) if node.op == "call_method" else ctx.arg(1, "dims")
        if len(dims) == 1 and isinstance(dims[0], tuple | list):
            dims = dims[0]
        perm = [int(d) % rank for d in dims]
    return {"perm": perm}


def _permute_kernel(op: QOp, graph: QGraph, rounding: str) -> Kernel:
    perm = [int(p) for p in op.attrs["perm"]]
    return lambda x: x[0].permute(perm)


def _emit_permute(b: Any, op: QOp, graph: QGraph, ins: list[str]) -> str:
    return b.node("Transpose", ins[:1], perm=[int(p) for p in op.attrs["perm"]])  # type: ignore[no-any-return]


def _lower_squeeze(ctx: LowerContext) -> dict[str, Any]:
    """The dimensions removed (or inserted), normalised against the recorded shapes."""
    before = list(ctx.shapes[ctx.inputs[0]])
    name = ctx.node.target if ctx.node.op == "call_method" else ctx.node.target.__name__  # type: ignore[union-attr]
    if name == "unsqueeze":
        return {"unsqueeze": True, "dims": [int(ctx.arg(1, "dim")) % len(ctx.shape)]}
    dim = ctx.arg(1, "dim", None)
    rank = len(before)
    if dim is None:
        dims = [i for i, size in enumerate(before) if size == 1]
    else:
        wanted = dim if isinstance(dim, tuple | list) else [dim]
        dims = sorted({int(d) % rank for d in wanted if before[int(d) % rank] == 1})
    return {"unsqueeze": False, "dims": dims}


def _squeeze_kernel(op: QOp, graph: QGraph, rounding: str) -> Kernel:
    dims = [int(d) for d in op.attrs["dims"]]
    if op.attrs["unsqueeze"]:
        return lambda x: x[0].unsqueeze(dims[0])
    return lambda x: x[0].squeeze(tuple(dims)) if dims else x[0]


def _emit_squeeze(b: Any, op: QOp, graph: QGraph, ins: list[str]) -> str:
    axes = b.const("axes", np.array(op.attrs["dims"], dtype=np.int64))
    kind = "Unsqueeze" if op.attrs["unsqueeze"] else "Squeeze"
    return b.node(kind, [ins[0], axes])  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------- indexing


def _basic_index(node: fx.Node, module: nn.Module | None) -> bool:
    """x[...] with ints, slices of constants, None and Ellipsis only (no tensor indices)."""
    index = node.args[1] if len(node.args) > 1 else None
    items = index if isinstance(index, tuple) else (index,)

    def ok(item: Any) -> bool:
        if isinstance(item, slice):
            return all(not isinstance(v, fx.Node) for v in (item.start, item.stop, item.step))
        return (
            item is None
            or item is Ellipsis
            or (isinstance(item, int) and not isinstance(item, bool))
        )

    return isinstance(node.args[0], fx.Node) and all(ok(i) for i in items)


def _encode_index(index: Any, rank: int) -> list[Any]:
    """The index as JSON: one entry per item, Ellipsis expanded to full slices."""
    items = list(index) if isinstance(index, tuple) else [index]
    used = sum(1 for i in items if i is not None and i is not Ellipsis)
    out: list[Any] = []
    for item in items:
        if item is Ellipsis:
            out.extend(["slice", None, None, None] for _ in range(rank - used))
        elif item is None:
            out.append(["new"])
        elif isinstance(item, slice):
            out.append(["slice", item.start, item.stop, item.step])
        else:
            out.append(["int", int(item)])
    return out


def _decode_index(items: list[Any]) -> tuple[Any, ...]:
    decoded: list[Any] = []
    for item in items:
        if item[0] == "new":
            decoded.append(None)
        elif item[0] == "int":
            decoded.append(int(item[1]))
        else:
            decoded.append(slice(item[1], item[2], item[3]))
    return tuple(decoded)


def _lower_getitem(ctx: LowerContext) -> dict[str, Any]:
    rank = len(ctx.shapes[ctx.inputs[0]])
    return {"index": _encode_index(ctx.node.args[1], rank)}


def _getitem_kernel(op: QOp, graph: QGraph, rounding: str) -> Kernel:
    index = _decode_index(op.attrs["index"])
    return lambda x: x[0][index]


def _emit_getitem(b: Any, op: QOp, graph: QGraph, ins: list[str]) -> str:
    x, dim = ins[0], 0
    for item in op.attrs["index"]:
        if item[0] == "new":
            x = b.node("Unsqueeze", [x, b.const("axes", np.array([dim], dtype=np.int64))])
            dim += 1
        elif item[0] == "int":
            x = b.node("Gather", [x, b.const("index", np.array(item[1], dtype=np.int64))], axis=dim)
        else:
            _, start, stop, step = item
            if (start, stop, step) != (None, None, None):
                big = np.iinfo(np.int64).max
                args = [
                    np.array([start if start is not None else 0], np.int64),
                    np.array([stop if stop is not None else big], np.int64),
                    np.array([dim], np.int64), np.array([step if step is not None else 1], np.int64),
                ]  # fmt: skip
                x = b.node("Slice", [x, *(b.const("slice", a) for a in args)])
            dim += 1
    return x  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------- padding


_PAD_MODULES = (
    nn.ZeroPad1d, nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ReflectionPad1d,
    nn.ReflectionPad2d, nn.ReplicationPad1d, nn.ReplicationPad2d, nn.CircularPad1d,
    nn.CircularPad2d,
)  # fmt: skip


def _pad_args(node: fx.Node, module: nn.Module | None) -> tuple[list[int], str, float]:
    if module is not None:
        modes = {"Reflection": "reflect", "Replication": "replicate", "Circular": "circular"}
        kind = next(
            (v for k, v in modes.items() if type(module).__name__.startswith(k)), "constant"
        )
        return list(module.padding), kind, float(getattr(module, "value", 0.0))  # type: ignore[arg-type]
    args: list[Any] = list(node.args)
    pad = args[1] if len(args) > 1 else node.kwargs.get("pad")
    mode = args[2] if len(args) > 2 else node.kwargs.get("mode", "constant")
    value = args[3] if len(args) > 3 else node.kwargs.get("value", None)
    return list(pad), str(mode), float(value or 0.0)  # type: ignore[arg-type]


def _zero_or_copy_pad(node: fx.Node, module: nn.Module | None) -> bool:
    """Padding whose value is on every grid: zeros, or a copying mode (reflect...)."""
    try:
        pad, mode, value = _pad_args(node, module)
    except (TypeError, ValueError):
        return False
    return all(isinstance(p, int) for p in pad) and (mode != "constant" or value == 0.0)


def _lower_pad(ctx: LowerContext) -> dict[str, Any]:
    pad, mode, _ = _pad_args(ctx.node, ctx.module)
    return {"pad": pad, "mode": mode}


def _pad_kernel(op: QOp, graph: QGraph, rounding: str) -> Kernel:
    pad, mode = [int(p) for p in op.attrs["pad"]], str(op.attrs["mode"])
    z = grid(graph.edges[op.inputs[0]], f"input of {op.where}")[1]
    return lambda x: pad_codes(x[0], pad, mode, z)


def _emit_pad(b: Any, op: QOp, graph: QGraph, ins: list[str]) -> str:
    pad, rank = [int(p) for p in op.attrs["pad"]], len(graph.shapes[op.inputs[0]])
    begin, end = [0] * rank, [0] * rank
    for i in range(len(pad) // 2):  # torch: (last_begin, last_end, second_last_begin, ...)
        begin[rank - 1 - i], end[rank - 1 - i] = pad[2 * i], pad[2 * i + 1]
    mode = {"constant": "constant", "zeros": "constant", "reflect": "reflect",
            "replicate": "edge", "circular": "wrap"}[str(op.attrs["mode"])]  # fmt: skip
    pads = b.const("pads", np.array(begin + end, dtype=np.int64))
    return b.node("Pad", [ins[0], pads], mode=mode)  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------- up-sampling


def _nearest(node: fx.Node, module: nn.Module | None) -> bool:
    if module is not None:
        return getattr(module, "mode", "nearest") == "nearest"
    mode = node.args[3] if len(node.args) > 3 else node.kwargs.get("mode", "nearest")
    return mode == "nearest"


def _lower_upsample(ctx: LowerContext) -> dict[str, Any]:
    m: Any = ctx.module
    factor = m.scale_factor if m is not None else ctx.arg(2, "scale_factor")
    in_shape = ctx.shapes[ctx.inputs[0]]
    dims = len(in_shape) - 2
    factors = (
        [float(f) for f in ([factor] * dims if isinstance(factor, int | float) else factor)]
        if factor
        else None
    )
    return {"size": list(ctx.shape[2:]), "scale_factor": factors,
            "scales": [o / i for o, i in zip(ctx.shape[2:], in_shape[2:])]}  # fmt: skip


def _upsample_kernel(op: QOp, graph: QGraph, rounding: str) -> Kernel:
    size, factors = [int(s) for s in op.attrs["size"]], op.attrs["scale_factor"]

    def run(x: list[Tensor]) -> Tensor:
        q = x[0].contiguous()
        raw = q.view(torch.uint8) if q.dtype == torch.int8 else q  # a copy: bytes are enough
        if factors is not None:
            y = F.interpolate(raw, scale_factor=factors, mode="nearest")
        else:
            y = F.interpolate(raw, size=size, mode="nearest")
        return y.view(q.dtype)

    return run


def _emit_upsample(b: Any, op: QOp, graph: QGraph, ins: list[str]) -> str:
    scales = op.attrs["scale_factor"] or op.attrs["scales"]
    scale = b.const("scales", np.array([1.0, 1.0, *scales], dtype=np.float32))
    return b.node(
        "Resize",
        [ins[0], "", scale],
        mode="nearest",  # type: ignore[no-any-return]
        coordinate_transformation_mode="asymmetric",
        nearest_mode="floor",
    )


# ----------------------------------------------------------------------------- max pooling


def _no_indices(node: fx.Node, module: nn.Module | None) -> bool:
    if module is not None:
        return not getattr(module, "return_indices", False)
    return not node.kwargs.get("return_indices", False) and not (
        len(node.args) > 6 and node.args[6]
    )


def _lower_max_pool(ctx: LowerContext) -> dict[str, Any]:
    dims = len(ctx.shapes[ctx.inputs[0]]) - 2
    if ctx.module is not None:
        m: Any = ctx.module
        k, s, p, d, c = m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode
    else:
        k = ctx.arg(1, "kernel_size")
        s, p = ctx.arg(2, "stride", None), ctx.arg(3, "padding", 0)
        d, c = ctx.arg(4, "dilation", 1), ctx.arg(5, "ceil_mode", False)

    def tup(v: Any) -> list[int]:
        return [int(v)] * dims if isinstance(v, int) else [int(i) for i in v]

    return {"dims": dims, "kernel": tup(k), "stride": tup(s if s else k), "padding": tup(p),
            "dilation": tup(d), "ceil_mode": bool(c)}  # fmt: skip


def max_pool_codes(q: Tensor, a: dict[str, Any]) -> Tensor:
    """Max pooling of codes; 1-D runs as 2-D with a unit height (torch has no integer 1-D
    kernel)."""
    dims = int(a["dims"])
    q4 = q.unsqueeze(2) if dims == 1 else q

    def pair(key: str, fill: int) -> tuple[int, int]:
        v = [int(i) for i in a[key]]
        return (v[0], v[1]) if dims == 2 else (fill, v[0])

    y = ew.max_pool2d(q4, pair("kernel", 1), pair("stride", 1), pair("padding", 0),
                      pair("dilation", 1), bool(a["ceil_mode"]))  # fmt: skip
    return y.squeeze(2) if dims == 1 else y


def _max_pool_kernel(op: QOp, graph: QGraph, rounding: str) -> Kernel:
    return lambda x: max_pool_codes(x[0], op.attrs)


def _emit_max_pool(b: Any, op: QOp, graph: QGraph, ins: list[str]) -> str:
    a = op.attrs
    return b.node("MaxPool", ins[:1], kernel_shape=a["kernel"], strides=a["stride"],  # type: ignore[no-any-return]
                  pads=list(a["padding"]) * 2, dilations=a["dilation"],
                  ceil_mode=int(a["ceil_mode"]))  # fmt: skip


# ----------------------------------------------------------------------------- ReLU on codes


def _relu_kernel(op: QOp, graph: QGraph, rounding: str) -> Kernel:
    z = grid(graph.edges[op.inputs[0]], f"input of {op.where}")[1]
    return lambda x: x[0].clamp(min=z)


def _emit_relu(b: Any, op: QOp, graph: QGraph, ins: list[str]) -> str:
    return b.node("Relu", ins[:1])  # type: ignore[no-any-return]


_RESHAPE_METHODS = ("view", "reshape")


SPECS = [
    OpSpec("reshape", "shared", functions=(torch.reshape,), methods=_RESHAPE_METHODS,
           lower=_lower_reshape, kernel=_reshape_kernel, emit=_emit_reshape,
           doc="view / reshape with the batch dimension kept dynamic"),
    OpSpec("flatten", "shared", modules=(nn.Flatten,), functions=(torch.flatten,),
           methods=("flatten",), lower=_lower_flatten, kernel=_flatten_kernel,
           emit=_emit_reshape, doc="flatten"),
    OpSpec("permute", "shared", functions=(torch.permute, torch.transpose, torch.swapaxes),
           methods=("permute", "transpose", "swapaxes"), lower=_lower_permute,
           kernel=_permute_kernel, emit=_emit_permute, doc="permute / transpose"),
    OpSpec("squeeze", "shared", functions=(torch.squeeze, torch.unsqueeze),
           methods=("squeeze", "unsqueeze"), lower=_lower_squeeze, kernel=_squeeze_kernel,
           emit=_emit_squeeze, doc="squeeze / unsqueeze"),
    OpSpec("getitem", "shared", functions=(operator.getitem,), when=_basic_index,
           lower=_lower_getitem, kernel=_getitem_kernel, emit=_emit_getitem,
           doc="slicing and indexing with ints, slices, None and Ellipsis"),
    OpSpec("pad", "shared", modules=_PAD_MODULES, functions=(F.pad,), when=_zero_or_copy_pad,
           lower=_lower_pad, kernel=_pad_kernel, emit=_emit_pad,
           doc="zero, reflect, replicate and circular padding"),
    OpSpec("upsample_nearest", "shared", modules=(nn.Upsample, nn.UpsamplingNearest2d),
           functions=(F.interpolate,), when=_nearest, lower=_lower_upsample,
           kernel=_upsample_kernel, emit=_emit_upsample, doc="nearest up-sampling"),
    OpSpec("max_pool", "shared", modules=(nn.MaxPool1d, nn.MaxPool2d),
           functions=(F.max_pool1d, F.max_pool2d), when=_no_indices, lower=_lower_max_pool,
           kernel=_max_pool_kernel, emit=_emit_max_pool, doc="max pooling 1-D and 2-D"),
]  # fmt: skip

#: what a ReLU on a quantized value becomes when it cannot fuse (lowering creates it)
RELU_CODES = OpSpec("relu_codes", "shared", kernel=_relu_kernel, emit=_emit_relu,
                    doc="a ReLU that could not be fused: a clamp of the codes at Z")  # fmt: skip

IDENTITY = OpSpec(
    "identity", "identity", modules=(nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d),
    functions=(F.dropout,), methods=("contiguous", "clone", "detach"),
    doc="no-ops at inference: dropout, identity, contiguous",
)  # fmt: skip
