"""Layer inputs and outputs for the reconstruction algorithms (AdaRound, bias correction): feeding
samples through a model and catching what a layer sees, with forward hooks only. (The weight-only
algorithms' sequential calibration is `zeropoint.ptq.capture`.)

* `take_samples` turns calibration data (a tensor, or batches of tensors / (x, y) pairs) into
  one tensor of at most ``n`` samples: the algorithms re-batch it themselves.
* `quantizers_off` turns every `FakeQuant` of a simulated model off for a block: the model then
  computes its float function (batch norms already folded), with the very same layer objects.
* `run` feeds samples in batches; `execution_order` counts how often each layer runs.
* `Rows` stores sampled rows of a layer's input compactly: as integer codes when the input lies
  on a known quantization grid (exact, 1 byte per value at 8 bits), else as float16.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from zeropoint.functional import quantize_int
from zeropoint.nn.modules import QuantMixin
from zeropoint.nn.quantizers import FakeQuant
from zeropoint.qparams import QParams


def take_samples(data: Any, n: int | None = None) -> Tensor:
    """The first ``n`` samples of ``data`` (all when ``n`` is None) as one tensor.

    ``data``: a tensor (dimension 0 indexes samples) or an iterable of batches, each a tensor
    or a (x, y)/[x, ...] sequence whose first element is the input."""
    if isinstance(data, Tensor):
        return data if n is None else data[:n]
    parts: list[Tensor] = []
    count = 0
    for batch in data:
        x = batch[0] if isinstance(batch, tuple | list) and batch else batch
        if not isinstance(x, Tensor):
            raise TypeError(
                f"expected batches of tensors or (x, y) pairs, got {type(batch).__name__}: the "
                "post-training algorithms feed a single input tensor to the model"
            )
        parts.append(x.detach())
        count += x.shape[0]
        if n is not None and count >= n:
            break
    if not parts:
        raise ValueError("the data is empty: give at least one batch of samples")
    out = torch.cat(parts)
    return out if n is None else out[:n]


def fake_quants(model: nn.Module) -> list[FakeQuant]:
    return [m for m in model.modules() if isinstance(m, FakeQuant)]


@contextlib.contextmanager
def quantizers_off(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block every FakeQuant passes its input through (the float model)."""
    quantizers = fake_quants(model)
    previous = [q.mode for q in quantizers]
    for q in quantizers:
        q.mode = "off"
    try:
        yield model
    finally:
        for q, mode in zip(quantizers, previous, strict=True):
            q.mode = mode


@contextlib.contextmanager
def float_simulation(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block the converted layers compute their float simulation,
    y = W̃·x̂ + b̃ before any fused activation, instead of the integer kernel they run at inference
    (`QuantMixin._deployed`, whose output is already activated and requantized): what bias
    correction measures at a layer's output. Outside it nothing changes."""
    saved = [(m, m.__dict__.pop("output_grid")) for m in model.modules()
             if isinstance(m, QuantMixin) and "output_grid" in m.__dict__]  # fmt: skip
    try:
        yield model
    finally:
        for m, grid in saved:
            m.__dict__["output_grid"] = grid


@torch.no_grad()
def run(
    model: nn.Module, x: Tensor, batch_size: int, on_batch: Callable[[int], None] | None = None
) -> None:
    """Feed ``x`` through ``model`` in batches (``on_batch(start)`` before each)."""
    for start in range(0, x.shape[0], batch_size):
        if on_batch is not None:
            on_batch(start)
        model(x[start : start + batch_size])


def execution_order(model: nn.Module, x: Tensor, modules: dict[str, nn.Module]) -> dict[str, int]:
    """How often each of ``modules`` runs in one forward pass of ``x``, in order of first call."""
    calls: dict[str, int] = {}
    handles = []
    for name, module in modules.items():

        def hook(mod: nn.Module, args: Any, name: str = name) -> None:
            calls[name] = calls.get(name, 0) + 1

        handles.append(module.register_forward_pre_hook(hook))
    run_hooked(model, x, handles)
    return calls


def run_hooked(model: nn.Module, x: Tensor, handles: list[Any]) -> None:
    """One forward pass of ``x`` without gradients, then remove the hooks ``handles``."""
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()


class GridTracker:
    """Remembers the last outputs of activation FakeQuants during a pass, so that a layer's input
    can be recognised as lying on a known grid (the same tensor object) and stored as integer
    codes. Only the most recent ``keep`` outputs are held (a layer's input quantizer runs just
    before it), so a long pass does not keep every activation alive."""

    def __init__(self, quantizers: Iterable[FakeQuant], keep: int = 8) -> None:
        self.seen: collections.deque[tuple[Tensor, QParams]] = collections.deque(maxlen=keep)
        self.handles = []
        for q in quantizers:
            self.handles.append(q.register_forward_hook(self._hook))

    def _hook(self, module: nn.Module, args: Any, output: Tensor) -> None:
        assert isinstance(module, FakeQuant)
        if module.mode == "quantize" and module.frozen and module.scale.dim() == 0:
            self.seen.append((output, module.qparams()))

    def grid_of(self, x: Tensor) -> QParams | None:
        for tensor, qp in reversed(self.seen):
            if tensor is x:
                return qp
        return None

    def clear(self) -> None:
        self.seen.clear()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.seen.clear()


class Rows:
    """Rows of float values kept compactly: integer codes on a per-tensor grid, or float16."""

    def __init__(self) -> None:
        self.parts: list[Tensor] = []
        self.qparams: QParams | None = None
        self.exact = True

    def add(self, values: Tensor, grid: QParams | None) -> None:
        if grid is not None and (self.qparams is None or _same(self.qparams, grid)) and self.exact:
            self.qparams = grid
            self.parts.append(quantize_int(values, grid))
            return
        if self.parts and self.exact and self.qparams is not None:
            self.parts = [self._decode(p).to(torch.float16) for p in self.parts]
        self.exact = False
        self.parts.append(values.to(torch.float16))

    def finish(self) -> Tensor:
        if not self.parts:
            raise ValueError("no rows were captured (the layer never ran)")
        return torch.cat(self.parts)

    def decode(self, codes: Tensor) -> Tensor:
        """Float32 values of stored rows (a slice of `finish()`)."""
        return self._decode(codes)

    def _decode(self, codes: Tensor) -> Tensor:
        if codes.dtype == torch.float16:
            return codes.float()
        assert self.qparams is not None
        return (codes.float() - float(self.qparams.zero_point)).mul_(float(self.qparams.scale))

    @property
    def bytes_per_value(self) -> int:
        return self.parts[0].element_size() if self.parts else 0


def _same(a: QParams, b: QParams) -> bool:
    return (
        a.scheme == b.scheme
        and bool(torch.equal(a.scale, b.scale))
        and bool(torch.equal(a.zero_point, b.zero_point))
    )


__all__ = [
    "GridTracker",
    "Rows",
    "execution_order",
    "fake_quants",
    "float_simulation",
    "quantizers_off",
    "run",
    "run_hooked",
    "take_samples",
]
