"""The per-channel clip that cross-layer equalization puts in place of a ReLU6."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ChannelClip(nn.Module):
    """y = min(max(x, 0), u_c) with one upper bound u_c per channel.

    ReLU6 after a layer whose output channel c was divided by s_c (cross-layer equalization)
    becomes this clip with u_c = 6 / s_c, so that the model computes exactly what it computed
    before: ReLU6(y_c) / s_c = min(max(y_c / s_c, 0), 6 / s_c).

    ``trailing``: the number of dimensions after the channel axis (2 for NCHW conv outputs, 0
    for channel-last linear outputs).

    The workflows' graph capture keeps it whole (a leaf, like ``nn.ReLU6``): after a layer it
    fuses like any clip — the layer requantizes straight onto the grid of the quantizer after
    the clip, with the envelope [min lᵢ, max uᵢ] in its output clamp, and the per-channel clamp
    then runs on those codes (exact: quantization is monotone, so Q(clamp(y, lᵢ, uᵢ)) =
    clamp(Q(y), Q(lᵢ), Q(uᵢ)), and re-quantizing a clamped grid value gives that)."""

    lower: Tensor
    upper: Tensor

    def __init__(self, upper: Tensor, trailing: int = 2) -> None:
        super().__init__()
        self.register_buffer("lower", torch.zeros(upper.shape[0]))
        self.register_buffer("upper", upper.detach().clone().to(torch.float32))
        self.trailing = trailing
        self.view = (-1, *([1] * trailing))

    def forward(self, x: Tensor) -> Tensor:
        # one torch.clamp: a graph capture sees an activation (fused with the layer before it)
        return torch.clamp(x, self.lower.reshape(self.view), self.upper.reshape(self.view))

    def rows(self, y: Tensor) -> Tensor:
        """The clip on rows (n, C): channel last."""
        return torch.minimum(torch.clamp(y, min=0.0), self.upper)

    def extra_repr(self) -> str:
        u = self.upper
        return f"channels={u.numel()}, upper=[{u.min():.4g}, {u.max():.4g}]"


__all__ = ["ChannelClip"]
