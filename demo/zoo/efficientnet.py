"""An EfficientNet / MobileNetV3-style stack (Tan & Le 2019; Howard et al. 2019) for MNIST 28x28.

What makes these networks hard to deploy, at a size that trains in seconds:

- TF-"same" padding written out before every stride-2 conv, asymmetric where TensorFlow's rule
  makes it so (total padding max((⌈i/s⌉ − 1)·s + k − i, 0), the extra pixel on the right/bottom),
  once as ``nn.ZeroPad2d`` (stem) and once as ``F.pad`` in ``forward`` (stride-2 blocks); the
  padding is fixed for the 28x28 input, as timm's export-friendly static-same convs do;
- MBConv blocks: 1x1 expansion, depthwise kxk conv, squeeze-excitation, 1x1 linear projection,
  BatchNorm everywhere, a residual add when shape allows;
- squeeze-excitation as ``x * gate``: ``x.mean((2, 3), keepdim=True)`` → 1x1 conv → act → 1x1
  conv → gate (sigmoid with SiLU inside, EfficientNet; hardsigmoid with ReLU inside, MobileNetV3),
  a per-channel gate broadcast over the map;
- swish / SiLU and hardswish activations;
- a head that flattens with ``x.view(x.size(0), -1)`` before dropout and the linear classifier.

Layout (28x28 input): stem ZeroPad2d(0,1,0,1) + conv3x3/2 + BN + SiLU (16 @ 14) → MBConv(16→16,
e1, k3, SE-sigmoid, SiLU) → MBConv(16→24, e4, k5/2, F.pad(1,2,1,2), SE-hardsigmoid, hardswish)
(@ 7) → MBConv(24→24, e4, k3, SE-hardsigmoid, hardswish) → MBConv(24→40, e4, k3/2, F.pad(1,1,1,1),
SE-hardsigmoid, hardswish) (@ 4) → conv1x1 64 + BN + hardswish → global average pool →
view(N, −1) → Dropout(0.2) → Linear(64, 10).
"""

from __future__ import annotations

import math

from torch import Tensor, nn
from torch.nn import functional as F


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "SAME" padding of one spatial dim: (before, after), the odd pixel after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SqueezeExcite(nn.Module):
    """x * gate(conv_expand(act(conv_reduce(mean_hw(x))))), the gate per channel."""

    def __init__(self, channels: int, reduced: int, act: nn.Module, gate: nn.Module) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1)
        self.act = act
        self.conv_expand = nn.Conv2d(reduced, channels, 1)
        self.gate = gate

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.conv_expand(self.act(self.conv_reduce(s)))
        return x * self.gate(s)


class MBConv(nn.Module):
    """Inverted residual with squeeze-excitation. ``pad`` (left, right, top, bottom) is applied
    with ``F.pad`` before the depthwise conv (which then has no padding of its own); None means
    symmetric 'same' padding inside the conv (stride 1)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        expand: int,
        kernel: int,
        stride: int,
        act: type[nn.Module],
        se_gate: str,
        pad: tuple[int, int, int, int] | None = None,
    ) -> None:
        super().__init__()
        hidden = cin * expand
        self.pad = pad
        self.expand = (
            nn.Sequential(nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), act())
            if expand != 1
            else nn.Identity()
        )
        self.dw = nn.Conv2d(
            hidden, hidden, kernel, stride, 0 if pad else kernel // 2, groups=hidden, bias=False
        )
        self.bn_dw = nn.BatchNorm2d(hidden)
        self.act_dw = act()
        reduced = max(4, cin // 4)
        if se_gate == "sigmoid":
            self.se = SqueezeExcite(hidden, reduced, nn.SiLU(), nn.Sigmoid())
        elif se_gate == "hardsigmoid":
            self.se = SqueezeExcite(hidden, reduced, nn.ReLU(), nn.Hardsigmoid())
        else:
            raise ValueError(f"se_gate must be 'sigmoid' or 'hardsigmoid', got {se_gate!r}")
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = self.expand(x)
        if self.pad is not None:
            y = F.pad(y, self.pad)
        y = self.act_dw(self.bn_dw(self.dw(y)))
        y = self.project(self.se(y))
        return x + y if self.residual else y


class TinyEfficientNet(nn.Module):
    """The stack of the module docstring, for (N, 1, 28, 28) inputs."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.2) -> None:
        super().__init__()
        p28 = tf_same_padding(28, 3, 2)  # (0, 1): asymmetric
        self.stem = nn.Sequential(
            nn.ZeroPad2d((*p28, *p28)),  # (left, right, top, bottom)
            nn.Conv2d(1, 16, 3, 2, 0, bias=False),
            nn.BatchNorm2d(16),
            nn.SiLU(),
        )
        p14 = tf_same_padding(14, 5, 2)  # (1, 2)
        p7 = tf_same_padding(7, 3, 2)  # (1, 1)
        self.blocks = nn.Sequential(
            MBConv(16, 16, 1, 3, 1, nn.SiLU, "sigmoid"),
            MBConv(16, 24, 4, 5, 2, nn.Hardswish, "hardsigmoid", pad=(*p14, *p14)),
            MBConv(24, 24, 4, 3, 1, nn.Hardswish, "hardsigmoid"),
            MBConv(24, 40, 4, 3, 2, nn.Hardswish, "hardsigmoid", pad=(*p7, *p7)),
        )
        self.head = nn.Sequential(
            nn.Conv2d(40, 64, 1, bias=False), nn.BatchNorm2d(64), nn.Hardswish()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.head(self.blocks(self.stem(x)))
        x = self.pool(x)
        x = x.view(x.size(0), -1)
        return self.classifier(self.dropout(x))
