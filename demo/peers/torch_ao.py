"""torch.ao.quantization as its users run it: dynamic int8 and FX graph mode static int8."""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from demo.peers.common import TorchAOBackend, _as_tuple, _check_batches, _check_module


@contextlib.contextmanager
def _quiet_torch_ao() -> Iterator[None]:
    """Silence torch.ao.quantization's deprecation warnings (and the quantized-tensor creation
    notice) inside the block only; every other warning still shows."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantized tensor creation.*")
        warnings.filterwarnings("ignore", message=".*reduce_range will be deprecated.*")
        yield


@contextlib.contextmanager
def _quantized_engine(name: str) -> Iterator[None]:
    """Use quantized engine ``name`` inside the block (weights are packed for the engine that is
    current at ``convert_fx`` time), then restore the previous one."""
    if name not in torch.backends.quantized.supported_engines:
        raise RuntimeError(
            f"torch.ao quantized engine {name!r} is not available in this torch build "
            f"(supported: {torch.backends.quantized.supported_engines})"
        )
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def torch_ao_dynamic_int8(model: nn.Module) -> nn.Module:
    """torch.ao dynamic int8, the usual default: on a deep copy of ``model``,
    ``torch.ao.quantization.quantize_dynamic(m, {nn.Linear}, dtype=torch.qint8)``.

    Linear weights become per-tensor symmetric int8 (default ``default_dynamic_qconfig``:
    ``MinMaxObserver``, ``qint8``); activations are quantized to uint8 per batch at run time
    (``reduce_range`` on fbgemm/x86). Every other layer stays float. ``model`` is not modified.
    """
    _check_module(model)
    with _quiet_torch_ao():
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)


def torch_ao_static_int8(
    model: nn.Module,
    calib_batches: Sequence[Tensor],
    example_inputs: Tensor | tuple[Any, ...],
    backend: TorchAOBackend = "x86",
) -> nn.Module:
    """torch.ao FX graph mode static int8 with the default qconfig mapping of ``backend``.

    On a deep copy of ``model`` in eval mode: ``prepare_fx(m,
    get_default_qconfig_mapping(backend), example_inputs)``, one forward per calibration batch,
    then ``convert_fx`` with ``torch.backends.quantized.engine = backend`` (restored afterwards).
    The ``x86`` default is uint8 activations (``HistogramObserver``, ``reduce_range=True``) and
    per-channel symmetric int8 weights; conv/linear + bn + relu are fused. ``ConvTranspose`` gets
    per-tensor weights (no per-channel support in torch.ao).

    Known defect (measured on this CPU build of torch 2.13): the quantized ``ConvTranspose2d``
    kernel of the ``x86`` and ``onednn`` engines gives wrong outputs (errors of ~200 LSB) whenever
    in_channels ≠ out_channels, for every kernel size and stride; ``fbgemm``'s gives wrong *and
    run-to-run different* outputs for 2x2 kernels; ``qnnpack``'s is correct. A model with such a
    layer (the digits CNN) therefore loses its accuracy on ``x86``/``fbgemm`` but not on
    ``qnnpack``. This wrapper reports the peer as it is and does not work around it.

    Raises ValueError for an empty calibration list, RuntimeError if FX cannot trace, prepare or
    convert the model (the peer's own exception is chained).
    """
    _check_module(model)
    batches = _check_batches(calib_batches)
    example = _as_tuple(example_inputs)
    if backend not in ("x86", "fbgemm", "qnnpack"):
        raise ValueError(f"backend must be 'x86', 'fbgemm' or 'qnnpack', got {backend!r}")
    with _quiet_torch_ao(), _quantized_engine(backend):
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        m = copy.deepcopy(model).eval()
        try:
            prepared = prepare_fx(m, get_default_qconfig_mapping(backend), example)
        except Exception as exc:
            raise RuntimeError(
                f"torch.ao FX graph mode cannot prepare {type(model).__name__} for static int8 "
                f"(backend {backend!r}): {type(exc).__name__}: {exc}"
            ) from exc
        with torch.no_grad():
            for b in batches:
                prepared(b)
        try:
            return convert_fx(prepared)
        except Exception as exc:
            raise RuntimeError(
                f"torch.ao FX graph mode cannot convert {type(model).__name__} to int8 "
                f"(backend {backend!r}): {type(exc).__name__}: {exc}"
            ) from exc
