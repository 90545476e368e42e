"""GPTQ: weight-only quantization that corrects each column's rounding error in the columns not
yet quantized (Frantar, Ashkboos, Hoefler & Alistarh 2022, "GPTQ: Accurate Post-Training
Quantization for Generative Pre-trained Transformers"; from Optimal Brain Quantization, Frantar
& Alistarh 2022).

For a Linear layer with weight W (N × K) and calibration inputs X (M × K), the layer-wise error
‖XWᵀ − XŴᵀ‖² is, row by row, a quadratic form in (w − ŵ) with Hessian H = 2XᵀX/M. Quantizing
the columns one at a time in order, after column i is rounded the optimal change of the columns
still free is (Eq. 3 of the paper, with H⁻¹ the inverse Hessian of the free columns)

    δ_F = −(w_i − q_i) / [H_F⁻¹]_ii · (H_F⁻¹)_{i,:}

and H_F⁻¹ loses row and column i by one step of Gaussian elimination. GPTQ computes all these
rows at once as the upper Cholesky factor U of H⁻¹ (row i of U, scaled by 1/U_ii, is the
elimination row), and applies the updates lazily in blocks of ``block_size`` columns (one
rank-B update of the rest per block instead of K rank-1 updates). Details as in the paper's
reference code: dampening λ = ``damp``·mean(diag H) added to the diagonal; dead inputs (H_ii = 0)
have their column set to 0; ``act_order`` visits the columns by decreasing H_ii, with the
group-wise (S, Z) of each block of ``group_size`` input channels computed before any update
("static groups", so the groups stay contiguous in the original order, as ONNX blocked
quantization and the packed kernels need); without act_order the (S, Z) of a group are taken
from the already updated weights when the group's first column is reached. The (S, Z) come from
`zeropoint.observers.calibrate` (min-max), the rounding from `zeropoint.functional`. With
``clip=True`` each row of a group takes the shrunk range [r·min w, r·max w], r ∈ {1, 0.95, …,
0.5}, with the least round-to-nearest error of the group's output, (w − Q_r(w))·H_g·(w −
Q_r(w))ᵀ for the group's block H_g of the Hessian (AWQ's auto-clip grid, scored by the Hessian
instead of a sample of inputs; `group_qparams`).

Everything is computed in float64. `gptq_quantize` runs it on a whole model, layer by layer on
inputs that already passed the quantized earlier layers (`zeropoint.ptq.capture`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from zeropoint.functional import dequantize_int, quantize_int
from zeropoint.nn.weight_only import WeightOnlyEmbedding, WeightOnlyLinear
from zeropoint.observers.registry import calibrate
from zeropoint.ptq.capture import CalibData, LayerInputs, quantize_sequentially
from zeropoint.ptq.shrink import shrink_search
from zeropoint.qparams import QParams, Scheme, qparams_for
from zeropoint.workflows.config import QuantConfig, int4_weight_only
from zeropoint.workflows.dynamic import selected_layers
from zeropoint.workflows.graph import QuantState


@dataclass(frozen=True)
class GPTQResult:
    """Integer codes (N, K) in the original column order, their (S, Z), and the layer-wise
    error tr((W − Ŵ)·H·(W − Ŵ)ᵀ) / 2 before (round to nearest) and after GPTQ."""

    codes: Tensor
    qparams: QParams
    error: float
    rtn_error: float


def _row_scheme(scheme: Scheme) -> Scheme:
    """The same quantizer, one (S, Z) per row of a block of columns."""
    return scheme.with_(axis=0, group_size=None)


def check_weight_scheme(scheme: Scheme, in_features: int) -> int:
    """The group size (K for per-channel schemes); ValueError for other granularities."""
    if scheme.group_size is not None:
        if scheme.axis not in (None, 1, -1):
            raise ValueError(f"groups must run along the input channels (axis 1), got {scheme}")
        if in_features % scheme.group_size:
            raise ValueError(
                f"group_size={scheme.group_size} does not divide in_features={in_features}"
            )
        return scheme.group_size
    if scheme.axis != 0:
        raise ValueError(
            f"weight-only schemes are per output channel (axis=0) or grouped, got {scheme}"
        )
    return in_features


def assemble_qparams(scales: list[Tensor], zeros: list[Tensor], scheme: Scheme) -> QParams:
    """Per-group (S, Z) columns -> one QParams: (N, G) along axis 1, or (N,) per channel."""
    if scheme.group_size is None:
        return QParams(scales[0], zeros[0], scheme, 0)
    return QParams(torch.stack(scales, 1), torch.stack(zeros, 1), scheme, 1)


def _quadratic_error(delta: Tensor, hessian: Tensor) -> float:
    return float(((delta @ hessian) * delta).sum() / 2)


def group_qparams(weight: Tensor, hessian: Tensor, scheme: Scheme, clip: bool = False) -> QParams:
    """(S, Z) per row of one group of columns w (N, g) under the row scheme: min-max, or with
    ``clip`` the row's range [min w, max w] shrunk by the r ∈ {1, 0.95, …, 0.5} with the least
    round-to-nearest error (w − Q_r(w))·H_g·(w − Q_r(w))ᵀ, H_g the group's block of the Hessian
    (the layer-wise output error of rounding the group alone; `zeropoint.ptq.shrink`)."""
    if not clip:
        return calibrate(weight.float(), scheme)
    w, h = weight.double(), hessian.double()

    def error(lo: Tensor, hi: Tensor) -> Tensor:
        qp = qparams_for(w, lo, hi, scheme)
        delta = w - dequantize_int(quantize_int(w, qp), qp, torch.float64)
        return ((delta @ h) * delta).sum(1)

    lo, hi = shrink_search(w.amin(1), w.amax(1), error)
    return qparams_for(w, lo, hi, scheme)


def _inverse_hessian_factor(hessian: Tensor, damp: float) -> Tensor:
    """Upper Cholesky factor U of (H + λI)⁻¹, λ = damp·mean(diag H), raising λ tenfold (up to
    four times) where H is too ill-conditioned to factor."""
    k = hessian.shape[0]
    mean_diag = float(torch.diagonal(hessian).mean())
    for attempt in range(5):
        h = hessian + (damp * 10**attempt * mean_diag) * torch.eye(k, dtype=hessian.dtype)
        lower, info = torch.linalg.cholesky_ex(h)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(lower)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0:
                return upper
    raise ValueError("the calibration Hessian cannot be factored even with 10^4 x dampening")


def gptq_layer(
    weight: Tensor,
    hessian: Tensor,
    scheme: Scheme,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = True,
    clip: bool = False,
) -> GPTQResult:
    """GPTQ for one weight (N, K) given the Hessian H (K, K) of its inputs (module docstring)."""
    n, k = weight.shape
    if hessian.shape != (k, k):
        raise ValueError(
            f"Hessian of shape {tuple(hessian.shape)} does not fit a ({n}, {k}) weight"
        )
    if block_size < 1 or not damp >= 0:
        raise ValueError(f"need block_size >= 1 and damp >= 0, got {block_size} and {damp}")
    group = check_weight_scheme(scheme, k)
    rows = _row_scheme(scheme)
    w0 = weight.detach().double().clone()
    h = hessian.detach().double().clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w0[:, dead] = 0.0
    # round to nearest, for comparison (and the static groups' parameters)
    static = [group_qparams(w0[:, g : g + group], h[g : g + group, g : g + group], rows, clip)
              for g in range(0, k, group)]  # fmt: skip
    rtn = torch.cat([dequantize_int(quantize_int(w0[:, g : g + group], qp), qp).double()
                     for g, qp in zip(range(0, k, group), static)], dim=1)  # fmt: skip
    order = torch.argsort(torch.diagonal(h), descending=True, stable=True) if act_order else None
    w = w0[:, order] if order is not None else w0.clone()
    hp = h[order][:, order] if order is not None else h
    u = _inverse_hessian_factor(hp, damp)
    codes = torch.zeros(n, k, dtype=scheme.format.storage_dtype)
    qhat = torch.zeros_like(w)
    column = order if order is not None else torch.arange(k)
    group_qp: dict[int, QParams] = {} if (order is None and group < k) else dict(enumerate(static))
    for b0 in range(0, k, block_size):
        b1 = min(b0 + block_size, k)
        wb = w[:, b0:b1].clone()
        errors = torch.zeros_like(wb)
        for i in range(b1 - b0):
            j = int(column[b0 + i])  # original column index
            g = j // group
            if g not in group_qp:  # lazily, from the updated weights of the group
                cols = torch.cat([wb[:, i:], w[:, b1:]], dim=1)[:, :group]
                block = h[j : j + group, j : j + group]
                group_qp[g] = group_qparams(cols, block, rows, clip)
            qp = group_qp[g]
            q = quantize_int(wb[:, i : i + 1], qp)
            codes[:, b0 + i] = q[:, 0]
            qhat[:, b0 + i] = dequantize_int(q, qp, torch.float64)[:, 0]
            err = (wb[:, i] - qhat[:, b0 + i]) / u[b0 + i, b0 + i]
            wb[:, i:] -= err.unsqueeze(1) * u[b0 + i, b0 + i : b1].unsqueeze(0)
            errors[:, i] = err
        w[:, b1:] -= errors @ u[b0:b1, b1:]
    if order is not None:
        inverse = torch.argsort(order)
        codes, qhat = codes[:, inverse], qhat[:, inverse]
    qparams = assemble_qparams(
        [group_qp[g].scale for g in range(k // group)],
        [group_qp[g].zero_point for g in range(k // group)],
        scheme,
    )
    return GPTQResult(
        codes,
        qparams,
        _quadratic_error(w0 - qhat, hessian.double()),
        _quadratic_error(w0 - rtn, hessian.double()),
    )


def weight_only_targets(
    model: nn.Module, config: QuantConfig
) -> list[tuple[str, nn.Module, Scheme]]:
    """(name, layer, weight scheme) of every Linear and Embedding the weight-only config selects."""
    if config.activation is not None or config.dynamic:
        raise ValueError(
            "expected a weight-only config (activation=None), e.g. zp.int4_weight_only(128)"
        )
    config.check_names(model)
    return [(name, m, schemes[0]) for name, m, schemes in selected_layers(model, config)]  # type: ignore[misc]


def finish_weight_only(
    model: nn.Module, config: QuantConfig, targets: list[tuple[str, nn.Module, Scheme]]
) -> nn.Module:
    """Embeddings to round-to-nearest rows; the workflow state that `zp.save` / `zp.load` read."""
    state = QuantState(config, "weight_only", capture="module")
    for name, module, scheme in targets:
        if isinstance(module, nn.Embedding):
            model.set_submodule(name, WeightOnlyEmbedding(module, scheme))
        state.layers[name] = (scheme, None)
    model.__dict__["_zeropoint"] = state
    return model


def gptq_quantize(
    model: nn.Module,
    calib_data: CalibData,
    config: QuantConfig | None = None,
    *,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = True,
    clip: bool = False,
    awq_scales: bool = False,
    inplace: bool = False,
) -> nn.Module:
    """Weight-only quantization of every Linear the config selects (default
    ``zp.int4_weight_only()``: int4 in groups of 32) by GPTQ, layer by layer on the calibration
    data (batches, or a function that runs the model on them). Embeddings get round-to-nearest
    codes. Returns the model with `WeightOnlyLinear` layers (a copy unless ``inplace``); it saves
    and loads with `zp.save` / `zp.load` like `zp.quantize_dynamic`'s weight-only models.

    ``clip=True``: the groups' ranges by the Hessian-weighted clipping search (`group_qparams`).
    ``awq_scales=True`` first searches AWQ's per-input-channel scales s for the layer
    (`zeropoint.ptq.awq`, without its clipping search), then runs GPTQ on W·diag(s) with the
    Hessian of the scaled inputs, diag(1/s)·H·diag(1/s); the layer keeps s as its input scale."""
    config = config or int4_weight_only()
    model = model if inplace else copy.deepcopy(model)
    targets = weight_only_targets(model, config)
    schemes = {name: scheme for name, m, scheme in targets if isinstance(m, nn.Linear)}
    for _, module, scheme in targets:
        if isinstance(module, nn.Linear):
            check_weight_scheme(scheme, module.in_features)

    def quantize(name: str, layer: nn.Linear, inputs: LayerInputs) -> nn.Module:
        weight, hessian, scale = layer.weight.detach().float(), inputs.hessian(), None
        if awq_scales:
            from zeropoint.ptq.awq import awq_layer

            scale = awq_layer(weight, inputs, schemes[name], clip=False).input_scale
            weight = weight * scale
            inv = 1.0 / scale.double()
            hessian = hessian * inv.unsqueeze(0) * inv.unsqueeze(1)
        result = gptq_layer(weight, hessian, schemes[name], block_size, damp, act_order, clip)
        return WeightOnlyLinear.from_codes(layer, result.codes, result.qparams, input_scale=scale)

    quantize_sequentially(model, list(schemes), calib_data, quantize)
    return finish_weight_only(model, config, targets)


__all__ = ["GPTQResult", "gptq_layer", "gptq_quantize", "group_qparams"]
