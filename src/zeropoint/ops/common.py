"""Helpers every operator-table entry shares: grids as (S, Z, dtype), the codes of a fused clip,
the output requantizer, and the 256 levels of an 8-bit grid (the domain of every table)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from zeropoint.engine.requantize import Dequantizer, Float32Requantizer, Requantizer
from zeropoint.functional import dequantize_int, quantize_int
from zeropoint.qparams import QParams

if TYPE_CHECKING:  # avoids an import cycle with lowering
    from zeropoint.lowering import QGraph, QOp


def engine_dtype(qp: QParams, what: str = "tensor") -> torch.dtype:
    """int8 / uint8: the container of a ≤ 8-bit grid (the engine runs 8-bit activations).
    A float format (fp8 / fp4) is refused: the engine has no float8 arithmetic."""
    if qp.scheme.float_format is not None:
        raise ValueError(float_refusal(what, qp.scheme.float_format))
    if qp.scheme.bits > 8:
        raise ValueError(f"{what}: the integer engine runs ≤ 8-bit activations, got {qp.scheme}")
    return torch.int8 if qp.scheme.signed else torch.uint8


def float_refusal(what: str, float_format: str) -> str:
    return (
        f"{what} uses the float format {float_format}: the integer engine runs integer grids "
        "and has no float8 / float4 arithmetic; run the simulation, or export it to ONNX "
        "(zp.export_onnx: QuantizeLinear / DequantizeLinear with float8 types)"
    )


def check_integer_grids(graph: QGraph) -> None:
    """Refuse a graph with a float-format grid (an edge, or a layer's weights), naming the
    first operation that uses one (what `zp.to_integer` checks before building kernels)."""
    for op in graph.ops:
        fmt = op.attrs.get("w_format")
        if fmt is not None:
            raise ValueError(float_refusal(f"layer {op.where or op.output} (weights)", fmt))
        for edge in [*op.inputs, op.output]:
            qp = graph.edges.get(edge)
            if qp is not None and qp.scheme.float_format is not None:
                where = op.where or op.output
                raise ValueError(float_refusal(f"{op.kind} {where}", qp.scheme.float_format))


def grid(qp: QParams | None, what: str) -> tuple[float, int]:
    """(S, Z) of a per-tensor grid; a clear error for a float or per-channel edge."""
    if qp is None:
        raise ValueError(f"{what} is not quantized: the integer engine needs its (S, Z)")
    if qp.scale.dim() != 0:
        raise ValueError(f"{what} is quantized per channel: activations must be per tensor")
    return float(qp.scale), int(qp.zero_point)


def clip_codes(op: QOp) -> tuple[int, int]:
    """[qmin, qmax] of the op's output codes, narrowed by a fused clip (lo, hi) in real units.

    The codes of lo and hi are those the simulation's quantizer gives them, so clamping codes
    equals quantizing the clipped value: Q(clamp(y, lo, hi)) = clamp(Q(y), Q(lo), Q(hi)) since
    Q (divide, round, clamp) is monotone."""
    qp = op.out_qparams
    assert qp is not None
    qmin, qmax = qp.scheme.qrange
    if op.clip is None:
        return qmin, qmax
    lo, hi = op.clip
    bounds = torch.tensor([max(lo, -3.0e38), min(hi, 3.0e38)], dtype=torch.float32)
    q = quantize_int(bounds, qp)
    return max(qmin, int(q[0])), min(qmax, int(q[1]))


#: requantization arithmetics of the integer program (and of the converted simulation)
REQUANTIZATIONS = ("float32", "single", "double")


def layer_requantizer(
    op: QOp, x_scale: float, w_scale: Tensor, channels: int, rounding: str
) -> Requantizer | Float32Requantizer | Dequantizer:
    """The output stage of a weighted layer, M = S_x·S_w / S_y per output channel, clamped to
    the op's codes (fused clip included), in one of three arithmetics:

    * "float32" (default): ONNX Runtime's, bit for bit — rne(fl32(acc)·fl32(fl32(S_x·S_w)/S_y));
    * "single": M as M0·2^−n (31-bit M0), acc·M rounded once, ties up (TFLite single rounding);
    * "double": gemmlowp's SaturatingRoundingDoublingHighMul then RoundingDivideByPOT.

    A layer with no output grid (its output leaves the model in float) gets a `Dequantizer`:
    y = fl32(acc)·fl32(S_x·S_w), the fused clip in real units.
    """
    qp = op.out_qparams
    s_w = w_scale.reshape(-1)
    s_w = s_w.expand(channels).clone() if s_w.numel() == 1 else s_w
    if qp is None:  # the layer's output stays float (quantize_outputs=False)
        return Dequantizer.from_scales(x_scale, s_w, *(op.clip or (-math.inf, math.inf)))
    dtype = engine_dtype(qp, f"output of {op.where or op.output}")
    lo, hi = clip_codes(op)
    s_y, z_y = grid(qp, f"output of {op.where or op.output}")
    if rounding == "float32":
        return Float32Requantizer.from_scales(x_scale, s_w, s_y, z_y, dtype, lo, hi)
    if rounding not in REQUANTIZATIONS:
        raise ValueError(f"rounding={rounding!r}: expected one of {REQUANTIZATIONS}")
    m = s_w.double() * x_scale / s_y
    return Requantizer.from_multiplier(m, z_y, dtype, lo, hi, rounding)  # type: ignore[arg-type]


def levels(qp: QParams) -> Tensor:
    """The real values of all 256 codes of an 8-bit grid, indexed by the code's byte
    (two's complement for int8: byte 255 is the code −1), as the simulation computes them."""
    dtype = engine_dtype(qp)
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(dtype)
    lo, hi = qp.scheme.qrange
    return dequantize_int(codes.to(torch.int32).clamp(lo, hi), qp)


def table_codes(values: Tensor, op: QOp) -> Tensor:
    """The output codes of ``values`` (the op's float results on levels): the simulation's
    quantizer, then the fused clip, in the output container."""
    qp = op.out_qparams
    assert qp is not None
    lo, hi = clip_codes(op)
    # a code the data never reaches may give ±inf or NaN (x / 0 at the code of 0.0): saturate
    big = float(torch.finfo(torch.float32).max)
    finite = torch.nan_to_num(values.float(), nan=0.0, posinf=big, neginf=-big)
    q = quantize_int(finite, qp).to(torch.int32).clamp(lo, hi)
    return q.to(engine_dtype(qp))


def byte_index(q: Tensor) -> Tensor:
    """The byte of each 8-bit code as an int32 index (two's complement for int8)."""
    return q.view(torch.uint8).to(torch.int32)


def gather(table: Tensor, index: Tensor) -> Tensor:
    """table[index] in the index's memory format (channels-last stays channels-last)."""
    from zeropoint.engine.elementwise import gather as ew_gather

    return ew_gather(table, index)


def graph_edge(graph: QGraph, edge: str) -> QParams | None:
    return graph.edges[edge]


__all__ = [
    "REQUANTIZATIONS",
    "byte_index",
    "check_integer_grids",
    "clip_codes",
    "engine_dtype",
    "float_refusal",
    "gather",
    "graph_edge",
    "grid",
    "layer_requantizer",
    "levels",
    "table_codes",
]
