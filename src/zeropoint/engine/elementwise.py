"""Integer pooling kernels and the table gather (the element-wise kernels are tables: `ops.tables`).

Convention r = S·(q − Z). Kernels take integer tensors (uint8/int8, int16 where noted) and return
integers; rescaling between (S, Z) pairs goes through `fixedpoint`'s MBQM.

* max pool: on the codes (max commutes with the increasing map q ↦ S(q − Z)); padding acts as
  qmin, which never wins (torch requires padding ≤ kernel/2, so every window holds a real value).
* avg pool: q_y = clamp(Z_y + MBQM(Σ_window (q_x − Z_x), S_x / (S_y·count))). The window sum is
  exact (padding holds q = Z_x, the real 0). ``count`` follows torch: with count_include_pad it is
  the window clipped to the padded input, else the real elements. One multiplier per distinct
  count; rounding as the program's requantization ("single": once; "double": gemmlowp).
* gather: T[index] for the tables of element-wise operations, in the index's memory format.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from zeropoint.engine.conv import Layout, as_pair, nchw_view, to_layout
from zeropoint.engine.fixedpoint import (
    multiply_by_quantized_multiplier,
    quantize_multipliers,
)
from zeropoint.engine.kernels import check_activation
from zeropoint.engine.requantize import Requantizer, dtype_range


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


def gather(table: Tensor, index: Tensor) -> Tensor:
    """table[index] for a dense ``index`` of any memory format, in that memory format
    (``index_select`` on the index flattened in memory order: a plain 1-D gather)."""
    order = sorted(range(index.dim()), key=lambda d: index.stride(d), reverse=True)
    flat = index.permute(order)
    if not flat.is_contiguous():
        flat = flat.contiguous()
    out = table.index_select(0, flat.view(-1)).view(flat.shape)
    return out.permute([order.index(d) for d in range(index.dim())])


# --------------------------------------------------------------------------- pooling


def max_pool2d(
    q_x: Tensor, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0, dilation: int | tuple[int, int] = 1,
    ceil_mode: bool = False,
) -> Tensor:  # fmt: skip
    """Max pooling of (N, C, H, W) codes in any memory format (see the module docstring).
    Channels-last input (as `conv2d_nchw` produces) pools ~4x faster than NCHW for uint8, but
    torch 2.13's channels-last integer kernel rejects maps of more than 127 elements per image:
    those run in NCHW."""
    _codes(q_x)
    k = as_pair(kernel_size, "kernel_size", 1)
    s = k if stride is None else as_pair(stride, "stride", 1)
    p, d = as_pair(padding, "padding", 0), as_pair(dilation, "dilation", 1)
    if q_x.is_contiguous(memory_format=torch.channels_last) and q_x[0].numel() > 127:
        q_x = q_x.contiguous()
    return F.max_pool2d(q_x, k, s, p, d, ceil_mode)


def _window_counts(size: int, out: int, k: int, s: int, p: int, include_pad: bool) -> Tensor:
    start = torch.arange(out) * s - p
    if include_pad:  # torch: the window clipped to the padded input, pad included
        return torch.minimum(start + k, torch.tensor(size + p)) - start
    return torch.minimum(start + k, torch.tensor(size)) - start.clamp(min=0)


def requantize_means(
    sums: Tensor, counts: Tensor, x_scale: float, out_scale: float, out_zp: int,
    dtype: torch.dtype, rounding: str = "double", clamp: tuple[int, int] | None = None,
) -> Tensor:  # fmt: skip
    """clamp(Z_y + round(sum · S_x / (S_y · count))): window sums (integers, any shape) to output
    codes, ``counts`` broadcasting against the trailing dimensions of ``sums``.

    "single" / "double": M = S_x/(S_y·count) as M0·2^−n, one multiplier per distinct count
    (TFLite's single rounding, gemmlowp's double rounding). "float32" (what ONNX Runtime and the
    simulation do: average in float, round half to even): the exact mean rounded half to even —
    sum·S_x and S_y·count are exact in float64 (below 2^53), so their quotient is the real value
    correctly rounded, and a mean that lies exactly on a tie (frequent: sum/count = k + ½) stays
    one."""
    lo, hi = clamp if clamp is not None else dtype_range(dtype)
    if rounding == "float32":
        v = sums.to(torch.float64) * float(x_scale) / (counts.to(torch.float64) * float(out_scale))
        return v.round_().add_(out_zp).clamp_(lo, hi).to(dtype)
    m0, shift = quantize_multipliers(x_scale / (out_scale * counts.to(torch.float64)))
    y = multiply_by_quantized_multiplier(sums, m0, shift, rounding) + out_zp  # type: ignore[arg-type]
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
    rounding: str = "double", clamp: tuple[int, int] | None = None,
    divisor: int | None = None,
) -> Tensor:  # fmt: skip
    """Average pooling, torch semantics; output (S, Z) defaults to the input's (module docstring).
    ``clamp``: a narrower output range (a fused clip); ``divisor``: torch's divisor_override."""
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
    if divisor is not None:
        counts = torch.full((h_out, w_out), int(divisor))
    else:
        ch = _window_counts(x.shape[2], h_out, k[0], s[0], p[0], count_include_pad)
        cw = _window_counts(x.shape[3], w_out, k[1], s[1], p[1], count_include_pad)
        counts = ch[:, None] * cw[None, :]
    y = requantize_means(sums, counts, sx, sy, zy, q_x.dtype, rounding, clamp)
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


def avg_pool2d_float32(
    q_x: Tensor, x_zero_point: int, kernel_size: tuple[int, int], stride: tuple[int, int],
    padding: tuple[int, int], ceil_mode: bool, count_include_pad: bool, *, x_scale: float,
    out_scale: float, out_zero_point: int, clamp: tuple[int, int] | None = None,
    divisor: int | None = None,
) -> Tensor:  # fmt: skip
    """Average pooling in ONNX Runtime's float32 arithmetic (QLinearAveragePool), bit for bit:
    each code dequantized, x̂ = fl32(S_x·(q − Z_x)); the window's values added in float32 in
    row-major order; divided by the count; q_y = rne(fl32(fl32(ȳ / S_y) + Z_y)) — the zero point
    is added before rounding, so ties round to even in the final code. A mean that lies on a
    rounding tie (frequent with small windows) then rounds as ONNX Runtime rounds it. The count
    follows torch's semantics (``count_include_pad``: the window clipped to the padded input)."""
    _codes(q_x)
    k, s, p = kernel_size, stride, padding
    x = (q_x.to(torch.int32) - x_zero_point).to(torch.float32) * torch.tensor(
        float(x_scale), dtype=torch.float32
    )
    ref = F.avg_pool2d(x[:1, :1], k, s, p, ceil_mode, count_include_pad)  # the output size
    h_out, w_out = ref.shape[-2:]
    pad_b = max(0, (h_out - 1) * s[0] + k[0] - x.shape[2] - p[0])
    pad_r = max(0, (w_out - 1) * s[1] + k[1] - x.shape[3] - p[1])
    xp = F.pad(x, (p[1], pad_r, p[0], pad_b))  # +0.0 where torch pads: sums unchanged
    acc = torch.zeros(x.shape[0], x.shape[1], h_out, w_out, dtype=torch.float32)
    for u in range(k[0]):
        for v in range(k[1]):
            acc += xp[
                :, :, u : u + s[0] * (h_out - 1) + 1 : s[0], v : v + s[1] * (w_out - 1) + 1 : s[1]
            ]
    if divisor is not None:
        counts = torch.full((h_out, w_out), float(divisor))
    else:
        ch = _window_counts(x.shape[2], h_out, k[0], s[0], p[0], count_include_pad)
        cw = _window_counts(x.shape[3], w_out, k[1], s[1], p[1], count_include_pad)
        counts = (ch[:, None] * cw[None, :]).to(torch.float32)
    y = acc / counts
    s_y = torch.tensor(float(out_scale), dtype=torch.float32)
    q = (y / s_y + float(out_zero_point)).round_()
    lo, hi = clamp if clamp is not None else dtype_range(q_x.dtype)
    return q.clamp_(lo, hi).to(q_x.dtype)
