"""Seeded training and evaluation loops shared by the zoo's networks.

Training never touches the caller's global RNG: initial weights are drawn inside
``torch.random.fork_rng`` with ``torch.manual_seed(seed)`` (:func:`seeded`), the batch order and
the noise come from a ``torch.Generator``, and dropout runs inside a forked, seeded RNG too. The
result is deterministic for a given seed and thread count (the tests use one thread).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from demo.zoo.data import ZooData

Batch = tuple[Tensor, Tensor]


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with the global CPU RNG seeded to ``seed``, restoring the caller's RNG
    state afterwards (for module initialisation and dropout, which only use the global RNG)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def fit(
    model: nn.Module,
    data: ZooData,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    epochs: int = 3,
    lr: float = 3e-3,
    batch_size: int = 64,
    seed: int = 0,
    weight_decay: float = 0.0,
    make_batch: Callable[[Tensor, Tensor, torch.Generator], Batch] | None = None,
) -> nn.Module:
    """AdamW with a cosine learning-rate decay over ``epochs`` passes of the training split in
    a seeded random order. ``make_batch(x, y, generator)`` may transform each batch (e.g. fresh
    noise for a denoiser). Calls the model with ``data.kwargs``; returns it in eval mode."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay
    )
    n = data.x_train.shape[0]
    steps = epochs * ((n + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    with seeded(seed):
        for _ in range(epochs):
            order = torch.randperm(n, generator=g)
            for i in range(0, n, batch_size):
                idx = order[i : i + batch_size]
                x, y = data.x_train[idx], data.y_train[idx]
                if make_batch is not None:
                    x, y = make_batch(x, y, g)
                loss = loss_fn(model(x, **data.kwargs), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    return model.eval()


@torch.no_grad()
def predict(
    model: Callable[..., Tensor],
    x: Tensor,
    batch_size: int = 250,
    kwargs: dict[str, object] | None = None,
) -> Tensor:
    """The outputs of ``model`` (a module, put in eval mode, or any callable) on ``x`` in
    batches of ``batch_size``, called with ``kwargs``, concatenated."""
    if isinstance(model, nn.Module):
        model.eval()
    kw = kwargs or {}
    return torch.cat([model(x[i : i + batch_size], **kw) for i in range(0, len(x), batch_size)])
