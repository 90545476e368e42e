"""8-bit weights that x86 int8 kernels without VNNI compute exactly: pair-bounded codes in the
order the kernels reduce.

ONNX Runtime's U8S8 GEMM and convolution on AVX2 without VNNI (and fbgemm) multiply a uint8
input by int8 weights with ``vpmaddubsw``: the products of two consecutive reduction indices are
added in a saturating int16 before widening. With 8-bit activations (u ≤ 255) two products reach
2·255·127 = 64770 > 32767, and the result is silently wrong (`fbgemm_saturates` probes it). The
remedy is a bound on the weight codes, not on their width: where every consecutive pair has
|q_2j| + |q_2j+1| ≤ 128, every pair sum stays within 255·128 = 32640 and the kernel is exact
(`pair_bounded_codes` chooses such codes with the least squared weight error). 7-bit weights
[−63, 63] (``reduce_range``) are the blunt form of the same bound; on MobileNetV2 they cost most
of the model's agreement with fp32 where pair-bounded 8-bit codes cost almost nothing.

The pairs are consecutive in the kernel's reduction order, measured on ONNX Runtime (see
``tests/test_saturation.py``):

* Linear / MatMul: the input features k = 0, 1, …
* Conv (ONNX Runtime runs QLinearConv channels-last, im2col): (kernel position, input channel)
  flattened with the channels innermost — for a 3×3 kernel over C channels, index
  (i·3 + j)·C + c — per group; with an odd C a pair spans two kernel positions.
* Depthwise convolutions (one input and one output channel per group) run a separate kernel
  that accumulates in int32: no bound is needed there.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from zeropoint.nn.dynamic import pair_bounded_codes
from zeropoint.qparams import QParams, Scheme


def reduction_rows(weight: Tensor) -> Tensor:
    """The weight as (output channels, K) with K in the int8 kernels' reduction order: a Linear
    weight as it is; a convolution's (O, C/g, *kernel) as (O, *kernel, C/g) flattened."""
    if weight.dim() <= 2:
        return weight
    return weight.movedim(1, -1).reshape(weight.shape[0], -1)


def from_reduction_rows(rows: Tensor, shape: torch.Size | tuple[int, ...]) -> Tensor:
    """The inverse of `reduction_rows` for a weight of ``shape``."""
    if len(shape) <= 2:
        return rows.reshape(shape)
    moved = (shape[0], *shape[2:], shape[1])
    return rows.reshape(moved).movedim(-1, 1)


def needs_pair_bound(module: nn.Module, scheme: Scheme) -> bool:
    """True for a Linear or (non-transposed) convolution with 8-bit integer weights symmetric per
    output channel, other than a depthwise convolution (which the kernels accumulate in int32).
    Transposed convolutions run in float in ONNX Runtime; other weight schemes are not bounded."""
    if not isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d):
        return False
    if scheme.bits != 8 or not scheme.symmetric or scheme.axis != 0 or scheme.group_size:
        return False
    if scheme.float_format is not None:
        return False
    if isinstance(module, nn.Conv1d | nn.Conv2d):
        depthwise = module.groups > 1 and module.weight.shape[1] == 1
        return not (depthwise and module.out_channels == module.groups)
    return True


def pair_bounded_weight(weight: Tensor, scheme: Scheme) -> tuple[Tensor, QParams]:
    """(Ŵ, qparams): the weight on its pair-bounded 8-bit grid, Ŵ = S·q with q = the
    `pair_bounded_codes` of `reduction_rows` (W), in ``weight``'s shape. round(Ŵ/S) = q, so
    every later quantization of Ŵ with these qparams gives back the bounded codes."""
    rows = reduction_rows(weight.detach().float())
    codes, qp = pair_bounded_codes(rows, scheme)
    snapped = codes.float() * qp.scale.unsqueeze(1)
    return from_reduction_rows(snapped, weight.shape).to(weight.dtype), qp
