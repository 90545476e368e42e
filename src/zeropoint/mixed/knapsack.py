"""The multiple-choice knapsack: one choice per group, least total value under a total weight.

    minimise Σ_g value[g][c_g]   subject to   Σ_g weight[g][c_g] ≤ capacity

solved by dynamic programming over the capacity, in units u. Integer weights (bit counts) are
measured in their greatest common divisor, exactly, as long as the capacity is at most
``max_units`` of them: the solution is optimal and a choice that fills the capacity exactly (a
uniform model at its own size) is feasible. Otherwise u = capacity / ``resolution`` and weights
are rounded *up* (w' = ⌈w/u⌉, capacity' = ⌊capacity/u⌋): every solution of the rounded problem
still satisfies the real constraint (Σ w ≤ u·Σ w' ≤ u·capacity' ≤ capacity), and it is optimal
for the rounded weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def solve(
    values: Sequence[Sequence[float]],
    weights: Sequence[Sequence[float]],
    capacity: float,
    resolution: int = 1 << 16,
    max_units: int = 1 << 23,
) -> list[int]:
    """The index of the chosen option of every group (see the module docstring). Raises
    ValueError when no choice fits (the lightest options already exceed ``capacity``)."""
    if len(values) != len(weights) or not values:
        raise ValueError("values and weights need one non-empty list of options per group")
    for g, (v, w) in enumerate(zip(values, weights, strict=True)):
        if len(v) != len(w) or not v:
            raise ValueError(f"group {g}: {len(v)} values for {len(w)} weights")
        if any(x < 0 or not math.isfinite(x) for x in w):
            raise ValueError(f"group {g}: weights must be finite and non-negative, got {list(w)}")
        if any(math.isnan(x) for x in v):
            raise ValueError(f"group {g}: a value is NaN")
    if capacity < 0 or not math.isfinite(capacity):
        raise ValueError(f"capacity must be finite and non-negative, got {capacity}")
    rounded: list[list[int]] | None = None
    if all(float(x).is_integer() for w in weights for x in w):
        unit = math.gcd(*(int(x) for w in weights for x in w)) or 1
        if capacity // unit <= max_units:
            cap = int(capacity // unit)
            rounded = [[int(x) // unit for x in w] for w in weights]
    if rounded is None:
        step = max(capacity / resolution, 1e-300)
        cap = math.floor(capacity / step)
        rounded = [[math.ceil(x / step) for x in w] for w in weights]
    if sum(min(w) for w in rounded) > cap:
        lightest = sum(min(w) for w in weights)
        raise ValueError(
            f"no choice fits: the lightest options weigh {lightest:.6g} in total, more than the "
            f"capacity {capacity:.6g}"
        )
    inf = np.inf
    best = np.zeros(cap + 1)  # best[b]: least value of the groups so far within weight b
    picks = np.zeros((len(values), cap + 1), dtype=np.int16)
    for g, (v, w) in enumerate(zip(values, rounded, strict=True)):
        new = np.full(cap + 1, inf)
        choice = np.full(cap + 1, -1, dtype=np.int16)
        for c, (value, weight) in enumerate(zip(v, w, strict=True)):
            if weight > cap:
                continue
            candidate = np.full(cap + 1, inf)
            candidate[weight:] = best[: cap + 1 - weight] + value
            better = candidate < new
            new[better] = candidate[better]
            choice[better] = c
        best, picks[g] = new, choice
    b = int(np.argmin(best))
    if not math.isfinite(best[b]):
        raise ValueError("no choice fits the capacity")
    chosen = [0] * len(values)
    for g in range(len(values) - 1, -1, -1):
        c = int(picks[g][b])
        chosen[g] = c
        b -= rounded[g][c]
    return chosen


__all__ = ["solve"]
