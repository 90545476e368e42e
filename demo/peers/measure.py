"""Measurement helpers: file and checkpoint sizes, median latency."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from demo.peers.common import _check_module
from demo.peers.torch_ao import _quiet_torch_ao
from zeropoint.report.model_report import disk_size

file_size = disk_size  # bytes of a file, or of every file under a directory


def state_dict_size(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())`` in a temporary file — the checkpoint size of
    a float or a torch.ao quantized model (packed int8 weights included)."""
    _check_module(model)
    with tempfile.TemporaryDirectory() as d, _quiet_torch_ao():
        f = Path(d) / "model.pt"
        torch.save(model.state_dict(), f)
        return f.stat().st_size


def latency(fn: Callable[..., Any], *args: Any, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall-clock seconds of ``fn(*args)`` over ``repeats`` timed calls (under
    ``torch.no_grad()``), after ``warmup`` untimed ones. The median resists the noise of a
    shared machine better than the mean."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    times = []
    with torch.no_grad():
        for _ in range(warmup):
            fn(*args)
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(*args)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)
