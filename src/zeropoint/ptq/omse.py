"""OMSE: the clipping ranges that minimise the L2 error of the quantized tensors (Choukroun,
Kravchik, Yang & Kisilev 2019, "Low-bit Quantization of Neural Networks for Efficient
Inference").

Each tensor r (a weight channel — "kernel-wise" — or a whole activation tensor) gets

    (α*, β*) = argmin_{α ≤ 0 ≤ β} ‖Q_{α,β}(r) − r‖²₂

where Q_{α,β} is the scheme's own uniform quantizer on [α, β] (`qparams_from_range` +
`fake_quantize`). The error is piecewise smooth in the clip and has local minima, so the search
is a grid over the shrink factor a ∈ (0, 1] of the data range ([a·min, a·max]; [−a·m, a·m] for
symmetric schemes), refined on a finer grid around the best, and for affine schemes each end
is then refined with the other held. Weights (and any tensor up to ``max_exact`` values) are
searched on their exact values; larger streams (activations over a calibration set) fall back
to the histogram estimate of the same objective (`zeropoint.observers.MSE`).

Layers whose error stays large: the paper approximates such a kernel by two quantized tensors,
W ≈ Q₁(W) + Q₂(W − Q₁(W)) (its "dual" / multiple low-precision kernels, two b-bit
convolutions summed). `omse(..., dual_threshold=t, large_error="dual")` does exactly that for
every layer whose relative error ‖Q(W) − W‖² / ‖W‖² exceeds t — in the simulation; such a layer
has no single (S, Z), so lowering and export refuse it. The documented alternative
``large_error="bits"`` gives those layers 2b-bit weights instead (at most 8): the same storage
as two b-bit kernels, on one grid, which the integer engine and ONNX export carry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from zeropoint.functional import fake_quantize
from zeropoint.nn.modules import QuantMixin
from zeropoint.nn.quantizers import FakeQuant
from zeropoint.observers.registry import calibrate
from zeropoint.ptq.omse_observer import OMSE, omse_range, squared_errors
from zeropoint.ptq.simulation import simulate
from zeropoint.qparams import QParams
from zeropoint.workflows.config import QuantConfig, int8_static

REPORT_KEY = "_zeropoint_omse"


# --------------------------------------------------------------------------- dual kernels


class DualQuant(nn.Module):
    """Weight quantizer Q₁(W) + Q₂(W − Q₁(W)): two grids of the same scheme (OMSE's "dual"
    kernels for poorly approximated layers). Simulation only: it has no single (S, Z)."""

    scale: Tensor
    zero_point: Tensor
    residual_scale: Tensor
    residual_zero_point: Tensor

    def __init__(self, first: QParams, second: QParams) -> None:
        super().__init__()
        self.scheme = first.scheme
        self.axis = first.axis
        self.register_buffer("scale", first.scale.clone())
        self.register_buffer("zero_point", first.zero_point.clone())
        self.register_buffer("residual_scale", second.scale.clone())
        self.register_buffer("residual_zero_point", second.zero_point.clone())
        self.mode = "quantize"

    def parts(self) -> tuple[QParams, QParams]:
        return (
            QParams(self.scale, self.zero_point, self.scheme, self.axis),
            QParams(self.residual_scale, self.residual_zero_point, self.scheme, self.axis),
        )

    def forward(self, w: Tensor) -> Tensor:
        first, second = self.parts()
        q1 = fake_quantize(w, first)
        return q1 + fake_quantize(w - q1, second)

    def qparams(self) -> QParams:
        raise ValueError(
            "this layer's weight is a sum of two quantized kernels (OMSE large_error='dual'): it "
            "has no single (S, Z), so the integer engine and the export cannot run it; quantize "
            "with large_error='bits' (2b-bit weights on one grid) to deploy"
        )


@dataclass
class OMSEReport:
    """Relative weight error ‖Q(W) − W‖² / ‖W‖² of every layer, and the layers given dual
    kernels or wider weights."""

    errors: dict[str, float] = field(default_factory=dict)
    treated: dict[str, str] = field(default_factory=dict)
    errors_after: dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"OMSE: {len(self.errors)} layers, {len(self.treated)} with large error treated"]
        for name, how in self.treated.items():
            lines.append(
                f"  {name}: {how}, relative error {self.errors[name]:.3g} → "
                f"{self.errors_after[name]:.3g}"
            )
        return "\n".join(lines)


def relative_weight_error(layer: QuantMixin) -> float:
    """‖Q(W) − W‖² / ‖W‖² for a simulated layer's current weight quantizer."""
    w = layer.float_weight.detach().double()
    err = (layer.quantized_weight().detach().double() - w).pow(2).sum()
    return float(err / w.pow(2).sum().clamp(min=1e-300))


def omse(
    model: nn.Module,
    data: Any,
    config: QuantConfig | None = None,
    *,
    dual_threshold: float | None = None,
    large_error: str = "dual",
    progress: bool = True,
) -> nn.Module:
    """Static quantization with OMSE ranges for weights (per channel as the config says) and
    activations; then every layer whose relative weight error exceeds ``dual_threshold`` gets
    dual kernels (``large_error="dual"``) or 2b-bit weights (``"bits"``). Returns the converted
    model; ``omse_report(model)`` lists the errors and what was done."""
    if large_error not in ("dual", "bits"):
        raise ValueError(f"large_error={large_error!r} is unknown: expected 'dual' or 'bits'")
    if dual_threshold is not None and not dual_threshold > 0:
        raise ValueError(f"dual_threshold={dual_threshold} must be positive (or None)")
    cfg = (config or int8_static()).with_(weight_observer="omse", activation_observer="omse")
    model_q = simulate(model, data, cfg, progress=progress)
    report = OMSEReport()
    for name, layer in model_q.named_modules():
        if not isinstance(layer, QuantMixin) or not isinstance(layer.weight_quant, FakeQuant):
            continue
        report.errors[name] = relative_weight_error(layer)
        if dual_threshold is None or report.errors[name] <= dual_threshold:
            continue
        wq = layer.weight_quant
        if large_error == "dual":
            first = wq.qparams()
            w = layer.float_weight.detach()
            if w.dim() > 2 and wq.scheme.group_size is not None:
                w = w.reshape(w.shape[0], -1)
            residual = w - fake_quantize(w, first)
            second = calibrate(residual, wq.scheme, "omse")
            layer.weight_quant = DualQuant(first, second)
            report.treated[name] = f"dual {wq.scheme.bits}-bit kernels"
        else:
            bits = min(2 * wq.scheme.bits, 8)
            if bits == wq.scheme.bits:
                report.treated[name] = f"already {bits}-bit (left as is)"
            else:
                wide = FakeQuant(wq.scheme.with_(bits=bits), "omse", mode="quantize")
                view = layer.float_weight.detach()
                if view.dim() > 2 and wq.scheme.group_size is not None:
                    view = view.reshape(view.shape[0], -1)
                wide.set_qparams(calibrate(view, wide.scheme, "omse"))
                layer.weight_quant = wide
                report.treated[name] = f"{bits}-bit weights"
        report.errors_after[name] = relative_weight_error(layer)
    model_q.__dict__[REPORT_KEY] = report
    return model_q


def omse_report(model: nn.Module) -> OMSEReport:
    report = model.__dict__.get(REPORT_KEY)
    if not isinstance(report, OMSEReport):
        raise ValueError(f"{type(model).__name__} was not quantized by omse()")
    return report


__all__ = [
    "OMSE",
    "DualQuant",
    "OMSEReport",
    "omse",
    "omse_range",
    "omse_report",
    "relative_weight_error",
    "squared_errors",
]
