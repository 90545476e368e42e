"""Integer conv_transpose2d, exact by construction (conventions as `conv`).

acc[n, o, y, x] = Σ_{i, u, v} (q_x[n, i, y', x'] − Z_x)·q_w[i, o, u, v] + q_b[o] over the input
pixels (y', x') that land on (y, x) = (y'·s + u·d − p, x'·s + v·d − p). Pixels are multiplied by
the weights into columns (one exact GEMM per group, `exact_matmul`), then col2im (``F.fold``) adds
overlapping columns: every such sum is a partial sum of the exact accumulator, bounded by
max|q_x − Z_x|·Σ_{i,u,v}|w[i, o, u, v]|, so fold runs in fp32 below 2^24 and in float64 above.
Inputs are centred by Z_x when max|q − Z_x|·Σ_i|w| + |q_b| < 2^24 (no correction), else by
c = 128 with (c − Z_x)·Σ_i w folded into each column's offset. When kernel = stride (no
overlap, e.g. 2x2 stride-2 up-sampling) the columns are the output: the bias rides in the GEMM,
the requantizer runs on the GEMM's memory order and one uint8 copy lays the result out
channels-last.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from zeropoint.engine.conv import Layout, _check_weight, as_pair, nchw_view, to_layout
from zeropoint.engine.kernels import (
    ACTIVATION_CENTRE,
    F32_EXACT,
    GemmPlan,
    activation_bound,
    bias_int64,
    centred_float,
    check_activation,
    check_int32_accumulator,
    exact_matmul,
    plan_gemm,
)
from zeropoint.engine.requantize import Requantizer, dtype_range


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
    _offsets: dict[tuple[int, bool], tuple[tuple[Tensor, int, Tensor], ...]] = field(
        default_factory=dict, init=False, repr=False
    )

    @property
    def in_channels(self) -> int:
        return int(self.weight.shape[0])

    def offsets(self, shift: int, with_bias: bool) -> tuple[tuple[Tensor, int, Tensor], ...]:
        """Per group: the column offsets shift·Σ_i w (+ the bias), their max |·| and float32."""
        key = (shift, with_bias)
        if key not in self._offsets:
            offs = []
            for b, p in zip(self.col_bias, self.plans):
                off = (b if with_bias else torch.zeros_like(b)) + shift * p.col_sums
                offs.append((off, int(off.abs().max()) if off.numel() else 0, off.float()))
            self._offsets[key] = tuple(offs)
        return self._offsets[key]

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
    parts = [
        exact_matmul(a[:, g * c_ig : (g + 1) * c_ig], p, act, *off)
        for g, (p, off) in enumerate(zip(w.plans, w.offsets(c - zp, plain)))
    ]
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
