"""Integer conv2d, exact by construction (conv_transpose2d: `conv_transpose`).

Same formula as `kernels` (r = S·(q − Z), symmetric int8 weights, int32 bias):

    acc[n, o, y, x] = Σ_{i, u, v} (q_x[n, i, y·s + u·d − p, x·s + v·d − p] − Z_x)·q_w[o, i, u, v] + q_b[o]

Padding holds the *real* 0.0, i.e. the integer Z_x, not 0. Inputs are centred, a = q_x − c, and
padded with Z_x − c, so Σ (q − Z_x)·w = Σ a·w + (c − Z_x)·Σ w holds at every output position,
borders included; the second term joins the bias in a per-channel offset. The centre is Z_x
itself when max|q − Z_x|·Σ|w| < 2^24 (the padding is then 0 and the correction vanishes), else
c = 128 for uint8 (|a| ≤ 128). Three paths compute Σ a·w, each exact:

* ``"gemm"`` (1x1 kernels, any layout): a plain GEMM on channels-last pixels — `exact_matmul`.
* ``"im2col"``: patches gathered from channels-last data by strided views (stride, dilation),
  copied once to (pixels, C_in·kh·kw) and multiplied by `exact_matmul` per group. Exact for the
  reasons given in `kernels` (fp32 chunks bounded by 2^24, or float64).
* ``"direct"``: oneDNN's convolution on centred fp32 data, channels-last, with weights reordered
  once per input shape (``mkldnn._convolution_pointwise``; ``torch.mkldnn_convolution`` where
  those internal ops are missing). We call oneDNN directly instead of ``F.conv2d``, whose backend
  choice may pick NNPACK (Winograd/FFT transforms, not exact on integer data) when oneDNN is
  disabled or for some batch sizes. PyTorch asks oneDNN for ``algorithm::convolution_direct``;
  its implementations (direct JIT, GEMM, BRGEMM) form the products a·w exactly (|a·w| ≤ 2^14,
  or 255·127 < 2^15 centred by Z_x) and add them in fp32 in some order (the weight layout only
  changes that order), so every intermediate is a partial sum bounded by
  max|a|·Σ|w[o]| (+ |bias|) — used only when that is below 2^24 for every channel and fp32
  precision is strict (`fp32_is_strict`), hence exact. Problems of at most `SMALL_CONV_PIXELS`
  output pixels (batch 1) run ATen's own im2col + sgemm (``_slow_conv2d_forward``, what
  ``F.conv2d`` picks there), exact for the same reason and free of oneDNN's per-call setup.
  ``"auto"`` picks ``"gemm"`` for 1x1, ``"direct"`` where it is exact, else ``"im2col"``.

Layouts: ``"NCHW"`` (N, C, H, W) or ``"NHWC"`` (N, H, W, C); the output uses the input's.
`conv2d_nchw` skips that final copy: (N, C, H, W) in, channels-last memory out, so an
`IntegerProgram` chains layers without transposes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from zeropoint.engine.kernels import (
    ACTIVATION_CENTRE,
    F32_EXACT,
    GemmPlan,
    activation_bound,
    bias_int64,
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


def _centred_padded(x: Tensor, zero_point: int, padding: tuple[int, int], centre: int) -> Tensor:
    """float32 (N, C, H + 2p, W + 2p), channels-last memory: q − c, padded with Z_x − c (the
    real 0; 0.0 when c = Z_x)."""
    n, ch, h, w = x.shape
    ph, pw = padding
    out = torch.empty((n, ch, h + 2 * ph, w + 2 * pw), memory_format=torch.channels_last)
    pad = float(zero_point - centre)
    if ph:
        out[:, :, :ph].fill_(pad)
        out[:, :, ph + h :].fill_(pad)
    if pw:
        out[:, :, :, :pw].fill_(pad)
        out[:, :, :, pw + w :].fill_(pad)
    centred_into(x, out[:, :, ph : ph + h, pw : pw + w], centre)
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
    plans: tuple[GemmPlan, ...]  # one per group: (C_out/groups, C_in/groups·kh·kw)
    col_sums: Tensor  # Σ_{i,u,v} w[o, i, u, v], int64 (C_out,)
    max_abs_sum: int
    max_abs_bias: int
    _offsets: dict[int, tuple[Tensor, int, Tensor]] = field(
        default_factory=dict, init=False, repr=False
    )
    _packed: dict[tuple[tuple[int, ...], tuple[int, int]], Tensor | None] = field(
        default_factory=dict, init=False, repr=False
    )  # oneDNN-reordered weights per (input shape, padding), see `_onednn_conv`

    @property
    def in_channels(self) -> int:
        return int(self.weight.shape[1]) * self.groups

    def offset(self, shift: int) -> tuple[Tensor, int, Tensor]:
        """bias + shift·Σw (shift = c − Z_x): int64, its max |·| and float32, cached per shift."""
        if shift not in self._offsets:
            off = self.bias + shift * self.col_sums
            self._offsets[shift] = (off, int(off.abs().max()) if off.numel() else 0, off.float())
        return self._offsets[shift]

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
        as_pair(dilation, "dilation", 1), groups, q_w.to(torch.float32),
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


def _direct_acc(x: Tensor, zp: int, c: int, act: int, w: Conv2dWeights) -> Tensor:
    """Σ (q − Z_x)·w + q_b by a fp32 convolution of a = q − c (|a| ≤ ``act``), channels-last.

    Centred by c = Z_x, the padding is 0.0 and the convolution pads natively; otherwise it is
    padded with Z_x − c by hand. The offset q_b + (c − Z_x)·Σw rides in the conv's bias when
    act·Σ|w| + |offset| < 2^24 (every partial sum exact), else it is added in int64.
    """
    offset, max_off, offset_f32 = w.offset(c - zp)
    padding = w.padding if c == zp else (0, 0)
    xc = _centred_padded(x, zp, (0, 0) if c == zp else w.padding, c)
    bias = offset_f32 if act * w.max_abs_sum + max_off < F32_EXACT else None
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
        y = _onednn_conv(xc, w, bias, padding)
    return y if bias is not None else y.to(torch.int64).add_(offset.view(1, -1, 1, 1))


def _onednn_conv(
    xc: Tensor, w: Conv2dWeights, bias: Tensor | None, padding: tuple[int, int]
) -> Tensor:
    """oneDNN's direct convolution, with the weights reordered once into oneDNN's blocked layout
    (what torch.compile's CPU freezing does; ~10% faster than reordering on every call). The
    layout only changes the summation order, which the 2^24 bound makes irrelevant. Without
    these ops (they are torch-internal) it falls back to ``torch.mkldnn_convolution``."""
    key = (tuple(xc.shape), padding)
    if key not in w._packed:
        if len(w._packed) >= 8:  # one per input shape seen: keep a few
            w._packed.clear()
        try:
            w._packed[key] = torch.ops.aten.mkldnn_reorder_conv2d_weight(
                w.weight_f32.to_mkldnn(), list(padding), list(w.stride), list(w.dilation),
                w.groups, list(xc.shape),
            )  # fmt: skip
        except (AttributeError, RuntimeError, NotImplementedError):
            w._packed[key] = None
    packed = w._packed[key]
    if packed is not None:
        try:
            return torch.ops.mkldnn._convolution_pointwise(
                xc, packed, bias, list(padding), list(w.stride), list(w.dilation), w.groups,
                "none", [], "",
            )  # fmt: skip
        except (AttributeError, RuntimeError, NotImplementedError):
            w._packed[key] = None
    return torch.mkldnn_convolution(xc, w.weight_f32, bias, padding, w.stride, w.dilation, w.groups)


def _conv2d_acc(
    q_x: Tensor, zp: int, w: Conv2dWeights, layout: str, method: str
) -> tuple[Tensor, int]:
    """Exact accumulators (N, C_out, H_out, W_out), channels-last memory, integer-valued
    (float32 from one exact fp32 pass, else float64/int64), and the static bound on |acc|.

    The input is centred by Z_x when max|q − Z_x|·Σ|w| < 2^24, else by `ACTIVATION_CENTRE`."""
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
    by_zp = act_max * w.max_abs_sum < F32_EXACT
    c, act = (zp, act_max) if by_zp else (ACTIVATION_CENTRE[q_x.dtype], activation_bound(q_x.dtype))
    if method == "direct":
        acc = _direct_acc(x, zp, c, act, w)
    else:
        offset, max_off, offset_f32 = w.offset(c - zp)
        xh = _centred_padded(x, zp, w.padding, c).permute(0, 2, 3, 1)  # (N, Hp, Wp, C)
        if method == "gemm":
            cols = xh[:, : sh * (h_out - 1) + 1 : sh, : sw * (w_out - 1) + 1 : sw].reshape(-1, c_in)
        else:
            patches = xh.unfold(1, ekh, sh).unfold(2, ekw, sw)[..., ::dh, ::dw]
            cols = patches.reshape(n * h_out * w_out, c_in * kh * kw)  # (c, u, v) order
        k_g = cols.shape[1] // w.groups
        c_g = w.out_channels // w.groups
        parts = []
        for g, p in enumerate(w.plans):
            rows = slice(g * c_g, (g + 1) * c_g)
            cols_g = cols[:, g * k_g : (g + 1) * k_g]
            parts.append(exact_matmul(cols_g, p, act, offset[rows], max_off, offset_f32[rows]))
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
