"""AWQ: activation-aware weight-only quantization (Lin et al. 2023, "AWQ: Activation-aware
Weight Quantization for LLM Compression and Acceleration").

A few input channels carry much larger activations than the rest, and the weights they multiply
matter most. Scaling such a channel's weights up by s_j before quantization (and its input
down by 1/s_j, which leaves the float product unchanged) shrinks their relative rounding error.
AWQ chooses the scales from calibration data, per Linear layer:

    s = ā^α / √(max ā^α · min ā^α)      ā_j = mean |x_j| over the calibration rows
    α* = argmin_{α ∈ {0, 1/n, …, (n−1)/n}}  ‖(X ⊘ s)·Q(W·diag(s))ᵀ − X·Wᵀ‖²

(α = 0 is plain round-to-nearest), then searches a clipping ratio per group of weights (the
reference's auto_clip): the range of each group of W·diag(s) is shrunk by r ∈ {1, 1 − 1/m, …,
1 − max_shrink} and the r with the least error ‖x_g·(w_g − Q_r(w_g))ᵀ‖² of that group's output,
on the group's slice of the calibration inputs, is kept. (S, Z) come from
`zeropoint.qparams.qparams_for` (the uniform formula) over the (shrunk) range, rounding from
`zeropoint.functional`.

The reference folds 1/s into the operation before the layer (a LayerNorm) where it can; here the
layer keeps s as its ``input_scale`` (`WeightOnlyLinear`: one multiply of x per call), so any
Linear can be scaled on its own.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from zeropoint.functional import fake_quantize, quantize_int
from zeropoint.nn.weight_only import WeightOnlyLinear
from zeropoint.observers.registry import calibrate
from zeropoint.ptq.capture import CalibData, LayerInputs, quantize_sequentially
from zeropoint.ptq.gptq import check_weight_scheme, finish_weight_only, weight_only_targets
from zeropoint.ptq.shrink import shrink_search
from zeropoint.qparams import QParams, Scheme, qparams_for, to_slices
from zeropoint.workflows.config import QuantConfig, int4_weight_only

#: rows of the calibration sample used by the clipping search (its cost is rows × N × groups)
CLIP_ROWS = 512


@dataclass(frozen=True)
class AWQResult:
    """Codes (N, K) of W·diag(s), their (S, Z), the input scales s, the chosen α and the
    output error ‖(X ⊘ s)·Ŵᵀ − X·Wᵀ‖² / (rows·N) for every α tried."""

    codes: Tensor
    qparams: QParams
    input_scale: Tensor
    alpha: float
    losses: tuple[float, ...]


def awq_scales(mean_abs: Tensor, alpha: float) -> Tensor:
    """s = ā^α / √(max ā^α · min ā^α) (the reference's normalisation: s spans a range centred
    on 1 in the log domain)."""
    s = mean_abs.float().clamp(min=1e-4).pow(alpha)
    return s / (s.max() * s.min()).sqrt()


def output_error(x: Tensor, weight: Tensor, scale: Tensor, scheme: Scheme) -> float:
    """‖(x ⊘ s)·Q(W·diag(s))ᵀ − x·Wᵀ‖² / (rows·N), Q round to nearest with min-max (S, Z)."""
    ws = weight * scale
    wq = fake_quantize(ws, calibrate(ws, scheme))
    return float(((x / scale) @ wq.T - x @ weight.T).pow(2).mean())


def clip_search(
    weight: Tensor, x: Tensor, scheme: Scheme, grid: int = 20, max_shrink: float = 0.5
) -> QParams:
    """Per group of W (rows of `to_slices`), the min-max range shrunk by the ratio r ∈
    {1 − i·max_shrink/grid} with the least output error of the group (module docstring)."""
    k = weight.shape[1]
    group = check_weight_scheme(scheme, k)
    n_groups = k // group
    rows = to_slices(weight, scheme).reshape(weight.shape[0], n_groups, group)  # (N, G, g)
    xg = x.reshape(x.shape[0], n_groups, group)  # (M, G, g)

    def error(lo: Tensor, hi: Tensor) -> Tensor:
        qp = qparams_for(weight, lo.reshape(-1), hi.reshape(-1), scheme)
        delta = (weight - fake_quantize(weight, qp)).reshape_as(rows)
        return torch.einsum("mgj,ngj->mng", xg, delta).pow(2).mean(0)  # (N, G)

    lo, hi = shrink_search(rows.amin(-1), rows.amax(-1), error, grid, max_shrink)
    return qparams_for(weight, lo.reshape(-1), hi.reshape(-1), scheme)


def awq_layer(
    weight: Tensor,
    inputs: LayerInputs | Tensor,
    scheme: Scheme,
    grid: int = 20,
    clip: bool = True,
) -> AWQResult:
    """AWQ for one weight (N, K) from its calibration inputs (a `LayerInputs`, or rows (M, K))."""
    w = weight.detach().float()
    check_weight_scheme(scheme, w.shape[1])
    if isinstance(inputs, LayerInputs):
        x, mean_abs = inputs.sample(), inputs.mean_abs()
    else:
        x, mean_abs = inputs.float(), inputs.float().abs().mean(0)
    losses = []
    for i in range(grid):
        losses.append(output_error(x, w, awq_scales(mean_abs, i / grid), scheme))
    alpha = min(range(grid), key=lambda i: losses[i]) / grid
    s = awq_scales(mean_abs, alpha)
    ws = w * s
    if clip:
        generator = torch.Generator().manual_seed(0)
        sample = x[torch.randperm(x.shape[0], generator=generator)[:CLIP_ROWS]] / s
        qp = clip_search(ws, sample, scheme)
    else:
        qp = calibrate(ws, scheme)
    return AWQResult(quantize_int(ws, qp), qp, s, alpha, tuple(losses))


def awq_quantize(
    model: nn.Module,
    calib_data: CalibData,
    config: QuantConfig | None = None,
    *,
    grid: int = 20,
    clip: bool = True,
    inplace: bool = False,
) -> nn.Module:
    """Weight-only quantization of every Linear the config selects (default
    ``zp.int4_weight_only()``) by AWQ, layer by layer on the calibration data; embeddings get
    round-to-nearest codes. Returns the model with `WeightOnlyLinear` layers."""
    config = config or int4_weight_only()
    model = model if inplace else copy.deepcopy(model)
    targets = weight_only_targets(model, config)
    schemes = {name: scheme for name, m, scheme in targets if isinstance(m, nn.Linear)}

    def quantize(name: str, layer: nn.Linear, inputs: LayerInputs) -> nn.Module:
        r = awq_layer(layer.weight, inputs, schemes[name], grid, clip)
        return WeightOnlyLinear.from_codes(layer, r.codes, r.qparams, input_scale=r.input_scale)

    quantize_sequentially(model, list(schemes), calib_data, quantize)
    return finish_weight_only(model, config, targets)


__all__ = ["AWQResult", "awq_layer", "awq_quantize", "awq_scales", "clip_search", "output_error"]
