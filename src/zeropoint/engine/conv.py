"""Integer convolutions: conv2d and conv_transpose2d, exact by construction.

Same formula as `kernels` (r = S·(q − Z), symmetric int8 weights, int32 bias):

    acc[n, o, y, x] = Σ_{i, u, v} (q_x[n, i, y·s + u·d − p, x·s + v·d − p] − Z_x)·q_w[o, i, u, v] + q_b[o]

Padding holds the *real* 0.0, i.e. the integer Z_x, not 0. Inputs are centred (a = q_x − c,
|a| ≤ 128, c = 128 for uint8) and padded with Z_x − c, so Σ (q − Z_x)·w = Σ a·w + (c − Z_x)·Σ w
holds at every output position, borders included; the second term joins the bias in a
per-channel offset. Three paths compute Σ a·w, each exact:

* ``"gemm"`` (1x1 kernels, any layout): a plain GEMM on channels-last pixels — `exact_matmul`.
* ``"im2col"``: patches gathered from channels-last data by strided views (stride, dilation),
  copied once to (pixels, C_in·kh·kw) and multiplied by `exact_matmul` per group. Exact for the
  reasons given in `kernels` (fp32 chunks bounded by 2^24, or float64).
* ``"direct"``: ``torch.mkldnn_convolution`` on centred fp32 data. We call that op directly
  instead of ``F.conv2d``, whose backend choice may pick NNPACK (Winograd/FFT transforms, not
  exact on integer data) when oneDNN is disabled or for some batch sizes. PyTorch asks oneDNN for
  ``algorithm::convolution_direct``; its implementations (direct JIT, GEMM, BRGEMM) form the
  products a·w exactly (|a·w| ≤ 2^14) and add them in fp32 in some order, so every intermediate
  is a partial sum bounded by 128·Σ|w[o]| — used only when that is below 2^24 for every channel
  and fp32 precision is strict (`fp32_is_strict`), hence exact. ``"auto"`` picks ``"gemm"``
  for 1x1, ``"direct"`` where it is exact, else ``"im2col"``.

conv_transpose2d multiplies pixels by the weights into columns (one exact GEMM, the input
correction (c − Z_x)·Σ_i w folded into each column), then col2im (``F.fold``) adds overlapping
columns: every such sum is a partial sum of the exact accumulator, bounded by
max|q_x − Z_x|·Σ_{i,u,v}|w[i, o, u, v]|, so fold runs in fp32 below 2^24 and in float64 above.
When kernel = stride (no overlap, e.g. 2x2 stride-2 up-sampling) the columns are the output: a
GEMM and a reshape.

Layouts: ``"NCHW"`` (N, C, H, W) or ``"NHWC"`` (N, H, W, C); the output uses the input's.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from zeropoint.engine.kernels import (
    ACTIVATION_CENTRE,
    F32_EXACT,
    GemmPlan,
    activation_bound,
    bias_int64,
    centred_float,
    centred_into,
    check_activation,
    check_int32_accumulator,
    exact_matmul,
    fp32_is_strict,
    plan_gemm,
)
from zeropoint.engine.requantize import Requantizer, dtype_range

#: Up to this many output pixels (N·H_out·W_out) the direct path runs ATen's im2col conv.
SMALL_CONV_PIXELS = 256
Layout = Literal["NCHW", "NHWC"]
Method = Literal["auto", "gemm", "im2col", "direct"]


def as_pair(v: int | tuple[int, int], name: str, minimum: int) -> tuple[int, int]:
    """(v, v) for an int, else the pair itself; TypeError/ValueError naming ``name``."""
    t = (v, v) if isinstance(v, int) else tuple(v)
    if len(t) != 2 or not all(isinstance(i, int) and not isinstance(i, bool) for i in t):
        raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}")
    if min(t) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v!r}")
    return (t[0], t[1])


def _check_weight(q_w: object, groups: int) -> Tensor:
    if not isinstance(q_w, Tensor) or q_w.dtype != torch.int8:
        got = q_w.dtype if isinstance(q_w, Tensor) else type(q_w).__name__
        raise TypeError(f"weights must be an int8 tensor (symmetric, Z_w = 0), got {got}")
    if q_w.dim() != 4:
        raise ValueError(f"weights must have 4 dimensions, got shape {tuple(q_w.shape)}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    return q_w


def nchw_view(q_x: Tensor, layout: str) -> Tensor:
    """A (N, C, H, W) view of the input (channels-last strides for NHWC)."""
    if layout not in ("NCHW", "NHWC"):
        raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    if q_x.dim() != 4:
        raise ValueError(f"input must have shape ({', '.join(layout)}), got {tuple(q_x.shape)}")
    return q_x if layout == "NCHW" else q_x.permute(0, 3, 1, 2)


def to_layout(y: Tensor, layout: str) -> Tensor:
    """A contiguous tensor in ``layout`` from a logical (N, C, H, W) tensor (any strides)."""
    return y.contiguous() if layout == "NCHW" else y.permute(0, 2, 3, 1).contiguous()


def _centred_padded(x: Tensor, zero_point: int, padding: tuple[int, int]) -> Tensor:
    """float32 (N, C, H + 2p, W + 2p), channels-last memory: q − c, padded with Z_x − c."""
    n, ch, h, w = x.shape
    ph, pw = padding
    out = torch.empty((n, ch, h + 2 * ph, w + 2 * pw), memory_format=torch.channels_last)
    pad = float(zero_point - ACTIVATION_CENTRE[x.dtype])
    for border in (out[:, :, :ph], out[:, :, ph + h :], out[:, :, :, :pw], out[:, :, :, pw + w :]):
        border.fill_(pad)
    inner = out[:, :, ph : ph + h, pw : pw + w]
    centred_into(x.permute(0, 2, 3, 1), inner.permute(0, 2, 3, 1))  # pixel rows, any layout
    return out


# --------------------------------------------------------------------------- conv2d


@dataclass(frozen=True, eq=False)
class Conv2dWeights:
    """int8 weights (C_out, C_in/groups, kh, kw), int32 bias and geometry, prepared once."""

    weight: Tensor
    bias: Tensor  # int64 (C_out,)
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    weight_f32: Tensor
    bias_f32: Tensor  # the bias as float32 (used only while exact, below 2^24)
    plans: tuple[GemmPlan, ...]  # one per group: (C_out/groups, C_in/groups·kh·kw)
    col_sums: Tensor  # Σ_{i,u,v} w[o, i, u, v], int64 (C_out,)
    max_abs_sum: int
    max_abs_bias: int

    @property
    def in_channels(self) -> int:
        return int(self.weight.shape[1]) * self.groups

    @functools.cached_property
    def pointwise(self) -> bool:
        """A 1x1 kernel without padding or groups: a plain GEMM on pixels."""
        return self.weight.shape[2:] == (1, 1) and self.padding == (0, 0) and self.groups == 1

    @functools.cached_property
    def single_chunk(self) -> bool:
        """128·Σ|w| < 2^24 for every output channel: one exact fp32 pass (see `kernels`)."""
        return all(len(p.chunks) == 1 for p in self.plans)

    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[0])


def prepare_conv2d(
    q_w: Tensor,
    bias_q: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
) -> Conv2dWeights:
    """Precompute float weights, per-group GEMM plans and sums for `conv2d` (torch semantics)."""
    q_w = _check_weight(q_w, groups)
    c_out = q_w.shape[0]
    if c_out % groups:
        raise ValueError(f"out channels {c_out} are not divisible by groups={groups}")
    bias = bias_int64(bias_q, c_out)
    per_group = q_w.reshape(groups, c_out // groups, -1)
    plans = tuple(plan_gemm(per_group[g]) for g in range(groups))
    col_sums = torch.cat([p.col_sums for p in plans])
    max_abs = max(p.max_abs_sum for p in plans)
    return Conv2dWeights(
        q_w, bias, as_pair(stride, "stride", 1), as_pair(padding, "padding", 0),
        as_pair(dilation, "dilation", 1), groups, q_w.to(torch.float32), bias.to(torch.float32),
        plans, col_sums, max_abs, int(bias.abs().max()) if c_out else 0,
    )  # fmt: skip


def _conv_method(q_x: Tensor, w: Conv2dWeights, method: str) -> str:
    kh, kw = w.weight.shape[2:]
    if method == "auto":
        if w.pointwise:
            return "gemm"
        exact_f32 = w.single_chunk and q_x.dtype != torch.int16
        if exact_f32 and fp32_is_strict() and torch.backends.mkldnn.is_available():
            return "direct"
        return "im2col"
    if method not in ("gemm", "im2col", "direct"):
        raise ValueError(f"method must be 'auto', 'gemm', 'im2col' or 'direct', got {method!r}")
    if method == "gemm" and ((kh, kw) != (1, 1) or w.padding != (0, 0) or w.groups != 1):
        raise ValueError("method='gemm' needs a 1x1 kernel, padding 0 and groups 1")
    if method == "direct" and (
        any(len(p.chunks) > 1 for p in w.plans) or q_x.dtype == torch.int16 or not fp32_is_strict()
    ):
        raise ValueError("method='direct' is not exact here (bound ≥ 2^24 or non-strict fp32)")
    return method


def _direct_acc(x: Tensor, zp: int, w: Conv2dWeights, act_max: int) -> Tensor:
    """Σ (q − Z_x)·w + q_b by ``torch.mkldnn_convolution`` on exact integer-valued fp32.

    When act_max·Σ|w| < 2^24 (act_max = max|q − Z_x|) the input is centred by Z_x itself: the
    padding is then the real 0 = 0.0, oneDNN pads natively, there is no correction term, and
    every partial sum is bounded by act_max·Σ|w[o]| (+ |q_b|, riding in the conv's bias when
    that stays below 2^24). Otherwise it is centred by c = 128 (|a| ≤ 128), padded with
    Z_x − c by hand, and (c − Z_x)·Σw joins the bias. The input is written channels-last.
    """
    if act_max * w.max_abs_sum < F32_EXACT:
        xc = torch.empty(x.shape, memory_format=torch.channels_last)
        torch.sub(x, float(zp), out=xc)  # float scalar: computed in float32, exact
        offset, padding, act, max_off = w.bias, w.padding, act_max, w.max_abs_bias
    else:
        c = ACTIVATION_CENTRE[x.dtype]
        xc = _centred_padded(x, zp, w.padding)
        offset, padding, act = w.bias + (c - zp) * w.col_sums, (0, 0), activation_bound(x.dtype)
        max_off = int(offset.abs().max()) if offset.numel() else 0
    in_bias = act * w.max_abs_sum + max_off < F32_EXACT
    bias = (w.bias_f32 if offset is w.bias else offset.to(torch.float32)) if in_bias else None
    n, _, h, wd = xc.shape
    kh, kw = w.weight.shape[2:]
    pixels = (
        n
        * ((h + 2 * padding[0] - kh) // w.stride[0] + 1)
        * ((wd + 2 * padding[1] - kw) // w.stride[1] + 1)
    )
    if pixels <= SMALL_CONV_PIXELS and w.groups == 1 and w.dilation == (1, 1):
        # tiny problems (batch 1): ATen's im2col + sgemm, ~2x faster than oneDNN's setup there
        y = torch.ops.aten._slow_conv2d_forward(xc, w.weight_f32, [kh, kw], bias, w.stride, padding)
    else:
        y = torch.mkldnn_convolution(
            xc, w.weight_f32, bias, padding, w.stride, w.dilation, w.groups
        )
    return y if in_bias else y.to(torch.int64).add_(offset.view(1, -1, 1, 1))


def _conv2d_acc(
    q_x: Tensor, zp: int, w: Conv2dWeights, layout: str, method: str
) -> tuple[Tensor, int]:
    """Exact accumulators (N, C_out, H_out, W_out), channels-last memory, integer-valued
    (float32 from one exact fp32 pass, else float64/int64), and the static bound on |acc|."""
    check_activation(q_x, zp)
    x = nchw_view(q_x, layout)
    n, c_in, h, wd = x.shape
    if c_in != w.in_channels:
        raise ValueError(
            f"input has {c_in} channels, the weights {tuple(w.weight.shape)} with "
            f"groups={w.groups} expect {w.in_channels} (input shape {tuple(q_x.shape)}, {layout})"
        )
    kh, kw = w.weight.shape[2:]
    (sh, sw), (ph, pw), (dh, dw) = w.stride, w.padding, w.dilation
    ekh, ekw = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    h_out, w_out = (h + 2 * ph - ekh) // sh + 1, (wd + 2 * pw - ekw) // sw + 1
    if h_out < 1 or w_out < 1:
        raise ValueError(
            f"input spatial size {(h, wd)} is smaller than the dilated kernel {(ekh, ekw)} "
            f"after padding {w.padding}"
        )
    method = _conv_method(q_x, w, method)
    lo, hi = dtype_range(q_x.dtype)
    act_max = max(zp - lo, hi - zp)
    if method == "direct":
        acc = _direct_acc(x, zp, w, act_max)
    else:
        c = ACTIVATION_CENTRE[q_x.dtype]
        offset = w.bias + (c - zp) * w.col_sums
        act = activation_bound(q_x.dtype)
        xh = _centred_padded(x, zp, w.padding).permute(0, 2, 3, 1)  # (N, Hp, Wp, C), contiguous
        if method == "gemm":
            cols = xh[:, : sh * (h_out - 1) + 1 : sh, : sw * (w_out - 1) + 1 : sw].reshape(-1, c_in)
        else:
            patches = xh.unfold(1, ekh, sh).unfold(2, ekw, sw)[..., ::dh, ::dw]
            cols = patches.reshape(n * h_out * w_out, c_in * kh * kw)  # (c, u, v) order
        k_g = cols.shape[1] // w.groups
        c_g = w.out_channels // w.groups
        parts = [
            exact_matmul(cols[:, g * k_g : (g + 1) * k_g], p, act, offset[g * c_g : (g + 1) * c_g])
            for g, p in enumerate(w.plans)
        ]
        flat = parts[0] if w.groups == 1 else torch.cat([p.to(torch.int64) for p in parts], 1)
        acc = flat.view(n, h_out, w_out, w.out_channels).permute(0, 3, 1, 2)
    check_int32_accumulator(acc, act_max, w.max_abs_sum, w.max_abs_bias, c_in // w.groups * kh * kw)
    return acc, act_max * w.max_abs_sum + w.max_abs_bias


def conv2d_acc(
    q_x: Tensor, x_zero_point: int, weights: Conv2dWeights, layout: Layout = "NCHW",
    method: Method = "auto",
) -> Tensor:  # fmt: skip
    """The int32 accumulator of a quantized conv2d, in ``layout`` (see the module docstring)."""
    acc = _conv2d_acc(q_x, x_zero_point, weights, layout, method)[0]
    return to_layout(acc.to(torch.int32), layout)


def _conv2d(
    q_x: Tensor, zp: int, w: Conv2dWeights, requant: Requantizer, layout: str, method: str
) -> Tensor:
    if requant.channels not in (None, w.out_channels):
        raise ValueError(f"requantizer has {requant.channels} channels, the layer {w.out_channels}")
    acc, bound = _conv2d_acc(q_x, zp, w, layout, method)
    return requant.apply(acc, 1, bound)


def conv2d_nchw(
    q_x: Tensor, x_zero_point: int, weights: Conv2dWeights, requant: Requantizer,
    method: Method = "auto",
) -> Tensor:  # fmt: skip
    """`conv2d` on an (N, C, H, W) tensor of any memory format, returning (N, C_out, H', W') in
    the memory format the kernel produced (channels-last): no copy into a layout, so a program
    chains convolutions without transposes."""
    return _conv2d(q_x, x_zero_point, weights, requant, "NCHW", method)


def conv2d(
    q_x: Tensor, x_zero_point: int, weights: Conv2dWeights, requant: Requantizer,
    layout: Layout = "NCHW", method: Method = "auto",
) -> Tensor:  # fmt: skip
    """Quantized conv2d: clamp(Z_y + MBQM(acc, M0, shift)), per-channel M along C_out; the
    output is a contiguous tensor in ``layout``."""
    return to_layout(_conv2d(q_x, x_zero_point, weights, requant, layout, method), layout)


# --------------------------------------------------------------------------- conv_transpose2d


@dataclass(frozen=True, eq=False)
class ConvTranspose2dWeights:
    """int8 weights (C_in, C_out/groups, kh, kw), int32 bias and geometry, prepared once."""

    weight: Tensor
    bias: Tensor  # int64 (C_out,)
    stride: tuple[int, int]
    padding: tuple[int, int]
    output_padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    plans: tuple[GemmPlan, ...]  # per group: (C_out/groups·kh·kw, C_in/groups)
    col_bias: tuple[Tensor, ...]  # per group: the bias of each column's output channel, int64
    max_abs_sum: int  # max_o Σ_{i,u,v} |w[i, o, u, v]|: bounds every fold partial sum
    max_abs_bias: int

    @property
    def in_channels(self) -> int:
        return int(self.weight.shape[0])

    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[1]) * self.groups


def prepare_conv_transpose2d(
    q_w: Tensor,
    bias_q: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    output_padding: int | tuple[int, int] = 0,
    groups: int = 1,
    dilation: int | tuple[int, int] = 1,
) -> ConvTranspose2dWeights:
    """Precompute per-group column GEMM plans for `conv_transpose2d` (torch semantics)."""
    q_w = _check_weight(q_w, groups)
    c_in, c_og, kh, kw = q_w.shape
    if c_in % groups:
        raise ValueError(f"in channels {c_in} are not divisible by groups={groups}")
    st, dl = as_pair(stride, "stride", 1), as_pair(dilation, "dilation", 1)
    op = as_pair(output_padding, "output_padding", 0)
    if op[0] >= max(st[0], dl[0]) or op[1] >= max(st[1], dl[1]):
        raise ValueError(f"output_padding {op} must be smaller than stride {st} or dilation {dl}")
    bias = bias_int64(bias_q, c_og * groups)
    cols = q_w.reshape(groups, c_in // groups, c_og * kh * kw).transpose(1, 2)
    plans = tuple(plan_gemm(cols[g].contiguous()) for g in range(groups))
    per_out = q_w.to(torch.int64).abs().reshape(groups, c_in // groups, c_og, -1).sum((1, 3))
    col_bias = tuple(b.repeat_interleave(kh * kw) for b in bias.reshape(groups, c_og))
    return ConvTranspose2dWeights(
        q_w, bias, st, as_pair(padding, "padding", 0), op, dl, groups, plans, col_bias,
        int(per_out.max()) if per_out.numel() else 0,
        int(bias.abs().max()) if bias.numel() else 0,
    )  # fmt: skip


def _conv_transpose2d(
    q_x: Tensor, zp: int, w: ConvTranspose2dWeights, layout: str, requant: Requantizer | None
) -> Tensor:
    """(N, C_out, H_out, W_out): requantized by ``requant``, or the exact int64 accumulator
    when it is None. The input is centred by Z_x when max|q − Z_x|·Σ|w| + |q_b| < 2^24 (one
    exact fp32 GEMM, no correction), else by c = 128 with (c − Z_x)·Σw in the offsets. Without
    overlap (kernel = stride) the bias rides in the GEMM and the output is channels-last."""
    check_activation(q_x, zp)
    x = nchw_view(q_x, layout)
    n, c_in, h, wd = x.shape
    if c_in != w.in_channels:
        raise ValueError(
            f"input has {c_in} channels, the weights {tuple(w.weight.shape)} expect {w.in_channels} "
            f"(input shape {tuple(q_x.shape)}, {layout})"
        )
    if requant is not None and requant.channels not in (None, w.out_channels):
        raise ValueError(f"requantizer has {requant.channels} channels, the layer {w.out_channels}")
    kh, kw = w.weight.shape[2:]
    (sh, sw), (ph, pw), (oph, opw), (dh, dw) = w.stride, w.padding, w.output_padding, w.dilation
    h_out = (h - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1
    w_out = (wd - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1
    if h_out < 1 or w_out < 1:
        raise ValueError(f"padding {w.padding} leaves no output for input size {(h, wd)}")
    lo, hi = dtype_range(q_x.dtype)
    act_max = max(zp - lo, hi - zp)
    bound = act_max * w.max_abs_sum + w.max_abs_bias
    col_abs = max(p.max_abs_sum for p in w.plans)
    by_zp = q_x.dtype != torch.int16 and act_max * col_abs + w.max_abs_bias < F32_EXACT
    c = zp if by_zp else ACTIVATION_CENTRE[q_x.dtype]
    act = act_max if by_zp else activation_bound(q_x.dtype)
    a = centred_float(x.permute(0, 2, 3, 1), c).reshape(-1, c_in)  # (N·H·W, C_in)
    c_ig, c_out = c_in // w.groups, w.out_channels
    plain = (kh, kw) == (sh, sw) and (ph, pw, oph, opw, dh, dw) == (0, 0, 0, 0, 1, 1)
    parts = []
    for g, p in enumerate(w.plans):
        offset = w.col_bias[g] if plain else torch.zeros_like(p.col_sums)
        offset = offset if c == zp else offset + (c - zp) * p.col_sums
        parts.append(exact_matmul(a[:, g * c_ig : (g + 1) * c_ig], p, act, offset))
    cols = parts[0] if w.groups == 1 else torch.cat([p.to(torch.int64) for p in parts], 1)
    k = c_ig * kh * kw
    if plain:
        check_int32_accumulator(
            cols, act_max, w.max_abs_sum, w.max_abs_bias, k
        )  # column (o, u, v) of pixel (y, x) is output (o, y·kh + u, x·kw + v)
        acc6 = cols.view(n, h, wd, c_out, kh, kw).permute(0, 3, 1, 4, 2, 5)  # (n, o, y, u, x, v)
        if requant is None:
            return acc6.to(torch.int64).reshape(n, c_out, h_out, w_out)
        y6 = requant.apply(acc6, 1, bound)  # keeps the GEMM's memory order
        out = torch.empty((n, h_out, w_out, c_out), dtype=y6.dtype)
        out.view(n, h, kh, wd, kw, c_out).permute(0, 5, 1, 2, 3, 4).copy_(y6)
        return out.permute(0, 3, 1, 2)
    ftype = torch.float32 if act_max * w.max_abs_sum < F32_EXACT else torch.float64
    colsf = cols.to(ftype).view(n, h * wd, -1).transpose(1, 2)
    y = F.fold(colsf, (h_out, w_out), (kh, kw), w.dilation, w.padding, w.stride)
    acc = y.to(torch.int64).add_(w.bias.view(1, -1, 1, 1))
    check_int32_accumulator(acc, act_max, w.max_abs_sum, w.max_abs_bias, k)
    return acc if requant is None else requant.apply(acc, 1, bound)


def conv_transpose2d_acc(
    q_x: Tensor, x_zero_point: int, weights: ConvTranspose2dWeights, layout: Layout = "NCHW"
) -> Tensor:
    """The int32 accumulator of a quantized transposed convolution, in ``layout``."""
    acc = _conv_transpose2d(q_x, x_zero_point, weights, layout, None)
    return to_layout(acc.to(torch.int32), layout)


def conv_transpose2d_nchw(
    q_x: Tensor, x_zero_point: int, weights: ConvTranspose2dWeights, requant: Requantizer
) -> Tensor:
    """`conv_transpose2d` on (N, C, H, W) of any memory format, the output left in the memory
    format the kernel produced (channels-last without overlap): see `conv2d_nchw`."""
    return _conv_transpose2d(q_x, x_zero_point, weights, "NCHW", requant)


def conv_transpose2d(
    q_x: Tensor, x_zero_point: int, weights: ConvTranspose2dWeights, requant: Requantizer,
    layout: Layout = "NCHW",
) -> Tensor:  # fmt: skip
    """Quantized conv_transpose2d: clamp(Z_y + MBQM(acc, M0, shift)), per-channel along C_out."""
    return to_layout(_conv_transpose2d(q_x, x_zero_point, weights, layout, requant), layout)
