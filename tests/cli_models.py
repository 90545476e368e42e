"""Models and data for the command-line tests, named as users name theirs:
``tests.cli_models:build_model`` and ``tests.cli_models:calib_batches``."""

from __future__ import annotations

import torch
from torch import nn


class SmallNet(nn.Module):
    """conv + BN + ReLU, a residual add, global average, linear: 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.bn1(self.conv1(x)))
        b = torch.relu(self.conv2(a)) + a
        return self.fc(b.mean((2, 3)))


def build_model() -> SmallNet:
    g = torch.Generator().manual_seed(0)
    model = SmallNet()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        model.bn1.running_mean.copy_(torch.randn(8, generator=g) * 0.1)
        model.bn1.running_var.copy_(torch.rand(8, generator=g) + 0.5)
    return model


def calib_batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(8, 3, 12, 12, generator=g) for _ in range(3)]


def labelled_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    return [
        (torch.randn(8, 3, 12, 12, generator=g), torch.randint(0, 10, (8,), generator=g))
        for _ in range(2)
    ]


def wrong_shape_batches() -> list[torch.Tensor]:
    return [torch.randn(4, 5, 12, 12)]


model_instance = build_model()
not_a_model = 42


class Mlp(nn.Module):
    """Two linear layers of 64 inputs: weight-only int4 in groups of 32 fits them."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def build_mlp() -> Mlp:
    torch.manual_seed(0)
    return Mlp()


def mlp_batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randn(8, 64, generator=g) for _ in range(2)]
