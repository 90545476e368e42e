"""A small conv net whose folded weights have dead channels: weights ≈ 1e-9, bias −1.

Real networks have them (channels that training switched off); they make a per-channel weight
scale tiny — |w|max / 127 ≈ 8e-12 — so the int32 bias b / (S_x·S_w) overflows (−1 / (S_x·8e-12)
≈ −3e13 for S_x = 1/255). Here they are put in on purpose and kept through training:

- ``stem`` (conv3x3 + BN + ReLU, 16 channels @ 28): channels ``STEM_DEAD`` are dead — their
  output, −1 before the ReLU, is 0 after it;
- ``block`` (a residual block: conv+BN+ReLU → conv+BN, + input, ReLU): channels ``BLOCK_DEAD`` of
  the second conv are dead *before the residual add*: the −1 reaches the sum, so a saturated bias
  changes the output visibly;
- then MaxPool2d(2) → conv3x3 + BN + ReLU (32 @ 14) → MaxPool2d(2) → conv3x3 + BN + ReLU (32 @ 7)
  → global average pool → flatten → Linear.

A dead channel: conv weights ±1e-9 (the sign of the initial weight), BatchNorm γ = 1, β = −1,
running mean 0 and variance 1, so BatchNorm folding gives w' = w·γ/√(σ² + ε) ≈ ±1e-9 and
b' = β − μ·γ/√(σ² + ε) = −1 exactly; training leaves them alone (their gradients are masked and
their running statistics reset afterwards).
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from demo.zoo.data import ZooData
from demo.zoo.training import fit

STEM_DEAD = (3, 11)
BLOCK_DEAD = (5,)
DEAD_WEIGHT = 1e-9
DEAD_BIAS = -1.0


class DeadChannelNet(nn.Module):
    """The network of the module docstring; built with its dead channels in place."""

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.pool = nn.MaxPool2d(2)
        self.down = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
        )
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)
        self.kill_channels()

    def dead_layers(self) -> list[tuple[nn.Conv2d, nn.BatchNorm2d, tuple[int, ...]]]:
        """(conv, its BatchNorm, the dead output channels) for each layer with dead channels."""
        stem_conv, stem_bn = cast(nn.Conv2d, self.stem[0]), cast(nn.BatchNorm2d, self.stem[1])
        return [(stem_conv, stem_bn, STEM_DEAD), (self.conv2, self.bn2, BLOCK_DEAD)]

    @torch.no_grad()
    def kill_channels(self) -> None:
        """Set the dead channels' parameters and running statistics (see the module doc)."""
        for conv, bn, channels in self.dead_layers():
            for c in channels:
                sign = torch.where(conv.weight[c] < 0, -1.0, 1.0)
                conv.weight[c] = DEAD_WEIGHT * sign
                bn.weight[c], bn.bias[c] = 1.0, DEAD_BIAS
                bn.running_mean[c], bn.running_var[c] = 0.0, 1.0  # type: ignore[index]

    def freeze_dead_channels(self) -> list[torch.utils.hooks.RemovableHandle]:
        """Gradient hooks that zero the dead channels' gradients (remove them after training)."""
        handles = []
        for conv, bn, channels in self.dead_layers():
            mask = torch.ones(conv.out_channels)
            mask[list(channels)] = 0.0
            handles.append(conv.weight.register_hook(lambda g, m=mask: g * m.view(-1, 1, 1, 1)))
            for p in (bn.weight, bn.bias):
                handles.append(p.register_hook(lambda g, m=mask: g * m))
        return handles

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        y = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(y)) + x)
        x = self.down(self.pool(x))
        return self.fc(torch.flatten(self.gap(x), 1))


def train_dead_channel_net(
    model: DeadChannelNet, data: ZooData, epochs: int = 3, seed: int = 0
) -> DeadChannelNet:
    """Train with the dead channels frozen (no weight decay), then reset their statistics."""
    handles = model.freeze_dead_channels()
    try:
        fit(model, data, epochs=epochs, lr=3e-3, seed=seed)
    finally:
        for h in handles:
            h.remove()
    model.kill_channels()
    return model.eval()
