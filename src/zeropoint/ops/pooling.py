"""Averages: average pooling 1-D / 2-D, adaptive average pooling (global or any output size) and
the mean over dimensions. The mean of levels lies between levels, so the output is requantized:

    q_y = clamp(Z_y + round(M_w · Σ_window (q_x − Z_x))),   M_w = S_x / (S_y · count_w)

The window sums are exact integers (float32 below 2^24, else float64); ``count_w`` follows torch
(padding counted or not, windows clipped at the border, adaptive windows of varying size), one
fixed-point multiplier per distinct count.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from zeropoint.engine import elementwise as ew
from zeropoint.engine.requantize import dtype_range
from zeropoint.ops.common import clip_codes, engine_dtype, grid
from zeropoint.ops.spec import Kernel, OpSpec

if TYPE_CHECKING:
    from zeropoint.lowering import LowerContext, QGraph, QOp


def _tup(v: Any, n: int) -> list[int]:
    return [int(v)] * n if isinstance(v, int) else [int(i) for i in v]


def _lower_avg_pool(ctx: LowerContext) -> dict[str, Any]:
    dims = len(ctx.shapes[ctx.inputs[0]]) - 2
    m: Any = ctx.module
    if m is not None:
        k, s, p = m.kernel_size, m.stride, m.padding
        ceil, include, divisor = (
            m.ceil_mode,
            m.count_include_pad,
            getattr(m, "divisor_override", None),
        )
    else:
        k, s, p = ctx.arg(1, "kernel_size"), ctx.arg(2, "stride", None), ctx.arg(3, "padding", 0)
        ceil, include = ctx.arg(4, "ceil_mode", False), ctx.arg(5, "count_include_pad", True)
        divisor = ctx.arg(6, "divisor_override", None) if dims == 2 else None
    return {"dims": dims, "kernel": _tup(k, dims), "stride": _tup(s if s else k, dims),
            "padding": _tup(p, dims), "ceil_mode": bool(ceil), "count_include_pad": bool(include),
            "divisor": divisor}  # fmt: skip


def _requantize(
    sums: Tensor, counts: Tensor, op: QOp, graph: QGraph, rounding: str, bound: int
) -> Tensor:
    """Window sums to output codes, one divisor per position of ``counts``
    (`engine.elementwise.requantize_means`)."""
    s_x, _ = grid(graph.edges[op.inputs[0]], f"input of {op.where}")
    assert op.out_qparams is not None
    s_y, z_y = grid(op.out_qparams, f"output of {op.where}")
    dtype = engine_dtype(op.out_qparams)
    return ew.requantize_means(sums, counts, s_x, s_y, z_y, dtype, rounding, clip_codes(op))


def _centred(q: Tensor, z: int, count: int) -> tuple[Tensor, int]:
    """q − Z as floats exact for sums of ``count`` terms (float32 below 2^24), and max|q − Z|."""
    lo, hi = dtype_range(q.dtype)
    act = max(z - lo, hi - z)
    dtype = torch.float32 if count * act < (1 << 24) else torch.float64
    return q.to(dtype) - z, act


def _avg_pool_kernel(op: QOp, graph: QGraph, rounding: str) -> Kernel:
    a = op.attrs
    dims = int(a["dims"])
    s_x, z = grid(graph.edges[op.inputs[0]], f"input of {op.where}")
    assert op.out_qparams is not None
    s_y, z_y = grid(op.out_qparams, f"output of {op.where}")
    k, s, p = a["kernel"], a["stride"], a["padding"]
    if dims == 1:
        k, s, p = [1, *k], [1, *s], [0, *p]
    clamp = clip_codes(op)

    def run(x: list[Tensor]) -> Tensor:
        q = x[0] if dims == 2 else x[0].unsqueeze(2)
        if rounding == "float32":  # ONNX Runtime's QLinearAveragePool arithmetic
            y = ew.avg_pool2d_float32(
                q, z, tuple(k), tuple(s), tuple(p), bool(a["ceil_mode"]),  # type: ignore[arg-type]
                bool(a["count_include_pad"]), x_scale=s_x, out_scale=s_y, out_zero_point=z_y,
                clamp=clamp, divisor=a.get("divisor"),
            )  # fmt: skip
            return y if dims == 2 else y.squeeze(2)
        y = ew.avg_pool2d(
            q, z, tuple(k), tuple(s), tuple(p), bool(a["ceil_mode"]),
            bool(a["count_include_pad"]), x_scale=s_x, out_scale=s_y, out_zero_point=z_y,
            rounding=rounding, clamp=clamp, divisor=a.get("divisor"),
        )  # fmt: skip
        return y if dims == 2 else y.squeeze(2)

    return run


def _emit_avg_pool(b: Any, op: QOp, graph: QGraph, ins: list[str]) -> str:
    a = op.attrs
    if a.get("divisor"):
        raise ValueError(f"{op.where}: average pooling with divisor_override has no ONNX form")
    return b.node("AveragePool", ins[:1], kernel_shape=a["kernel"], strides=a["stride"],  # type: ignore[no-any-return]
                  pads=list(a["padding"]) * 2, ceil_mode=int(a["ceil_mode"]),
                  count_include_pad=int(a["count_include_pad"]))  # fmt: skip


# ----------------------------------------------------------------------------- adaptive, mean


def _lower_adaptive(ctx: LowerContext) -> dict[str, Any]:
    in_shape = ctx.shapes[ctx.inputs[0]]
    return {"in": list(in_shape[2:]), "out": list(ctx.shape[2:])}


def _adaptive_matrix(size: int, out: int) -> Tensor:
    """0/1 (out, size): window i covers [⌊i·size/out⌋, ⌈(i+1)·size/out⌉) (torch's windows)."""
    m = torch.zeros(out, size, dtype=torch.float64)
    for i in range(out):
        m[i, (i * size) // out : -(-((i + 1) * size) // out)] = 1
    return m


def _adaptive_kernel(op: QOp, graph: QGraph, rounding: str) -> Kernel:
    z = grid(graph.edges[op.inputs[0]], f"input of {op.where}")[1]
    sizes, outs = op.attrs["in"], op.attrs["out"]
    mats = [_adaptive_matrix(s, o) for s, o in zip(sizes, outs)]
    counts = mats[0].sum(1)
    for m in mats[1:]:
        counts = counts[..., None] * m.sum(1)
    window = int(counts.max())

    def run(x: list[Tensor]) -> Tensor:
        q = x[0]
        if all(o == 1 for o in outs):  # global: one sum over the map
            c, act = _centred(q, z, window)
            dims = tuple(range(2, q.dim()))
            sums = c.sum(dims, keepdim=True).to(torch.int64)
            return _requantize(sums, counts.reshape([1] * len(outs)), op, graph, rounding,
                               window * act)  # fmt: skip
        c, act = _centred(q, z, window)
        sums = c.to(torch.float64)
        for i, m in enumerate(mats):  # contract each spatial dimension with its windows
            sums = torch.movedim(torch.movedim(sums, 2 + i, -1) @ m.t(), -1, 2 + i)
        return _requantize(sums.round().to(torch.int64), counts, op, graph, rounding, window * act)

    return run


def _emit_adaptive(b: Any, op: QOp, graph: QGraph, ins: list[str]) -> str:
    sizes, outs = op.attrs["in"], op.attrs["out"]
    if all(o == 1 for o in outs):
        return b.node("GlobalAveragePool", ins[:1])  # type: ignore[no-any-return]
    if all(s % o == 0 for s, o in zip(sizes, outs)):
        k = [s // o for s, o in zip(sizes, outs)]
        return b.node("AveragePool", ins[:1], kernel_shape=k, strides=k)  # type: ignore[no-any-return]
    x = ins[0]  # uneven windows: contract each dimension with its averaging matrix
    for i, (s, o) in enumerate(zip(sizes, outs)):
        m = _adaptive_matrix(s, o)
        avg = (m / m.sum(1, keepdim=True)).t().numpy().astype(np.float32)
        rank = len(sizes) + 2
        perm = list(range(rank))
        perm[2 + i], perm[-1] = perm[-1], perm[2 + i]
        x = b.node("Transpose", [x], perm=perm)
        x = b.node("MatMul", [x, b.const("adaptive", avg)])
        x = b.node("Transpose", [x], perm=perm)
    return x  # type: ignore[no-any-return]


def _is_reduction(node: fx.Node, module: nn.Module | None) -> bool:
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    return dim is not None and "dtype" not in node.kwargs


def _lower_mean(ctx: LowerContext) -> dict[str, Any]:
    rank = len(ctx.shapes[ctx.inputs[0]])
    dim = ctx.arg(1, "dim")
    dims = sorted({int(d) % rank for d in (dim if isinstance(dim, tuple | list) else [dim])})
    return {"dims": dims, "keepdim": bool(ctx.arg(2, "keepdim", False))}


def _mean_kernel(op: QOp, graph: QGraph, rounding: str) -> Kernel:
    z = grid(graph.edges[op.inputs[0]], f"input of {op.where}")[1]
    dims, keep = tuple(op.attrs["dims"]), bool(op.attrs["keepdim"])
    in_shape = graph.shapes[op.inputs[0]]
    count = math.prod(in_shape[d] for d in dims if d != 0) if 0 not in dims else None

    def run(x: list[Tensor]) -> Tensor:
        q = x[0]
        n = count if count is not None else math.prod(q.shape[d] for d in dims)
        c, act = _centred(q, z, n)
        sums = c.sum(dims, keepdim=keep).to(torch.int64)
        return _requantize(sums, torch.tensor([n]), op, graph, rounding, n * act)

    return run


def _emit_mean(b: Any, op: QOp, graph: QGraph, ins: list[str]) -> str:
    axes = b.const("axes", np.array(op.attrs["dims"], dtype=np.int64))
    return b.node("ReduceMean", [ins[0], axes], keepdims=int(op.attrs["keepdim"]))  # type: ignore[no-any-return]


SPECS = [
    OpSpec("avg_pool", "requant", modules=(nn.AvgPool1d, nn.AvgPool2d),
           functions=(F.avg_pool1d, F.avg_pool2d), lower=_lower_avg_pool,
           kernel=_avg_pool_kernel, emit=_emit_avg_pool, doc="average pooling 1-D and 2-D"),
    OpSpec("adaptive_avg_pool", "requant", modules=(nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d),
           functions=(F.adaptive_avg_pool1d, F.adaptive_avg_pool2d), lower=_lower_adaptive,
           kernel=_adaptive_kernel, emit=_emit_adaptive,
           doc="adaptive average pooling (global or any output size)"),
    OpSpec("mean", "requant", functions=(torch.mean,), methods=("mean",), when=_is_reduction,
           lower=_lower_mean, kernel=_mean_kernel, emit=_emit_mean, doc="mean over dimensions"),
]  # fmt: skip
