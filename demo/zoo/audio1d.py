"""A 1-D convolutional "audio" network (M5 / keyword-spotting style) on sequential MNIST.

The signal: each MNIST digit read row after row as one 784-sample waveform (sequential MNIST, a
standard 1-D benchmark), so a pixel's vertical neighbours are 28 samples away — the dilated
conv below sees them. Layout, for an (N, 784) input:

    x[:, None]                                                   (N, 1, 784)   indexing
    conv1  Conv1d(1, 16, 7, stride 2, padding 3) → ReLU → BatchNorm1d      392   BN AFTER ReLU
    pool1  MaxPool1d(2)                                                     196
    conv2  Conv1d(16, 32, 3, padding 7, dilation 7) → ReLU → BatchNorm1d   196   (7 = one row)
    pool2  MaxPool1d(2)                                                      98
    conv3  Conv1d(32, 32, 5, padding 2) → ReLU → BatchNorm1d                 98
    pool3  AvgPool1d(2)                                                      49
    conv4  Conv1d(32, 48, 3, padding 1) → ReLU → BatchNorm1d                 49
    pool4  AdaptiveAvgPool1d(4) → flatten                                 (N, 192)
    embed  Linear(192, 32) → tanh                                          (N, 32)
    ``forward(x, embed=False)``: the 32-d embedding when ``embed`` is True, else
    classifier Linear(32, 10).

The Python flag on a forward argument is deliberate: torch.fx captures it only with
``concrete_args={"embed": False}``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _block(cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv1d(cin, cout, kernel, stride, padding, dilation=dilation),
        nn.ReLU(),
        nn.BatchNorm1d(cout),
    )


class AudioCNN1d(nn.Module):
    """The 1-D network of the module docstring."""

    def __init__(self, num_classes: int = 10, embedding: int = 32) -> None:
        super().__init__()
        self.conv1 = _block(1, 16, 7, stride=2)
        self.pool1 = nn.MaxPool1d(2)
        self.conv2 = _block(16, 32, 3, dilation=7)
        self.pool2 = nn.MaxPool1d(2)
        self.conv3 = _block(32, 32, 5)
        self.pool3 = nn.AvgPool1d(2)
        self.conv4 = _block(32, 48, 3)
        self.pool4 = nn.AdaptiveAvgPool1d(4)
        self.embed = nn.Linear(48 * 4, embedding)
        self.classifier = nn.Linear(embedding, num_classes)

    def forward(self, x: Tensor, embed: bool = False) -> Tensor:
        x = x[:, None]
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(x))
        x = self.pool3(self.conv3(x))
        x = self.pool4(self.conv4(x))
        e = torch.tanh(self.embed(torch.flatten(x, 1)))
        if embed:
            return e
        return self.classifier(e)
