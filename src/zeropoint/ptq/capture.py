"""Layer-by-layer calibration for the weight-only algorithms (GPTQ, AWQ): the inputs each
Linear layer sees, with the layers before it already quantized.

GPTQ and AWQ quantize a layer from statistics of its calibration inputs X (M rows × K input
channels): GPTQ from the Hessian of the layer's squared output error, H = 2·XᵀX / M; AWQ from
the mean magnitude of each input channel and a sample of rows to score candidate scales. Both
are run *sequentially* (Frantar et al. 2022, §4): a layer's statistics are collected on the
model whose earlier layers are already quantized, so each layer also corrects the error that
reaches it. One calibration pass serves every pending layer that receives the very same input
tensor (the query, key and value projections of an attention block), so a transformer block of
four distinct inputs costs four passes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

CalibData = Iterable[Any] | Callable[[nn.Module], Any]
#: input rows kept per layer for scoring candidates (AWQ), in calibration order
SAMPLE_ROWS = 4096


class LayerInputs:
    """Statistics of one layer's inputs: Σ xᵀx (float64), Σ|x| per channel, row count and a
    sample of the first `SAMPLE_ROWS` rows; ``signature`` identifies the input tensors seen."""

    def __init__(self, features: int, keep_rows: int = SAMPLE_ROWS) -> None:
        self.xtx = torch.zeros(features, features, dtype=torch.float64)
        self.abs_sum = torch.zeros(features, dtype=torch.float64)
        self.rows = 0
        self.keep_rows = keep_rows
        self.samples: list[Tensor] = []
        self.signature: list[tuple[int, tuple[int, ...]]] = []

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0]
        self.signature.append((x.data_ptr(), tuple(x.shape)))
        x2 = x.detach().reshape(-1, x.shape[-1]).double()
        self.xtx += x2.T @ x2
        self.abs_sum += x2.abs().sum(0)
        kept = sum(s.shape[0] for s in self.samples)
        if kept < self.keep_rows:
            self.samples.append(x2[: self.keep_rows - kept].float().clone())
        self.rows += x2.shape[0]

    def hessian(self) -> Tensor:
        """H = 2·XᵀX / M (float64): the Hessian of Σ‖x·(W − Ŵ)ᵀ‖² / M with respect to a row of W."""
        if self.rows == 0:
            raise ValueError("the layer saw no calibration input")
        return 2.0 * self.xtx / self.rows

    def mean_abs(self) -> Tensor:
        """Mean |x_j| per input channel (float32)."""
        return (self.abs_sum / max(self.rows, 1)).float()

    def sample(self) -> Tensor:
        """Up to `SAMPLE_ROWS` input rows (float32)."""
        return torch.cat(self.samples)


def run_calibration(model: nn.Module, calib_data: CalibData) -> None:
    """Run the model on every calibration batch (or call ``calib_data(model)``), without grad."""
    from zeropoint.workflows.static import _inputs

    with torch.no_grad():
        if callable(calib_data):
            calib_data(model)
            return
        n = 0
        for batch in calib_data:
            args, kwargs = _inputs(batch)
            model(*args, **kwargs)
            n += 1
        if n == 0:
            raise ValueError("the calibration data is empty")


def quantize_sequentially(
    model: nn.Module,
    names: Sequence[str],
    calib_data: CalibData,
    quantize: Callable[[str, nn.Linear, LayerInputs], nn.Module],
    keep_rows: int = SAMPLE_ROWS,
) -> None:
    """Replace each named Linear of ``model`` (in place, in the given order) by
    ``quantize(name, layer, inputs)``, where ``inputs`` were recorded with every earlier layer
    already replaced. Layers that received the same input tensors in a pass as the first
    pending layer are replaced from that same pass."""
    if not callable(calib_data):
        calib_data = list(calib_data)
        if not calib_data:
            raise ValueError("the calibration data is empty")
    pending = list(names)
    while pending:
        stats: dict[str, LayerInputs] = {}
        hooks = []
        for name in pending:
            layer = model.get_submodule(name)
            if not isinstance(layer, nn.Linear):
                raise TypeError(f"{name!r} is a {type(layer).__name__}, not a Linear layer")
            stats[name] = LayerInputs(layer.in_features, keep_rows)
            hooks.append(layer.register_forward_pre_hook(stats[name]))
        try:
            run_calibration(model, calib_data)
        finally:
            for h in hooks:
                h.remove()
        first = pending[0]
        if stats[first].rows == 0:
            raise ValueError(f"layer {first!r} saw no calibration input: is it used by forward?")
        group = [n for n in pending if stats[n].signature == stats[first].signature]
        for name in group:
            layer = model.get_submodule(name)
            assert isinstance(layer, nn.Linear)
            model.set_submodule(name, quantize(name, layer, stats[name]))
        pending = [n for n in pending if n not in group]
