"""Dynamic quantization (and weight-only quantization): swap Linear/Embedding layers.

    model_q = zp.quantize_dynamic(model)                            # per-token int8, no data
    model_q = zp.quantize_dynamic(model, calib_data=lambda m: m.encode(sentences[:16]))
    model_q = zp.quantize_dynamic(model, zp.int4_weight_only())     # int4 groups of 32

The layers are swapped in a copy of the model (the float model is untouched unless
``inplace=True``), so the model keeps its class and its methods — e.g. a sentence-transformers
model still has `encode`. No graph capture is needed: the quantizers live inside the layers.

With ``calib_data`` (a few batches, or a function that runs the model on them and returns its
output) every Linear's input range is recorded and each layer gets the cheapest int8 mode unless
a costlier one is clearly more accurate on those inputs — plain per tensor (bias inside fbgemm),
per tensor after SmoothQuant-style shifting and smoothing (one element-wise pass), or per token
(see `zeropoint.nn.dynamic`). If the model's output is a tensor, a greedy search then moves layers
to cheaper modes while the output error on the calibration data grows by at most ``BUDGET``
(on all-MiniLM-L6-v2 it puts attention queries and keys back to plain per-tensor). Without data
every Linear is quantized per token.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from zeropoint.nn.dynamic import DynamicQuantLinear, smoothing_from_range
from zeropoint.nn.weight_only import WeightOnlyEmbedding, WeightOnlyLinear
from zeropoint.qparams import Scheme
from zeropoint.workflows.config import QuantConfig, resolve_config
from zeropoint.workflows.graph import QuantState

#: a costlier mode is chosen only where its error on the calibration inputs is below this
#: fraction of the cheaper mode's
GAIN = 0.7
#: the end-to-end search may raise the model's calibration output error by this fraction
BUDGET = 0.1
SAMPLE_ROWS = 2048


class _InputStats:
    """Per-input-channel min / max of a Linear's inputs, and a sample of input rows."""

    def __init__(self) -> None:
        self.lo: Tensor | None = None
        self.hi: Tensor | None = None
        self.rows: list[Tensor] = []
        self.n_rows = 0

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
        lo, hi = x.amin(0), x.amax(0)
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)
        if self.n_rows < SAMPLE_ROWS:
            take = x[: SAMPLE_ROWS - self.n_rows]
            self.rows.append(take.clone())
            self.n_rows += take.shape[0]


def _run_calibration(
    model: nn.Module, calib_data: Iterable[Any] | Callable[[nn.Module], Any]
) -> Tensor | None:
    """Run the model on the calibration data; returns its outputs (flattened and concatenated)
    when they are tensors, else None."""
    from zeropoint.workflows.static import _inputs

    with torch.no_grad():
        if callable(calib_data):
            out = calib_data(model)
            if isinstance(out, np.ndarray):
                out = torch.from_numpy(out)
            return out.detach().float().reshape(-1) if isinstance(out, Tensor) else None
        outs: list[Tensor] = []
        n = 0
        for batch in calib_data:
            args, kwargs = _inputs(batch)
            y = model(*args, **kwargs)
            n += 1
            if isinstance(y, Tensor):
                outs.append(y.detach().float().reshape(-1))
        if n == 0:
            raise ValueError("the calibration data is empty")
        return torch.cat(outs) if outs else None


def _candidates(
    layer: nn.Linear, stats: _InputStats, w_scheme: Scheme, reduce_range: bool
) -> tuple[list[DynamicQuantLinear], int]:
    """The three int8 modes of a layer, cheapest first — plain per-tensor (no extra pass),
    per-tensor after shifting and smoothing (one element-wise pass), per-token (a reduction and
    two passes) — and the index of the cheapest one not clearly less accurate (by ``GAIN``) on
    this layer's own calibration inputs."""
    assert stats.lo is not None and stats.hi is not None
    shift, smooth = smoothing_from_range(stats.lo, stats.hi, layer.weight)
    candidates = [
        DynamicQuantLinear(layer, w_scheme, False, reduce_range),
        DynamicQuantLinear(layer, w_scheme, False, reduce_range, shift=shift, smooth=smooth),
        DynamicQuantLinear(layer, w_scheme, True, reduce_range),
    ]
    x = torch.cat(stats.rows)
    with torch.no_grad():
        ref = layer(x)
        errors = [float(((c(x) - ref) ** 2).mean()) for c in candidates]
    best = 0
    for i in (1, 2):
        if errors[i] < GAIN * errors[best]:
            best = i
    return candidates, best


def _economise(
    model: nn.Module,
    choices: dict[str, tuple[list[DynamicQuantLinear], int]],
    calib_data: Iterable[Any] | Callable[[nn.Module], Any],
    reference: Tensor,
) -> None:
    """Greedy end-to-end search: from each layer's locally best mode, move layers to a cheaper
    mode while the model's output error on the calibration data stays within (1 + BUDGET) of
    the starting error — layers the rest of the network barely feels (attention queries and
    keys, say) end up in the cheapest mode."""

    def error() -> float:
        out = _run_calibration(model, calib_data)
        assert out is not None
        return float(((out - reference) ** 2).mean())

    allowed = error() * (1 + BUDGET)
    for name, (candidates, chosen) in choices.items():
        for cheaper in range(chosen - 1, -1, -1):
            model.set_submodule(name, candidates[cheaper])
            if error() <= allowed:
                chosen = cheaper
            else:
                model.set_submodule(name, candidates[chosen])
                break


def selected_layers(
    model: nn.Module, config: QuantConfig
) -> list[tuple[str, Any, tuple[Scheme | None, Scheme | None]]]:
    """(name, layer, (weight scheme, activation scheme)) of every Linear and Embedding whose
    weights the config quantizes; an error when there is none."""
    targets = []
    for name, module in model.named_modules():
        if type(module) not in (nn.Linear, nn.Embedding):
            continue
        resolved = config.resolve(name, module)
        if resolved is not None and resolved[0] is not None:
            targets.append((name, module, resolved))
    if not targets:
        raise ValueError(
            f"{type(model).__name__} has no Linear or Embedding layer that the config selects"
        )
    return targets


def quantize_dynamic(
    model: nn.Module,
    config: QuantConfig | None = None,
    calib_data: Iterable[Any] | Callable[[nn.Module], Any] | None = None,
    inplace: bool = False,
    reduce_range: bool | str = "auto",
) -> nn.Module:
    """Swap every Linear the config selects for `DynamicQuantLinear` (config.dynamic) or
    `WeightOnlyLinear` (config.activation is None: weight-only), and every Embedding it selects
    for `WeightOnlyEmbedding` (codes per row, or per group within a row).

    ``reduce_range``: "auto" (or False) quantizes activations to 8 bits and weights to 8 bits —
    full int8 where fbgemm's products are exact (VNNI), pair-bounded int8 where its int16 pair
    sums would saturate (see `zeropoint.nn.dynamic`), so the kernel is exact on every x86 CPU;
    True quantizes activations to 7 bits instead (torch.ao's choice) with full int8 weights."""
    config = resolve_config(config, "dynamic")
    if not config.dynamic and config.activation is not None:
        raise ValueError(
            "quantize_dynamic needs a dynamic config (activations chosen at run time, e.g. "
            "zp.int8_dynamic()) or a weight-only one (activation=None, e.g. zp.int4_weight_only())"
        )
    if config.weight is None:
        raise ValueError("quantize_dynamic needs a weight scheme")
    if reduce_range not in (True, False, "auto"):
        raise ValueError(f"reduce_range={reduce_range!r}: expected True, False or 'auto'")
    model = model if inplace else copy.deepcopy(model)
    config.check_names(model)
    state = QuantState(config, "dynamic" if config.dynamic else "weight_only", capture="module")
    targets = selected_layers(model, config)
    stats: dict[str, _InputStats] = {}
    reference: Tensor | None = None
    if calib_data is not None and not callable(calib_data):
        calib_data = list(calib_data)  # it may be run several times
    if calib_data is not None and config.dynamic:
        hooks = []
        for name, module, _ in targets:
            if isinstance(module, nn.Linear):
                stats[name] = _InputStats()
                hooks.append(module.register_forward_pre_hook(stats[name]))
        try:
            reference = _run_calibration(model, calib_data)
        finally:
            for h in hooks:
                h.remove()
    rr = reduce_range is True
    choices: dict[str, tuple[list[DynamicQuantLinear], int]] = {}
    for name, module, (w_scheme, a_scheme) in targets:
        assert w_scheme is not None
        new: nn.Module
        if isinstance(module, nn.Embedding):
            new = WeightOnlyEmbedding(module, w_scheme)  # a lookup has no activation to quantize
        elif config.dynamic and a_scheme is not None:
            if name in stats and stats[name].lo is not None:
                choices[name] = _candidates(module, stats[name], w_scheme, rr)
                new = choices[name][0][choices[name][1]]
            else:
                new = DynamicQuantLinear(module, w_scheme, config.per_token, rr)
        else:
            new = WeightOnlyLinear(module, w_scheme)
        model.set_submodule(name, new)
        state.layers[name] = (w_scheme, a_scheme if config.dynamic else None)
    if choices and reference is not None and calib_data is not None:
        _economise(model, choices, calib_data, reference)
    model.__dict__["_zeropoint"] = state
    return model
