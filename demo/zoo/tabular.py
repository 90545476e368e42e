"""Tabular MLPs on scikit-learn's ``wine`` and ``breast_cancer``: standardised, signed features.

The models for QAT's sign handling (issue 10): every input feature is standardised with the
training split's mean and standard deviation, so about half of the inputs are negative, and the
logits are signed too. An activation quantizer that clipped negative values would lose most of
the information there.

    data = load_tabular("wine", seed=0)
    model = train(seeded_init(TabularMLP(data.features, data.classes), 0), data)
    results = qat_experiment("wine", seed=0)    # fp32, round-to-nearest and LSQ/PACT/LSQ+ QAT

Everything is seeded through generators (split, initial weights, batches); the global RNG is not
touched. One model trains in well under a second.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import zeropoint as zp
from demo.zoo.seeding import seeded_init
from zeropoint.nn.learnable import pact_regularizer

DATASETS = ("wine", "breast_cancer")
PRESETS = {"W4A4": zp.w4a4_qat, "W2A2": zp.w2a2_qat}
METHODS = ("lsq", "pact", "lsq+")


@dataclass(frozen=True)
class TabularData:
    name: str
    x_train: Tensor  # (N, features), standardised with the training split's statistics
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    classes: int

    @property
    def features(self) -> int:
        return self.x_train.shape[1]


def load_tabular(name: str, seed: int = 0, test_fraction: float = 0.3) -> TabularData:
    """``wine`` (178 × 13, 3 classes) or ``breast_cancer`` (569 × 30, 2 classes): a stratified
    train/test split shuffled with ``seed``, features standardised by the training split."""
    from sklearn import datasets

    loaders = {"wine": datasets.load_wine, "breast_cancer": datasets.load_breast_cancer}
    if name not in loaders:
        raise ValueError(f"unknown tabular data set {name!r}: expected one of {DATASETS}")
    raw = loaders[name]()
    x = torch.tensor(raw.data, dtype=torch.float64)
    y = torch.tensor(raw.target, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    train_idx, test_idx = [], []
    for c in range(int(y.max()) + 1):  # stratified: the same fraction of every class
        idx = (y == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        n_test = round(test_fraction * idx.numel())
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    tr = torch.cat(train_idx)[torch.randperm(sum(t.numel() for t in train_idx), generator=g)]
    te = torch.cat(test_idx)
    mean, std = x[tr].mean(0), x[tr].std(0).clamp(min=1e-12)

    def norm(rows: Tensor) -> Tensor:
        return ((x[rows] - mean) / std).float()

    return TabularData(name, norm(tr), y[tr], norm(te), y[te], int(y.max()) + 1)


class TabularMLP(nn.Module):
    """features → hidden → hidden → hidden → classes, ReLU between (four Linear layers, so
    that two stay at the low width when the first and last are kept at 8 bits)."""

    def __init__(self, features: int, classes: int, hidden: int = 32) -> None:
        super().__init__()
        self.fc1 = nn.Linear(features, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        x = F.relu(self.fc3(x))
        return self.out(x)


def train(
    model: nn.Module,
    data: TabularData,
    epochs: int = 60,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    batch_size: int = 64,
    seed: int = 0,
    extra_loss: Callable[[nn.Module], Tensor] | None = None,
) -> nn.Module:
    """AdamW with cosine decay; parameter groups from `zp.qat_param_groups`, so weight decay
    never reaches a QAT model's quantizer steps and clips."""
    g = torch.Generator().manual_seed(seed)
    groups = zp.qat_param_groups(model, weight_decay=weight_decay)
    opt = torch.optim.AdamW(groups, lr=lr, foreach=True)
    n = data.x_train.shape[0]
    steps = epochs * ((n + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            if extra_loss is not None:
                loss = loss + extra_loss(model)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return model


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Top-1 accuracy in percent."""
    model.eval()
    return 100.0 * float((model(x).argmax(1) == y).float().mean())


def trained_mlp(name: str, seed: int = 0) -> tuple[TabularMLP, TabularData]:
    """The fp32 MLP for data set ``name``, split, initialised and trained with ``seed``."""
    data = load_tabular(name, seed)
    model = seeded_init(TabularMLP(data.features, data.classes), seed)
    train(model, data, seed=seed)
    return model, data


def round_to_nearest(model: nn.Module, data: TabularData, preset: str) -> float:
    """Post-training round-to-nearest at the preset's widths (min-max ranges from the training
    split, no training): the baseline QAT must beat."""
    config = PRESETS[preset]().with_(learnable=None, activation_observer="minmax")
    q = zp.quantize_static(model, [data.x_train], config, progress=False)
    return accuracy(q, data.x_test, data.y_test)


def qat(
    model: nn.Module,
    data: TabularData,
    preset: str,
    method: str,
    seed: int = 0,
    epochs: int = 30,
    lr: float = 1e-3,
) -> float:
    """Test accuracy after QAT of the fp32 ``model`` at ``preset`` ("W4A4", "W2A2") with
    ``method`` ("lsq", "pact", "lsq+"), converted to the frozen simulation."""
    q = zp.prepare_qat(model, PRESETS[preset](method), example_inputs=data.x_train)
    extra = pact_regularizer if method == "pact" else None
    train(q, data, epochs=epochs, lr=lr, seed=seed + 1, extra_loss=extra)
    return accuracy(zp.convert(q), data.x_test, data.y_test)


def qat_experiment(
    name: str,
    seed: int = 0,
    presets: Iterable[str] = ("W4A4", "W2A2"),
    methods: Iterable[str] = METHODS,
) -> dict[str, float]:
    """{"fp32": acc, "W4A4 RTN": acc, "W4A4 lsq": acc, ...} for one data set and seed."""
    model, data = trained_mlp(name, seed)
    results = {"fp32": accuracy(model, data.x_test, data.y_test)}
    for preset in presets:
        results[f"{preset} RTN"] = round_to_nearest(model, data, preset)
        for method in methods:
            results[f"{preset} {method}"] = qat(model, data, preset, method, seed)
    return results


def qat_table(seeds: Iterable[int] = range(5)) -> dict[str, dict[str, float]]:
    """Mean accuracies over ``seeds`` for every data set: {data set: {column: mean}}."""
    table: dict[str, dict[str, float]] = {}
    seeds = list(seeds)
    for name in DATASETS:
        runs = [qat_experiment(name, s) for s in seeds]
        table[name] = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
    return table


if __name__ == "__main__":
    import time

    start = time.perf_counter()
    for name, row in qat_table().items():
        print(name, {k: round(v, 2) for k, v in row.items()})
    print(f"{time.perf_counter() - start:.1f} s")
