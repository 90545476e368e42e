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
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from zeropoint.nn.learnable import LSQ, PACT, LSQPlus
from zeropoint.nn.modules import QuantMixin
from zeropoint.nn.quantizers import FakeQuant
from zeropoint.nn.saturation import needs_pair_bound, pair_bounded_weight
from zeropoint.observers.registry import calibrate
from zeropoint.qparams import Scheme
from zeropoint.workflows.config import QuantConfig, resolve_config
from zeropoint.workflows.graph import instrument, state_of

LEARNABLE_TYPES = (LSQ, LSQPlus, PACT)


class ModelSnapshot:
    """Enough of a model's state to undo an in-place workflow that failed midway: every
    module's attribute dicts (the same child, parameter and buffer objects) and a copy of every
    parameter's and buffer's values (batch-norm folding writes into the weights). Costs one copy
    of the tensors while the workflow runs."""

    def __init__(self, model: nn.Module) -> None:
        self.modules = [
            (m, dict(m.__dict__), dict(m._modules), dict(m._parameters), dict(m._buffers))
            for m in model.modules()
        ]
        tensors: dict[int, tuple[Tensor, Tensor]] = {}
        for m in model.modules():
            for t in [*m._parameters.values(), *m._buffers.values()]:
                if t is not None and id(t) not in tensors:
                    tensors[id(t)] = (t, t.detach().clone())
        self.tensors = list(tensors.values())

    def restore(self) -> None:
        for m, attrs, modules, params, buffers in self.modules:
            m.__dict__.clear()
            m.__dict__.update(attrs)
            m.__dict__["_modules"] = modules
            m.__dict__["_parameters"] = params
            m.__dict__["_buffers"] = buffers
        with torch.no_grad():
            for t, saved in self.tensors:
                t.copy_(saved)


@contextlib.contextmanager
def restored_on_failure(model: nn.Module, inplace: bool) -> Iterator[None]:
    """Within the block, an exception restores ``model`` (when working in place) and
    propagates."""
    snapshot = ModelSnapshot(model) if inplace else None
    try:
        yield
    except BaseException:
        if snapshot is not None:
            snapshot.restore()
        raise


def prepare(
    model: nn.Module,
    config: QuantConfig | str | None = None,
    inplace: bool = False,
    concrete_args: dict[str, Any] | None = None,
) -> nn.Module:
    """A copy of ``model`` with layers swapped and activation observers in place (observe mode).
    The model must be in eval mode: calibration uses the inference behaviour (BN running stats).
    ``config``: a QuantConfig, a preset name ("int8_static") or None (int8_static()).
    ``concrete_args``: forward's Python arguments to capture the graph with (default: their
    default values; see `zeropoint.workflows.capture`)."""
    cfg = _check_static(model, config)
    with restored_on_failure(model, inplace):
        return _prepare(model, cfg, inplace, concrete_args)


def _check_static(model: nn.Module, config: QuantConfig | str | None) -> QuantConfig:
    if not isinstance(model, nn.Module):
        raise TypeError(f"static quantization needs an nn.Module, got {type(model).__name__}")
    cfg = resolve_config(config, "static")
    if model.training:
        raise ValueError(
            f"{type(model).__name__} is in training mode; static quantization calibrates the "
            "inference behaviour (batch-norm running statistics, no dropout): call model.eval() "
            "first (or use zp.prepare_qat for quantization-aware training)"
        )
    return cfg


def _prepare(
    model: nn.Module, cfg: QuantConfig, inplace: bool, concrete_args: dict[str, Any] | None = None
) -> nn.Module:
    def weight_quant(scheme: Scheme, name: str) -> nn.Module:
        # "track": (S, Z) from the weight itself, so calibration sees the quantized weights
        return FakeQuant(scheme, cfg.weight_observer, mode="track")

    def act_quant(scheme: Scheme, name: str) -> nn.Module:
        return FakeQuant(scheme, cfg.activation_observer, cfg.observer_options, mode="observe")

    return instrument(
        model, cfg, "static", weight_quant, act_quant, inplace=inplace, concrete_args=concrete_args
    )


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
    """Model arguments from a loader item: a tensor (the one argument), an (x, y) pair/list
    (x is the argument, y the label), or any mapping — a dict, a transformers BatchEncoding —
    of keyword arguments."""
    if isinstance(batch, Tensor):
        return (batch,), {}
    if isinstance(batch, Mapping):
        bad = [k for k in batch if not isinstance(k, str)]
        if bad:
            raise TypeError(
                f"a mapping calibration item is passed as keyword arguments, so its keys must be "
                f"strings; got {bad[0]!r}"
            )
        return (), dict(batch)
    if isinstance(batch, tuple | list) and batch:
        return (batch[0],), {}
    raise TypeError(
        f"cannot feed a calibration item of type {type(batch).__name__} to the model: expected "
        "a tensor, an (inputs, labels) tuple/list, or a mapping of keyword arguments"
    )


def calibrate_model(
    model: nn.Module, data: Iterable[Any], progress: bool = True, max_batches: int | None = None
) -> int:
    """Feed ``data`` through a prepared model in observe mode; returns the number of batches."""
    if isinstance(data, Tensor | Mapping) or not isinstance(data, Iterable):
        raise TypeError(
            f"calibration data must be an iterable of batches (a list, a DataLoader), got "
            f"{type(data).__name__}"
            + (": wrap a single batch in a list" if isinstance(data, Tensor) else "")
        )
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
    learned values (QAT); weights from the final weights (on their pair-bounded grid where the
    config asks for it: `zeropoint.nn.saturation`). The result is the simulation that
    `zp.to_integer` lowers and `zp.export_onnx` exports. Under a process group (more than one
    rank) the calibration observers are first reduced over the ranks
    (`zeropoint.distributed.sync_calibration`): call it on every rank."""
    state = state_of(model)
    if state.workflow == "qat":
        from zeropoint.workflows.qat import finalize_qat

        finalize_qat(model)
    # data-parallel calibration: every rank's statistics, reduced over the ranks (a collective
    # when a process group is initialised; nothing otherwise). Imported here: it imports us.
    from zeropoint.distributed.model import sync_calibration

    sync_calibration(model)
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
            if state.config.pair_bounded_weights and needs_pair_bound(module, wq.scheme):
                snapped, qp = pair_bounded_weight(module.float_weight, wq.scheme)
                with torch.no_grad():
                    module.float_weight.copy_(snapped)
            else:
                qp = calibrate(module._weight_view().detach(), wq.scheme, wq.observer_name)
            wq.set_qparams(qp)
            wq.mode = "quantize"
    model.eval()
    return model


def quantize_static(
    model: nn.Module,
    calib_data: Iterable[Any],
    config: QuantConfig | str | None = None,
    inplace: bool = False,
    progress: bool = True,
    concrete_args: dict[str, Any] | None = None,
) -> nn.Module:
    """prepare → calibrate on ``calib_data`` (any iterable of batches: tensors, (x, y) pairs,
    or mappings of keyword arguments) → convert. ``config``: a QuantConfig, a preset name or
    None (int8_static()). With ``inplace=True`` a failure at any step (a loader that raises,
    say) restores ``model`` before the error propagates. ``concrete_args``: as in `prepare`;
    by default the non-tensor keyword arguments of the first calibration batch (a mapping, in
    a list or tuple of batches) are taken as constants."""
    cfg = _check_static(model, config)
    if concrete_args is None and isinstance(calib_data, list | tuple) and calib_data:
        first = calib_data[0]
        if isinstance(first, Mapping):
            concrete_args = {k: v for k, v in first.items() if not isinstance(v, Tensor)}
    with restored_on_failure(model, inplace):
        prepared = _prepare(model, cfg, inplace, concrete_args)
        calibrate_model(prepared, calib_data, progress=progress)
        return convert(prepared)
