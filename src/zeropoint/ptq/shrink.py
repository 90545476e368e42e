"""The shrunk-range search shared by AWQ's auto-clip and GPTQ's group ranges: per slice, the
range [r·lo, r·hi] whose quantization error is least, over r ∈ {1, 1 − 1/grid, …, 1 −
max_shrink}. Each caller scores a candidate range its own way (AWQ: on a sample of inputs;
GPTQ: with the Hessian)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def shrink_search(
    lo: Tensor,
    hi: Tensor,
    error: Callable[[Tensor, Tensor], Tensor],
    grid: int = 20,
    max_shrink: float = 0.5,
) -> tuple[Tensor, Tensor]:
    """(lo·r, hi·r) per slice with r = 1 − i/grid, i ∈ {0, …, ⌊max_shrink·grid⌋}, minimising
    ``error(lo·r, hi·r)`` (one error per slice, shaped like ``lo``); ties keep the wider range."""
    best_lo, best_hi = lo, hi
    best = error(lo, hi)
    for i in range(1, int(grid * max_shrink) + 1):
        r = 1 - i / grid
        err = error(lo * r, hi * r)
        better = err < best
        best = torch.where(better, err, best)
        best_lo, best_hi = (
            torch.where(better, lo * r, best_lo),
            torch.where(better, hi * r, best_hi),
        )
    return best_lo, best_hi


__all__ = ["shrink_search"]
