"""The simulated model the post-training algorithms start from: `zp.quantize_static`, also for
weight-only configs (``activation=None``).

AdaRound, bias correction and OMSE reconstruct or correct a layer's *weights*; "W4 weights with
float activations" is one of the settings they are measured in, on convolutions as well as
linear layers. `zp.quantize_static` refuses a weight-only config because its deployment is
`zp.quantize_dynamic`'s (weight-only Linear kernels); here such a config runs the same static
pipeline (prepare → calibrate → convert) with no activation quantizers: a simulation whose
weights are frozen on their grids and whose activations stay float.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from zeropoint.workflows.config import QuantConfig
from zeropoint.workflows.static import _prepare, calibrate_model, convert, quantize_static


def simulate(
    model: nn.Module,
    calib_data: Iterable[Any],
    config: QuantConfig | None = None,
    progress: bool = True,
) -> nn.Module:
    """``zp.quantize_static(model, calib_data, config)``; with a weight-only ``config``
    (activation=None, not dynamic) the same pipeline with float activations."""
    if config is not None and config.activation is None and not config.dynamic:
        if config.learnable is not None or config.stochastic:
            raise ValueError(
                "the config is a QAT one (learnable quantizers or stochastic rounding): use "
                "zp.prepare_qat, or a deterministic, non-learnable config for post-training "
                "quantization"
            )
        if model.training:
            raise ValueError(f"{type(model).__name__} is in training mode: call model.eval() first")
        prepared = _prepare(model, config, inplace=False)
        calibrate_model(prepared, calib_data, progress=progress)
        return convert(prepared)
    return quantize_static(model, calib_data, config, progress=progress)
