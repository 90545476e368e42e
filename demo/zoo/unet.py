"""A U-Net-style encoder–decoder (Ronneberger et al. 2015): a denoising auto-encoder for MNIST.

28x28 input (noisy digit) → 28x28 output (the clean digit), two resolutions down and back up:

    enc1   2x [conv3x3 (reflect padding) + BN + ReLU]             16 ch @ 28
    pool   MaxPool2d(2)                                                  → 14
    enc2   2x [conv3x3 + BN + ReLU]                               32 ch @ 14
    pool   MaxPool2d(2)                                                  → 7
    mid    conv3x3 + BN + LeakyReLU(0.1)                          64 ch @ 7
    up2    ConvTranspose2d(64, 32, 2, stride 2)                         → 14
    dec2   cat([up2, enc2]) → conv3x3 + BN + LeakyReLU            32 ch @ 14
    up1    nn.Upsample(×2, nearest) → conv1x1                     16 ch @ 28
    side   conv1x1(mid) → F.interpolate(×4, nearest)               4 ch @ 28
    dec1   cat([up1, enc1, side]) → conv3x3 + BN + LeakyReLU      16 ch @ 28
    out    clamp(x + conv1x1(dec1), 0, 1)                  (global residual, clipped to [0, 1])

Metric: PSNR of the output against the clean image (peak 1), averaged over the test images.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from demo.zoo.data import ZooData, add_noise
from demo.zoo.training import Batch, fit


def _conv_bn(
    cin: int, cout: int, act: nn.Module, padding_mode: Literal["zeros", "reflect"] = "zeros"
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False, padding_mode=padding_mode),
        nn.BatchNorm2d(cout),
        act,
    )


class DenoisingUNet(nn.Module):
    """The U-Net of the module docstring (``width`` = channels of the first level)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        self.enc1 = nn.Sequential(
            _conv_bn(1, w, nn.ReLU(), "reflect"), _conv_bn(w, w, nn.ReLU(), "reflect")
        )
        self.pool1 = nn.MaxPool2d(2)
        self.enc2 = nn.Sequential(_conv_bn(w, 2 * w, nn.ReLU()), _conv_bn(2 * w, 2 * w, nn.ReLU()))
        self.pool2 = nn.MaxPool2d(2)
        self.mid = _conv_bn(2 * w, 4 * w, nn.LeakyReLU(0.1))
        self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2)
        self.dec2 = _conv_bn(4 * w, 2 * w, nn.LeakyReLU(0.1))
        self.up1 = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(2 * w, w, 1)
        )
        self.side = nn.Conv2d(4 * w, 4, 1)
        self.dec1 = _conv_bn(2 * w + 4, w, nn.LeakyReLU(0.1))
        self.head = nn.Conv2d(w, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool1(e1))
        m = self.mid(self.pool2(e2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], dim=1))
        side = F.interpolate(self.side(m), scale_factor=4, mode="nearest")
        d1 = self.dec1(torch.cat([self.up1(d2), e1, side], dim=1))
        return torch.clamp(x + self.head(d1), 0.0, 1.0)


def train_denoiser(
    model: nn.Module, data: ZooData, epochs: int = 4, sigma: float = 0.4, seed: int = 0
) -> nn.Module:
    """MSE training on fresh noise of std ``sigma`` each batch (the clean targets are
    ``data.y_train``), AdamW + cosine decay; seeded."""

    def fresh_noise(_noisy: Tensor, clean: Tensor, g: torch.Generator) -> Batch:
        return add_noise(clean, sigma, g), clean

    return fit(model, data, F.mse_loss, epochs=epochs, lr=3e-3, seed=seed, make_batch=fresh_noise)
