"""Static post-training quantization: prepare (insert observers) → calibrate → convert.

    model_q = zp.quantize_static(model, calib_data, zp.int8_static())

or step by step:

    prepared = zp.prepare(model, config)          # observers in place, forward unchanged
    with zp.calibrating(prepared):                # or zp.calibrate_model(prepared, loader)
        for x in loader: prepared(x)
    model_q = zp.convert(prepared)                # frozen (S, Z): a fake-quant simulation

The converted model computes exactly what the integer program (`zp.to_integer`) and the ONNX
export compute, up to rounding of the requantization (±1 LSB).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from zeropoint.nn.learnable import LSQ, PACT, LSQPlus
from zeropoint.nn.modules import QuantMixin
from zeropoint.nn.quantizers import FakeQuant
from zeropoint.observers.registry import calibrate
from zeropoint.qparams import Scheme
from zeropoint.workflows.config import QuantConfig, int8_static
from zeropoint.workflows.graph import instrument, state_of

LEARNABLE_TYPES = (LSQ, LSQPlus, PACT)


def prepare(
    model: nn.Module, config: QuantConfig | None = None, inplace: bool = False
) -> nn.Module:
    """A copy of ``model`` with layers swapped and activation observers in place (observe mode).
    The model must be in eval mode: calibration uses the inference behaviour (BN running stats)."""
    config = config or int8_static()
    if model.training:
        raise ValueError(
            f"{type(model).__name__} is in training mode; static quantization calibrates the "
            "inference behaviour (batch-norm running statistics, no dropout): call model.eval() "
            "first (or use zp.prepare_qat for quantization-aware training)"
        )

    def weight_quant(scheme: Scheme, name: str) -> nn.Module:
        # "track": (S, Z) from the weight itself, so calibration sees the quantized weights
        return FakeQuant(scheme, config.weight_observer, mode="track")

    def act_quant(scheme: Scheme, name: str) -> nn.Module:
        return FakeQuant(
            scheme, config.activation_observer, config.observer_options, mode="observe"
        )

    return instrument(model, config, "static", weight_quant, act_quant, inplace=inplace)


def activation_quantizers(model: nn.Module) -> list[FakeQuant]:
    """The activation FakeQuant modules of a prepared model (weights excluded)."""
    weights = {
        id(m.weight_quant) for m in model.modules() if isinstance(m, QuantMixin) and m.weight_quant
    }
    return [m for m in model.modules() if isinstance(m, FakeQuant) and id(m) not in weights]


@contextlib.contextmanager
def calibrating(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block the model's activation quantizers observe (and pass data through)."""
    state_of(model)
    quantizers = activation_quantizers(model)
    previous = [q.mode for q in quantizers]
    for q in quantizers:
        q.mode = "observe"
    try:
        with torch.no_grad():
            yield model
    finally:
        for q, mode in zip(quantizers, previous, strict=True):
            q.mode = mode


def _inputs(batch: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Model arguments from a loader item: a tensor, an (x, y) pair/list, or a dict of kwargs."""
    if isinstance(batch, Tensor):
        return (batch,), {}
    if isinstance(batch, dict):
        return (), batch
    if isinstance(batch, tuple | list) and batch:
        return (batch[0],), {}
    raise TypeError(f"cannot feed a calibration item of type {type(batch).__name__} to the model")


def calibrate_model(
    model: nn.Module, data: Iterable[Any], progress: bool = True, max_batches: int | None = None
) -> int:
    """Feed ``data`` through a prepared model in observe mode; returns the number of batches."""
    n = 0
    items: Iterable[Any] = data
    if progress:
        from tqdm.auto import tqdm

        total = len(data) if hasattr(data, "__len__") else None  # type: ignore[arg-type]
        items = tqdm(data, total=total, desc="calibrating", unit="batch", leave=False)
    with calibrating(model):
        for batch in items:
            if max_batches is not None and n >= max_batches:
                break
            args, kwargs = _inputs(batch)
            model(*args, **kwargs)
            n += 1
    if n == 0:
        raise ValueError(
            "the calibration data is empty: static quantization needs at least one batch"
        )
    return n


def convert(model: nn.Module) -> nn.Module:
    """Freeze every quantizer: activations take (S, Z) from their observers (PTQ) or their
    learned values (QAT); weights from the final weights. The result is the simulation that
    `zp.to_integer` lowers and `zp.export_onnx` exports."""
    state = state_of(model)
    if state.workflow == "qat":
        from zeropoint.workflows.qat import finalize_qat

        finalize_qat(model)
    for q in activation_quantizers(model):
        if q.mode == "observe":
            if q.observer.num_batches == 0:
                raise ValueError(
                    "an activation quantizer saw no data during calibration (is that part of the "
                    "model unreachable, or was the model never calibrated?)"
                )
            q.freeze()
    for module in model.modules():
        if not isinstance(module, QuantMixin):
            continue
        wq = module.weight_quant
        if isinstance(wq, FakeQuant) and wq.mode == "track":
            weight = module._weight_view().detach()
            wq.set_qparams(calibrate(weight, wq.scheme, wq.observer_name))
            wq.mode = "quantize"
    model.eval()
    return model


def quantize_static(
    model: nn.Module,
    calib_data: Iterable[Any],
    config: QuantConfig | None = None,
    inplace: bool = False,
    progress: bool = True,
) -> nn.Module:
    """prepare → calibrate on ``calib_data`` (any iterable of batches) → convert."""
    prepared = prepare(model, config, inplace=inplace)
    calibrate_model(prepared, calib_data, progress=progress)
    return convert(prepared)
