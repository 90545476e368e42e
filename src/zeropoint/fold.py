"""Batch-norm folding: conv/linear followed by BN becomes one conv/linear (inference form).

For y = BN(W ∗ x + b) with per-channel γ, β, running mean μ, running variance σ², ε:

    s_c   = γ_c / √(σ²_c + ε)
    W'_c  = s_c · W_c                  (output channel c; for ConvTranspose the output channel
                                        is dimension 1 of the weight)
    b'_c  = s_c · (b_c − μ_c) + β_c

so that W' ∗ x + b' = BN(W ∗ x + b) exactly in real arithmetic (tested to 1e-5 in float32).
A following ReLU is untouched (conv+bn+relu → conv'+relu). The QAT form of folding, which uses
batch statistics while training, lives in `zeropoint.nn.convbn`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

Foldable = nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.ConvTranspose1d | nn.ConvTranspose2d


def bn_scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
    """(s, t) with BN(y) = s·y + t in inference mode: s = γ/√(σ² + ε), t = β − s·μ."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"{bn} has no running statistics (track_running_stats=False): cannot fold")
    var = bn.running_var.detach().double()
    mean = bn.running_mean.detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(var)
    s = gamma / torch.sqrt(var + bn.eps)
    return s, beta - s * mean


def output_channel_axis(layer: nn.Module) -> int:
    """The weight dimension that indexes output channels: 1 for transposed convs, else 0."""
    return (
        1 if isinstance(layer, nn.ConvTranspose1d | nn.ConvTranspose2d | nn.ConvTranspose3d) else 0
    )


def fold_bn(layer: Foldable, bn: nn.modules.batchnorm._BatchNorm) -> Foldable:
    """Fold ``bn`` into ``layer`` in place (weights and bias, computed in float64); returns it."""
    if not isinstance(layer, Foldable):
        raise TypeError(f"cannot fold batch norm into {type(layer).__name__}")
    axis = output_channel_axis(layer)
    weight = layer.weight
    groups = getattr(layer, "groups", 1)
    out_channels = weight.shape[axis] * (groups if axis == 1 else 1)
    if bn.num_features != out_channels:
        raise ValueError(
            f"batch norm has {bn.num_features} features but {type(layer).__name__} has "
            f"{out_channels} output channels"
        )
    s, t = bn_scale_shift(bn)
    w = weight.detach().double()
    if axis == 1 and groups > 1:
        # ConvTranspose weight (in, out/groups, k...): output channel g·(out/groups) + j
        w = w.reshape(groups, -1, *w.shape[1:])
        s_view = s.reshape(groups, 1, -1, *[1] * (w.dim() - 3))
        w = (w * s_view).reshape(weight.shape)
    else:
        shape = [1] * w.dim()
        shape[axis] = -1
        w = w * s.reshape(shape)
    b = layer.bias.detach().double() if layer.bias is not None else torch.zeros_like(s)
    with torch.no_grad():
        layer.weight.copy_(w.to(weight.dtype))
        new_bias = (s * b + t).to(weight.dtype)
        if layer.bias is None:
            layer.bias = nn.Parameter(new_bias)
        else:
            layer.bias.copy_(new_bias)
    return layer
