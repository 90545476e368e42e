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
    Rounding,
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


def _requantize_sums(
    sums: Tensor, counts: Tensor, x_scale: float, out_scale: float, out_zp: int,
    dtype: torch.dtype, rounding: Rounding = "double", clamp: tuple[int, int] | None = None,
) -> Tensor:  # fmt: skip
    """clamp(Z_y + MBQM(sum, S_x/(S_y·count))) with one multiplier per distinct count."""
    m0, shift = quantize_multipliers(x_scale / (out_scale * counts.to(torch.float64)))
    y = multiply_by_quantized_multiplier(sums, m0, shift, rounding) + out_zp
    lo, hi = clamp if clamp is not None else dtype_range(dtype)
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
    rounding: Rounding = "double", clamp: tuple[int, int] | None = None,
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
    y = _requantize_sums(sums, counts, sx, sy, zy, q_x.dtype, rounding, clamp)
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
