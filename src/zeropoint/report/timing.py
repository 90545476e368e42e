"""Latency measured side by side: contenders run round-robin, so a noisy shared machine slows
them all alike, and the median of each is reported."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def interleaved_latency(
    contenders: dict[str, Callable[[], Any]], repeats: int = 10, warmup: int = 2
) -> dict[str, float]:
    """Median seconds per call of every contender, measured round-robin (rotating who goes
    first) after ``warmup`` untimed rounds."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    names = list(contenders)
    times: dict[str, list[float]] = {n: [] for n in names}
    with torch.no_grad():
        for _ in range(warmup):
            for n in names:
                contenders[n]()
        for r in range(repeats):
            order = names[r % len(names) :] + names[: r % len(names)]
            for n in order:
                t0 = time.perf_counter()
                contenders[n]()
                times[n].append(time.perf_counter() - t0)
    return {n: statistics.median(t) for n, t in times.items()}
