"""The zoo: small networks of real architectures, trained at run time on real data, cached.

``ZOO[name]`` is a :class:`ZooEntry` — how to build the network (seeded initial weights), load
its data (train / test / calibration), train it, and score it (accuracy in percent or PSNR in dB
on the test split), with the fp32 floor the tests assert and the operation kinds the network
exists to cover. :func:`load_trained` returns the trained network, from ``cache_dir`` when it has
been trained before (pytest's cache in the tests)::

    from demo.zoo.registry import ZOO, load_trained

    t = load_trained("resnet18", cache_dir)        # Trained(entry, model, data, train_seconds)
    t.metric()                                     # fp32 accuracy on the test split, percent
    x = t.data.example_input(4)                    # a batch of test inputs
    calib = t.data.calibration_batches(256, 64)    # calibration inputs (training split)
    outputs = my_quantized_program(t.data.x_test)  # any callable
    t.entry.score(outputs, t.data)                 # the same metric for those outputs

MobileNetV2 with ImageNet weights is not here (it is not trained): see ``demo.zoo.mobilenet_v2``
and ``demo.zoo.views``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn

from demo.zoo import audio1d, deadchannels, digits, efficientnet, opsnet, resnet, unet
from demo.zoo import data as data_module
from demo.zoo import training as training_module
from demo.zoo.data import (
    ZooData,
    load_digits,
    load_mnist,
    load_mnist_denoising,
    load_mnist_sequences,
    load_mnist_upscaled,
)
from demo.zoo.metrics import accuracy, psnr
from demo.zoo.training import fit, predict, seeded

SEED = 0


@dataclass(frozen=True)
class ZooEntry:
    """One network of the zoo. ``metric`` is "accuracy" (percent, higher is better) or "psnr"
    (dB, higher is better); ``threshold`` is the fp32 floor asserted by the tests (measured, with
    a margin); ``ops`` the operation kinds (``demo.zoo.inventory`` names) it must contain."""

    name: str
    summary: str
    build: Callable[[], nn.Module]
    load_data: Callable[[], ZooData]
    train: Callable[[nn.Module, ZooData], nn.Module]
    metric: str
    threshold: float
    ops: tuple[str, ...]

    def score(self, outputs: Tensor, data: ZooData) -> float:
        """The metric of ``outputs`` (the model's outputs on ``data.x_test``, in order)."""
        if self.metric == "accuracy":
            return accuracy(outputs, data.y_test)
        if self.metric == "psnr":
            return psnr(outputs, data.y_test)
        raise ValueError(f"unknown metric {self.metric!r} of zoo entry {self.name!r}")

    def evaluate(self, model: nn.Module | Callable[..., Tensor], data: ZooData) -> float:
        """The metric of ``model`` (any callable taking a batch and ``data.kwargs``) on the
        test split."""
        return self.score(predict(model, data.x_test, kwargs=data.kwargs), data)

    def fresh(self) -> nn.Module:
        """The untrained network with its seeded initial weights (the global RNG untouched)."""
        with seeded(SEED):
            return self.build()


@dataclass
class Trained:
    """A trained zoo network with its data. ``train_seconds`` is None when loaded from cache."""

    entry: ZooEntry
    model: nn.Module
    data: ZooData
    train_seconds: float | None

    def metric(self) -> float:
        """The fp32 metric on the test split."""
        return self.entry.evaluate(self.model, self.data)


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        ZooEntry(
            "digits",
            "the digits CNN (sklearn 8x8 digits): conv+BN+ReLU, residual add, max-pool, "
            "2x2 transposed conv, global average pool, linear",
            digits.DigitsCNN,
            load_digits,
            partial(digits.train, epochs=20, seed=SEED),
            "accuracy",
            95.0,
            ("Conv2d", "ConvTranspose2d", "MaxPool2d", "add", "AdaptiveAvgPool2d", "flatten"),
        ),
        ZooEntry(
            "resnet18",
            "ResNet-18 layout (BasicBlocks 2-2-2-2, widths 8-16-32-64) on MNIST upscaled to "
            "112x112: 7x7/2 stem, 3x3/2 max-pool with padding on the 56x56 map, 1x1/2 conv "
            "shortcuts, residual adds",
            resnet.ResNet18,
            load_mnist_upscaled,
            partial(fit, epochs=3, lr=3e-3, seed=SEED),
            "accuracy",
            96.0,
            ("Conv2d[stride]", "MaxPool2d[padding]", "add", "AdaptiveAvgPool2d", "flatten"),
        ),
        ZooEntry(
            "unet",
            "U-Net denoising auto-encoder on MNIST (σ = 0.4): reflect padding, max-pool, "
            "ConvTranspose2d, skip concatenations, nn.Upsample and F.interpolate (nearest), "
            "LeakyReLU, global residual, clamp",
            unet.DenoisingUNet,
            load_mnist_denoising,
            partial(unet.train_denoiser, epochs=2, seed=SEED),
            "psnr",
            19.5,
            (
                "ConvTranspose2d[stride]",
                "cat",
                "Upsample[nearest]",
                "interpolate[nearest]",
                "LeakyReLU",
                "Conv2d[padding_mode=reflect]",
                "clamp",
            ),
        ),
        ZooEntry(
            "efficientnet",
            "EfficientNet / MobileNetV3 stack on MNIST: TF-same ZeroPad2d / F.pad before "
            "stride-2 convs, depthwise MBConv, SE with sigmoid and hardsigmoid gates (x * gate), "
            "SiLU, hardswish, x.view(x.size(0), -1) head",
            efficientnet.TinyEfficientNet,
            load_mnist,
            partial(fit, epochs=5, lr=3e-3, seed=SEED),
            "accuracy",
            95.5,
            (
                "ZeroPad2d",
                "pad",
                "Conv2d[depthwise]",
                "Sigmoid",
                "Hardsigmoid",
                "SiLU",
                "Hardswish",
                "mul",
                ".mean",
                ".view",
                ".size",
                "Dropout",
            ),
        ),
        ZooEntry(
            "audio1d",
            "1-D CNN on sequential MNIST (784-sample signals): Conv1d (strided, dilated), "
            "BatchNorm1d after ReLU, MaxPool1d, AvgPool1d, AdaptiveAvgPool1d, tanh embedding, "
            "forward(x, embed=False)",
            audio1d.AudioCNN1d,
            load_mnist_sequences,
            partial(fit, epochs=6, lr=3e-3, seed=SEED),
            "accuracy",
            96.0,
            (
                "Conv1d[dilation]",
                "BatchNorm1d",
                "MaxPool1d",
                "AvgPool1d",
                "AdaptiveAvgPool1d",
                "getitem",
                "tanh",
            ),
        ),
        ZooEntry(
            "deadchannels",
            "conv net on MNIST whose folded weights have dead channels (|w| = 1e-9, bias -1), "
            "in the stem (before ReLU) and before a residual add",
            deadchannels.DeadChannelNet,
            load_mnist,
            partial(deadchannels.train_dead_channel_net, epochs=5, seed=SEED),
            "accuracy",
            95.5,
            ("Conv2d", "BatchNorm2d", "add", "relu"),
        ),
        ZooEntry(
            "opsnet",
            "op-coverage net on MNIST: padding modes reflect/replicate/circular, groups, "
            "dilation, GELU, LeakyReLU, hardtanh, ReLU6, clamp, tanh, sigmoid, max-pool with "
            "padding + ceil_mode, AvgPool2d, torch.mean, x[:, None], x[..., 1:], squeeze, "
            "unsqueeze, permute, transpose, ConvTranspose1d, cat",
            opsnet.OpsNet,
            load_mnist,
            partial(fit, epochs=3, lr=3e-3, seed=SEED),
            "accuracy",
            95.5,
            (
                "Conv2d[padding_mode=reflect]",
                "Conv2d[padding_mode=replicate]",
                "Conv2d[padding_mode=circular]",
                "Conv2d[groups]",
                "Conv2d[dilation]",
                "GELU",
                "LeakyReLU",
                "hardtanh",
                "ReLU6",
                "clamp",
                "tanh",
                "sigmoid",
                "MaxPool2d[padding]",
                "MaxPool2d[ceil_mode]",
                "AvgPool2d",
                "mean",
                "getitem",
                ".squeeze",
                ".unsqueeze",
                ".permute",
                ".transpose",
                "ConvTranspose1d[stride]",
                "Conv1d",
                "cat",
                "mul",
            ),
        ),
    )
}


def _atomic_save(obj: object, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _code_file(fn: Callable[..., object]) -> str:
    target = fn.func if isinstance(fn, partial) else fn
    module = sys.modules[target.__module__]
    return str(inspect.getsourcefile(module))


def _cache_path(entry: ZooEntry, cache_dir: str | Path) -> Path:
    """``<cache_dir>/<name>-<key>.pt``, the key 12 hex digits of a sha256 of the source files
    of the code that makes the weights (the network's module, the data and training modules, the
    training recipe's module) and of the recipe's arguments."""
    files = {_code_file(entry.build), _code_file(entry.load_data), _code_file(entry.train)}
    files |= {str(inspect.getsourcefile(data_module)), str(inspect.getsourcefile(training_module))}
    h = hashlib.sha256(entry.name.encode())
    for f in sorted(files):
        h.update(Path(f).read_bytes())
    if isinstance(entry.train, partial):
        h.update(repr((entry.train.args, sorted(entry.train.keywords.items()))).encode())
    return Path(cache_dir) / f"{entry.name}-{h.hexdigest()[:12]}.pt"


def load_trained(name: str, cache_dir: str | Path | None = None) -> Trained:
    """The zoo network ``name`` trained on its data (seeded, deterministic for a thread count).

    With ``cache_dir``, the trained state dict is read from ``<cache_dir>/<name>-<key>.pt`` when
    present, else trained and written there (atomically), with its training time beside it in
    ``<name>-<key>.json``; ``key`` fingerprints the source of the network's module and of the
    data and training code, so an edited network is retrained. The caller's global RNG is never
    touched."""
    if name not in ZOO:
        raise ValueError(f"unknown zoo network {name!r}; expected one of {sorted(ZOO)}")
    entry = ZOO[name]
    data = entry.load_data()
    model = entry.fresh()
    path = _cache_path(entry, cache_dir) if cache_dir is not None else None
    if path is not None and path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return Trained(entry, model.eval(), data, None)
    start = time.perf_counter()
    entry.train(model, data)
    seconds = time.perf_counter() - start
    model.eval()
    if path is not None:
        _atomic_save(model.state_dict(), path)
        info = {"train_seconds": seconds, "threads": torch.get_num_threads()}
        path.with_suffix(".json").write_text(json.dumps(info), encoding="utf-8")
    return Trained(entry, model, data, seconds)


def cached_train_seconds(name: str, cache_dir: str | Path) -> float | None:
    """The training time recorded when ``name`` was trained into ``cache_dir`` (None if never)."""
    info = _cache_path(ZOO[name], cache_dir).with_suffix(".json")
    if not info.exists():
        return None
    return float(json.loads(info.read_text(encoding="utf-8"))["train_seconds"])
