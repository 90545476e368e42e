"""Integer element-wise and pooling kernels: add, concat, clamp/ReLU, pooling, flatten.

Convention r = S·(q − Z). Every kernel takes integer tensors (uint8/int8, int16 where noted)
and returns integers; rescaling between (S, Z) pairs goes through `fixedpoint`'s MBQM.

* add (TFLite's quantized ADD): both inputs are brought to a common scale 2·max(S_a, S_b)/2^20
  in int32, added, and rescaled to the output:
      a' = MBQM((q_a − Z_a)·2^20, S_a / (2·max)),   b' = MBQM((q_b − Z_b)·2^20, S_b / (2·max))
      q_y = clamp(Z_y + MBQM(a' + b', 2·max / (2^20·S_y)), qmin, qmax)
  The 2^20 left shift keeps 20 fractional bits through the rescale (15 for 16-bit inputs).
  With 8-bit inputs q_y is a function of the pair of bytes (q_a, q_b), 65536 pairs: that
  arithmetic runs once on all of them (the table, cached per input dtype pair) and `add` gathers
  table[256·byte(q_a) + byte(q_b)] — the same integers, by construction, in two passes.
* concat / rescale: q_y = clamp(Z_y + MBQM(q_x − Z_x, S_x / S_y)); identical (S, Z) copy.
* avg pool: q_y = clamp(Z_y + MBQM(Σ_window (q_x − Z_x), S_x / (S_y·count))). The window sum is
  exact (padding holds q = Z_x, the real 0). ``count`` follows torch: with count_include_pad it is
  the window clipped to the padded input, else the real elements. Rounding: to nearest, ties as
  gemmlowp (the 31-bit product rounds half up, the final shift half away from zero); M itself is
  rounded to 31 bits, so a mean that is an exact tie can round either way when count is not a
  power of two. TFLite averages raw codes as (Σq + count/2)/count: same result except at ties.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from zeropoint.engine.conv import Layout, as_pair, nchw_view, to_layout
from zeropoint.engine.fixedpoint import (
    INT32_MAX,
    INT32_MIN,
    multiply_by_quantized_multiplier,
    quantize_multipliers,
)
from zeropoint.engine.kernels import check_activation
from zeropoint.engine.requantize import Requantizer, activation_range, dtype_range


def _codes(q_x: object) -> Tensor:
    """Raise TypeError unless ``q_x`` is an integer activation tensor (uint8, int8, int16)."""
    if not isinstance(q_x, Tensor):
        raise TypeError(f"q_x must be a torch.Tensor, got {type(q_x).__name__}")
    return check_activation(q_x, 0 if q_x.dtype == torch.uint8 else -1)


def _scale(s: float, name: str) -> float:
    s = float(s)
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"{name} must be finite and > 0, got {s!r}")
    return s


# --------------------------------------------------------------------------- add


@dataclass(frozen=True, eq=False)
class AddParams:
    """TFLite ADD constants: input zero points, three fixed-point multipliers, output clamp."""

    a_zero_point: int
    b_zero_point: int
    a_rescale: Requantizer  # S_a / (2·max), to int32
    b_rescale: Requantizer  # S_b / (2·max), to int32
    output: Requantizer  # 2·max / (2^left_shift·S_y), Z_y, clamp
    left_shift: int
    _tables: dict[tuple[torch.dtype, torch.dtype], Tensor] = field(
        default_factory=dict, init=False, repr=False
    )

    def clamped(self, qmin: int, qmax: int) -> AddParams:
        """The same add with the output clamp narrowed to [qmin, qmax]."""
        return AddParams(self.a_zero_point, self.b_zero_point, self.a_rescale, self.b_rescale,
                         self.output.clamped(qmin, qmax), self.left_shift)  # fmt: skip

    def table(self, a_dtype: torch.dtype, b_dtype: torch.dtype) -> Tensor:
        """q_y for every pair of 8-bit codes: a (65536,) tensor indexed by 256·byte(q_a) + byte(q_b)
        (the byte of an int8 code is its two's complement, as ``view(torch.uint8)`` reads it)."""
        key = (a_dtype, b_dtype)
        if key not in self._tables:
            codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
            q_a, q_b = codes.view(a_dtype).view(256, 1), codes.view(b_dtype).view(1, 256)
            self._tables[key] = _add_integer(q_a, q_b, self, (256, 256)).reshape(-1)
        return self._tables[key]


def prepare_add(
    a_scale: float, a_zero_point: int, b_scale: float, b_zero_point: int,
    out_scale: float, out_zero_point: int, dtype: torch.dtype = torch.uint8,
    activation: str | None = None, left_shift: int | None = None,
) -> AddParams:  # fmt: skip
    """Multipliers of q_y = Z_y + (S_a(q_a − Z_a) + S_b(q_b − Z_b)) / S_y (see module docstring).

    ``left_shift`` defaults to 20 for 8-bit outputs and 15 for int16 (TFLite's choices).
    """
    sa, sb = _scale(a_scale, "a_scale"), _scale(b_scale, "b_scale")
    sy = _scale(out_scale, "out_scale")
    if left_shift is None:
        left_shift = 15 if dtype == torch.int16 else 20
    twice_max = 2.0 * max(sa, sb)
    lo, hi = activation_range(activation, sy, out_zero_point, dtype)
    out_m = twice_max / ((1 << left_shift) * sy)
    return AddParams(
        int(a_zero_point), int(b_zero_point),
        Requantizer.from_multiplier(sa / twice_max, 0, torch.int32, INT32_MIN, INT32_MAX),
        Requantizer.from_multiplier(sb / twice_max, 0, torch.int32, INT32_MIN, INT32_MAX),
        Requantizer.from_multiplier(out_m, out_zero_point, dtype, lo, hi),
        left_shift,
    )  # fmt: skip


def add(q_a: Tensor, q_b: Tensor, params: AddParams) -> Tensor:
    """Quantized element-wise a + b with broadcasting (TFLite's integer ADD)."""
    check_activation(q_a, params.a_zero_point, "q_a")
    check_activation(q_b, params.b_zero_point, "q_b")
    try:  # (torch.broadcast_shapes costs ~50 µs: skip it for the usual equal shapes)
        shape = (
            q_a.shape if q_a.shape == q_b.shape else torch.broadcast_shapes(q_a.shape, q_b.shape)
        )
    except RuntimeError as e:
        raise ValueError(
            f"shapes {tuple(q_a.shape)} and {tuple(q_b.shape)} do not broadcast"
        ) from e
    lo_a, hi_a = dtype_range(q_a.dtype)
    lo_b, hi_b = dtype_range(q_b.dtype)
    if max(hi_a - lo_a, hi_b - lo_b) << params.left_shift > INT32_MAX:
        raise ValueError(f"left_shift={params.left_shift} overflows int32 for these input dtypes")
    if q_a.element_size() == 1 and q_b.element_size() == 1:
        index = torch.add(q_b.view(torch.uint8), q_a.view(torch.uint8).to(torch.int32), alpha=256)
        return gather(params.table(q_a.dtype, q_b.dtype), index)
    return _add_integer(q_a, q_b, params, shape)


def _add_integer(q_a: Tensor, q_b: Tensor, params: AddParams, shape: torch.Size | tuple) -> Tensor:
    """TFLite's ADD in int64, element by element (the specification the table is built from)."""
    a = (q_a.to(torch.int64) - params.a_zero_point).bitwise_left_shift_(params.left_shift)
    b = (q_b.to(torch.int64) - params.b_zero_point).bitwise_left_shift_(params.left_shift)
    total = params.a_rescale.apply(a).to(torch.int64) + params.b_rescale.apply(b)
    return params.output.apply(total.expand(shape).contiguous())


def gather(table: Tensor, index: Tensor) -> Tensor:
    """table[index] for a dense ``index`` of any memory format, in that memory format
    (``index_select`` on the index flattened in memory order: a plain 1-D gather)."""
    order = sorted(range(index.dim()), key=lambda d: index.stride(d), reverse=True)
    flat = index.permute(order)
    if not flat.is_contiguous():
        flat = flat.contiguous()
    out = table.index_select(0, flat.view(-1)).view(flat.shape)
    return out.permute([order.index(d) for d in range(index.dim())])


# --------------------------------------------------------------------------- rescale / concat


def rescale(q_x: Tensor, x_zero_point: int, requant: Requantizer, channel_axis: int = 1) -> Tensor:
    """Requantize to another (S, Z): clamp(Z_y + MBQM(q_x − Z_x, S_x/S_y)) (per channel: axis)."""
    check_activation(q_x, x_zero_point)
    return requant.apply(q_x.to(torch.int64) - x_zero_point, channel_axis)


@dataclass(frozen=True, eq=False)
class ConcatParams:
    """Per input: its zero point and the Requantizer to the output's (S, Z) (None: copy)."""

    zero_points: tuple[int, ...]
    rescales: tuple[Requantizer | None, ...]
    dtype: torch.dtype


def prepare_concat(
    scales: Sequence[float], zero_points: Sequence[int], out_scale: float, out_zero_point: int,
    dtype: torch.dtype = torch.uint8,
) -> ConcatParams:  # fmt: skip
    """Rescale every input whose (S, Z) differs from the output's by M = S_x / S_y."""
    if len(scales) != len(zero_points) or not scales:
        raise ValueError(f"need one zero point per scale, got {len(scales)} and {len(zero_points)}")
    sy = _scale(out_scale, "out_scale")
    rescales = tuple(
        None if (float(s) == sy and int(z) == out_zero_point)
        else Requantizer.from_multiplier(_scale(s, "scale") / sy, out_zero_point, dtype)
        for s, z in zip(scales, zero_points)
    )  # fmt: skip
    return ConcatParams(tuple(int(z) for z in zero_points), rescales, dtype)


def concat(tensors: Sequence[Tensor], params: ConcatParams, dim: int = 1) -> Tensor:
    """Quantized concatenation along ``dim``, every input requantized to the output's (S, Z)."""
    if len(tensors) != len(params.rescales):
        raise ValueError(f"expected {len(params.rescales)} tensors, got {len(tensors)}")
    parts = []
    for i, (q, z, r) in enumerate(zip(tensors, params.zero_points, params.rescales)):
        check_activation(q, z, f"tensors[{i}]")
        if r is None and q.dtype != params.dtype:
            raise TypeError(f"tensors[{i}] has dtype {q.dtype}, the output {params.dtype}")
        parts.append(q if r is None else r.apply(q.to(torch.int64) - z))
    return torch.cat(parts, dim)


# --------------------------------------------------------------------------- clamps


def clamp(q_x: Tensor, qmin: int, qmax: int) -> Tensor:
    """Clamp to [qmin, qmax] in the input dtype (ReLU, ReLU6 and hard clamps are all this)."""
    lo, hi = dtype_range(_codes(q_x).dtype)
    if not lo <= qmin <= qmax <= hi:
        raise ValueError(f"clamp [{qmin}, {qmax}] must lie inside {q_x.dtype}'s [{lo}, {hi}]")
    return q_x.clamp(qmin, qmax)


def relu(q_x: Tensor, zero_point: int) -> Tensor:
    """ReLU in the quantized domain: real 0 is the code Z, so clamp below at Z."""
    return clamp(q_x, *activation_range("relu", 1.0, zero_point, _codes(q_x).dtype))


def relu6(q_x: Tensor, scale: float, zero_point: int) -> Tensor:
    """ReLU6: clamp to [Z, Z + round(6/S)] (see `activation_range`)."""
    sc = _scale(scale, "scale")
    return clamp(q_x, *activation_range("relu6", sc, zero_point, _codes(q_x).dtype))


# --------------------------------------------------------------------------- pooling


def max_pool2d_nchw(
    q_x: Tensor, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0, dilation: int | tuple[int, int] = 1,
    ceil_mode: bool = False,
) -> Tensor:  # fmt: skip
    """`max_pool2d` of (N, C, H, W) codes in any memory format, kept (channels-last input, as
    `conv2d_nchw` produces, pools ~4x faster than NCHW for uint8)."""
    k = as_pair(kernel_size, "kernel_size", 1)
    s = k if stride is None else as_pair(stride, "stride", 1)
    p, d = as_pair(padding, "padding", 0), as_pair(dilation, "dilation", 1)
    return F.max_pool2d(q_x, k, s, p, d, ceil_mode)


def max_pool2d(
    q_x: Tensor, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0, dilation: int | tuple[int, int] = 1,
    ceil_mode: bool = False, layout: Layout = "NCHW",
) -> Tensor:  # fmt: skip
    """Max pooling on codes (max commutes with the increasing map q ↦ S(q − Z)).

    Padding acts as qmin, the dtype minimum: torch pads with the lowest value, and since it
    requires padding ≤ kernel/2 every window holds a real element, so padding never wins.
    """
    _codes(q_x)
    y = max_pool2d_nchw(nchw_view(q_x, layout), kernel_size, stride, padding, dilation, ceil_mode)
    return to_layout(y, layout)


def _window_counts(size: int, out: int, k: int, s: int, p: int, include_pad: bool) -> Tensor:
    start = torch.arange(out) * s - p
    if include_pad:  # torch: the window clipped to the padded input, pad included
        return torch.minimum(start + k, torch.tensor(size + p)) - start
    return torch.minimum(start + k, torch.tensor(size)) - start.clamp(min=0)


def _requantize_sums(
    sums: Tensor, counts: Tensor, x_scale: float, out_scale: float, out_zp: int, dtype: torch.dtype
) -> Tensor:
    """clamp(Z_y + MBQM(sum, S_x/(S_y·count))) with one multiplier per distinct count."""
    m0, shift = quantize_multipliers(x_scale / (out_scale * counts.to(torch.float64)))
    y = multiply_by_quantized_multiplier(sums, m0, shift) + out_zp
    lo, hi = dtype_range(dtype)
    return y.clamp_(lo, hi).to(dtype)


def _pool_qparams(
    q_x: Tensor, x_zp: int, x_scale: float, out_scale: float | None, out_zp: int | None
) -> tuple[float, float, int]:
    """(S_x, S_y, Z_y); the output's (S, Z) default to the input's."""
    check_activation(q_x, x_zp)
    sx = _scale(x_scale, "x_scale")
    sy = sx if out_scale is None else _scale(out_scale, "out_scale")
    zy = x_zp if out_zp is None else int(out_zp)
    lo, hi = dtype_range(q_x.dtype)
    if not lo <= zy <= hi:
        raise ValueError(f"output zero point {zy} is outside {q_x.dtype}'s [{lo}, {hi}]")
    return sx, sy, zy


def avg_pool2d(
    q_x: Tensor, x_zero_point: int, kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None, padding: int | tuple[int, int] = 0,
    ceil_mode: bool = False, count_include_pad: bool = True, *, x_scale: float = 1.0,
    out_scale: float | None = None, out_zero_point: int | None = None, layout: Layout = "NCHW",
) -> Tensor:  # fmt: skip
    """Average pooling, torch semantics; output (S, Z) defaults to the input's (module docstring)."""
    sx, sy, zy = _pool_qparams(q_x, x_zero_point, x_scale, out_scale, out_zero_point)
    x = nchw_view(q_x, layout)
    k = as_pair(kernel_size, "kernel_size", 1)
    s = k if stride is None else as_pair(stride, "stride", 1)
    p = as_pair(padding, "padding", 0)
    lo, hi = dtype_range(q_x.dtype)
    exact32 = k[0] * k[1] * max(x_zero_point - lo, hi - x_zero_point) < (1 << 24)
    a = x.to(torch.float32 if exact32 else torch.float64) - x_zero_point
    sums = F.avg_pool2d(a, k, s, p, ceil_mode, True, divisor_override=1).to(torch.int64)
    h_out, w_out = sums.shape[-2:]
    ch = _window_counts(x.shape[2], h_out, k[0], s[0], p[0], count_include_pad)
    cw = _window_counts(x.shape[3], w_out, k[1], s[1], p[1], count_include_pad)
    y = _requantize_sums(sums, ch[:, None] * cw[None, :], sx, sy, zy, q_x.dtype)
    return to_layout(y, layout)


def pool_requantizer(
    count: int, x_scale: float, out_scale: float, out_zero_point: int, dtype: torch.dtype
) -> Requantizer:
    """clamp(Z_y + MBQM(·, S_x/(S_y·count))) to ``dtype``'s range, gemmlowp's double rounding:
    the output stage of a mean over ``count`` elements (the same M as `_requantize_sums`)."""
    m0, shift = quantize_multipliers(
        x_scale / (out_scale * torch.tensor(count, dtype=torch.float64))
    )
    return Requantizer(m0, shift, out_zero_point, dtype)


def global_avg_pool2d_nchw(q_x: Tensor, x_zero_point: int, requant: Requantizer) -> Tensor:
    """`global_avg_pool2d` of trusted (N, C, H, W) codes in any memory format, with its
    `pool_requantizer`. The window sums Σq, Z_x·count and Σq − Z_x·count are integers of
    magnitude at most count·max(|q|, |q − Z_x|): exact in float32 below 2^24 (in any summation
    order), else in float64 (below 2^53)."""
    count = q_x.shape[2] * q_x.shape[3]
    lo, hi = dtype_range(q_x.dtype)
    act_max = max(x_zero_point - lo, hi - x_zero_point)
    exact32 = count * max(-lo, hi, act_max) < 1 << 24
    sums = q_x.sum((2, 3), keepdim=True, dtype=torch.float32 if exact32 else torch.float64)
    return requant.apply(sums.sub_(x_zero_point * count), 1, count * act_max)


def global_avg_pool2d(
    q_x: Tensor, x_zero_point: int, *, x_scale: float = 1.0, out_scale: float | None = None,
    out_zero_point: int | None = None, layout: Layout = "NCHW",
) -> Tensor:  # fmt: skip
    """Mean over H, W (keepdim): clamp(Z_y + MBQM(Σ(q − Z_x), S_x/(S_y·H·W)))."""
    sx, sy, zy = _pool_qparams(q_x, x_zero_point, x_scale, out_scale, out_zero_point)
    x = nchw_view(q_x, layout)
    count = x.shape[2] * x.shape[3]
    if count == 0:
        raise ValueError(f"global_avg_pool2d needs H·W > 0, got shape {tuple(q_x.shape)}")
    y = global_avg_pool2d_nchw(x, x_zero_point, pool_requantizer(count, sx, sy, zy, q_x.dtype))
    return to_layout(y, layout)


def flatten(q_x: Tensor, start_dim: int = 1, layout: Layout = "NCHW") -> Tensor:
    """torch.flatten in NCHW element order (an NHWC input is transposed first, so a Linear
    trained on NCHW flattening sees its features in the same order)."""
    if layout == "NHWC" and q_x.dim() == 4:
        q_x = q_x.permute(0, 3, 1, 2)
    return torch.flatten(q_x, start_dim)
