"""The op-coverage network: every remaining operation kind of issue 8 in one small MNIST
classifier, each used the way real models use it.

For an (N, 1, 28, 28) input:

    conv_reflect  Conv2d(1, 8, 3, padding 1, padding_mode="reflect") → GELU            8 @ 28
    conv_groups   Conv2d(8, 16, 3, padding 1, groups 2, padding_mode="replicate")
                  → BN → LeakyReLU(0.1)                                               16 @ 28
    pool_max      MaxPool2d(3, stride 2, padding 1, ceil_mode=True)                   16 @ 15
    conv_dilated  Conv2d(16, 16, 3, padding 2, dilation 2, padding_mode="circular")
                  → BN → F.hardtanh(−2, 2)                                            16 @ 15
    pool_avg      AvgPool2d(2)                                                        16 @ 7
    ECA attention (Wang et al. 2020): g = torch.mean(x, dim=(2, 3)) → g[:, None] (N, 1, 16)
                  → Conv1d(1, 1, 3) → sigmoid → squeeze(1) → x * g.unsqueeze(-1).unsqueeze(-1)
    channel MLP   x.permute(0, 2, 3, 1) → Linear(16, 16) → tanh → permute(0, 3, 1, 2), + x
    conv_relu6    Conv2d(16, 16, 1) → BN → ReLU6 (module)                             16 @ 7
    row branch    r = x.mean(dim=3) (N, 16, 7) → ConvTranspose1d(16, 8, 2, stride 2) (N, 8, 14)
                  → torch.clamp(0, 4) → r[..., 1:] (N, 8, 13) → r.transpose(1, 2) → flatten
    head          cat([x.flatten(1), r], 1) (N, 888) → Linear(888, 64) → ReLU6 → Linear(64, 10)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class OpsNet(nn.Module):
    """The network of the module docstring."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv_reflect = nn.Conv2d(1, 8, 3, padding=1, padding_mode="reflect")
        self.act_gelu = nn.GELU()
        self.conv_groups = nn.Conv2d(8, 16, 3, padding=1, groups=2, padding_mode="replicate")
        self.bn_groups = nn.BatchNorm2d(16)
        self.act_leaky = nn.LeakyReLU(0.1)
        self.pool_max = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.conv_dilated = nn.Conv2d(16, 16, 3, padding=2, dilation=2, padding_mode="circular")
        self.bn_dilated = nn.BatchNorm2d(16)
        self.pool_avg = nn.AvgPool2d(2)
        self.eca = nn.Conv1d(1, 1, 3, padding=1, bias=False)
        self.mlp = nn.Linear(16, 16)
        self.conv_relu6 = nn.Sequential(nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16), nn.ReLU6())
        self.up_rows = nn.ConvTranspose1d(16, 8, 2, stride=2)
        self.fc1 = nn.Linear(16 * 7 * 7 + 8 * 13, 64)
        self.act_fc = nn.ReLU6()
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act_gelu(self.conv_reflect(x))
        x = self.act_leaky(self.bn_groups(self.conv_groups(x)))
        x = self.pool_max(x)
        x = F.hardtanh(self.bn_dilated(self.conv_dilated(x)), -2.0, 2.0)
        x = self.pool_avg(x)
        g = torch.mean(x, dim=(2, 3))
        g = torch.sigmoid(self.eca(g[:, None])).squeeze(1)
        x = x * g.unsqueeze(-1).unsqueeze(-1)
        z = torch.tanh(self.mlp(x.permute(0, 2, 3, 1)))
        x = z.permute(0, 3, 1, 2) + x
        x = self.conv_relu6(x)
        r = torch.clamp(self.up_rows(x.mean(dim=3)), 0.0, 4.0)
        r = r[..., 1:].transpose(1, 2).flatten(1)
        h = torch.cat([x.flatten(1), r], dim=1)
        return self.fc2(self.act_fc(self.fc1(h)))
