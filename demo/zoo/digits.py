"""The digits CNN: scikit-learn's 8x8 handwritten digits, and a small CNN trained on them (seeded).

The network has every structure the integer engine must handle: conv+bn+relu blocks, a residual
add, max pooling, a 2x2 stride-2 transposed-conv up-sampling block, global average pooling and a
linear head. Trained at run time in a few seconds to ~98% test accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from demo.zoo.seeding import seeded_init
from zeropoint import qat_param_groups


@dataclass(frozen=True)
class DigitsData:
    x_train: Tensor  # (N, 1, 8, 8), pixels scaled to [0, 1]
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor

    def calibration_batches(self, n: int = 256, batch_size: int = 64) -> list[Tensor]:
        """The first ``n`` training images in batches (the usual PTQ calibration set)."""
        x = self.x_train[:n]
        return [x[i : i + batch_size] for i in range(0, x.shape[0], batch_size)]


def load_digits_data(test_fraction: float = 0.2, seed: int = 0) -> DigitsData:
    """The 1797 digits of scikit-learn, shuffled with ``seed`` and split train/test."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    n_test = round(test_fraction * x.shape[0])
    return DigitsData(x[n_test:], y[n_test:], x[:n_test], y[:n_test])


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + x)


class DigitsCNN(nn.Module):
    """stem conv+bn+relu → residual block → maxpool → conv+bn+relu → transposed conv (2x2,
    stride 2) + bn + relu → conv+bn+relu → global average pool → linear."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.block = ResidualBlock(width)
        self.pool = nn.MaxPool2d(2)
        self.down = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
        )
        self.up = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 2, stride=2, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        self.mix = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
        )
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(2 * width, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block(self.stem(x))
        x = self.down(self.pool(x))
        x = self.mix(self.up(x))
        return self.head(torch.flatten(self.gap(x), 1))


def train(
    model: nn.Module,
    data: DigitsData,
    epochs: int = 30,
    lr: float = 3e-3,
    batch_size: int = 64,
    seed: int = 0,
    extra_loss: object = None,
    progress: str | None = None,
    weight_decay: float = 0.0,
) -> nn.Module:
    """Adam with cosine decay on the training split; deterministic for a given seed (and thread
    count). ``progress``: a description to show a progress bar over the epochs. Parameter
    groups from `zp.qat_param_groups`: ``weight_decay`` never applies to a QAT model's
    quantizer steps and clips."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(qat_param_groups(model, weight_decay=weight_decay), lr=lr)
    steps = epochs * ((data.x_train.shape[0] + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    epoch_iter: Any = range(epochs)
    if progress:
        from tqdm.auto import tqdm

        epoch_iter = tqdm(epoch_iter, desc=progress, unit="epoch", leave=False)
    for _ in epoch_iter:
        order = torch.randperm(data.x_train.shape[0], generator=g)
        for i in range(0, order.numel(), batch_size):
            idx = order[i : i + batch_size]
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            if callable(extra_loss):
                loss = loss + extra_loss(model)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return model


@torch.no_grad()
def accuracy(model: nn.Module | object, x: Tensor, y: Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy in percent (model: any callable from images to logits)."""
    if isinstance(model, nn.Module):
        model.eval()
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        logits = model(x[i : i + batch_size])  # type: ignore[operator]
        correct += int((torch.as_tensor(logits).argmax(1) == y[i : i + batch_size]).sum())
    return 100.0 * correct / x.shape[0]


def trained_digits_cnn(
    seed: int = 0, epochs: int = 30, width: int = 16
) -> tuple[DigitsCNN, DigitsData]:
    """A DigitsCNN trained on the digits split (initial weights, split and batches all seeded
    through generators: the global RNG is not touched)."""
    data = load_digits_data(seed=seed)
    model = seeded_init(DigitsCNN(width), seed)
    train(model, data, epochs=epochs, seed=seed)
    return model, data
