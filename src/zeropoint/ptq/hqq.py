"""HQQ: data-free weight-only quantization by half-quadratic optimisation of the zero points
(Badri & Shaji 2023, "Half-Quadratic Quantization of Large Machine Learning Models").

Per group of weights w (one row of a group of ``group_size`` input channels), with the min-max
step S and codes q = clamp(round(w/S + z), 0, 2^b − 1), HQQ minimises the sparsity-promoting
error ‖w − S·(q − z)‖_p^p (p < 1: a few large errors cost less than many small ones) over the
zero point z, by splitting it with an auxiliary error variable e (half-quadratic splitting):

    q  ← clamp(round(w/S + z), 0, 2^b − 1)
    e  ← shrink_p(w − S·(q − z), β)         shrink_p(x, β) = sign(x)·relu(|x| − |x|^(p−1)/β)
    z  ← mean(q − (w − e)/S)                 (the closed-form minimiser of the quadratic part)
    β  ← κ·β

starting from the min-max zero point, for ``iters`` steps or until the mean |w − Ŵ| stops
falling (the reference implementation's defaults: p = 0.7, β = 10, κ = 1.01, 20 iterations).
No calibration data is needed.

z is fractional. It is stored as the integer Z = clamp(round(z)) that `QParams` holds plus a
float offset O = S·(Z − z) per group, so Ŵ = S·(q − Z) + O = S·(q − z): `WeightOnlyLinear`'s
``weight_offset``; the packed kernels add it in the same fused multiply-add.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from zeropoint.nn.weight_only import WeightOnlyLinear
from zeropoint.observers.registry import calibrate
from zeropoint.ptq.gptq import check_weight_scheme, finish_weight_only, weight_only_targets
from zeropoint.qparams import QParams, Scheme, to_slices
from zeropoint.workflows.config import QuantConfig


@dataclass(frozen=True)
class HQQResult:
    """Codes (N, K), (S, Z) and the offsets O (shaped like S) of one weight, with the mean
    |w − Ŵ| before (min-max, round to nearest) and after the optimisation."""

    codes: Tensor
    qparams: QParams
    offset: Tensor
    error: float
    rtn_error: float


def shrink_lp(x: Tensor, beta: float, p: float) -> Tensor:
    """The generalised soft-thresholding operator of the ℓp proximal step (HQQ, Eq. 4):
    sign(x)·relu(|x| − |x|^(p−1)/β)."""
    a = x.abs()
    return torch.sign(x) * torch.relu(a - a.clamp(min=1e-30).pow(p - 1) / beta)


def hqq_layer(
    weight: Tensor,
    scheme: Scheme,
    iters: int = 20,
    p: float = 0.7,
    beta: float = 10.0,
    kappa: float = 1.01,
) -> HQQResult:
    """HQQ for one weight (N, K) under an unsigned affine (asymmetric) per-channel or grouped
    scheme (module docstring)."""
    if scheme.symmetric or scheme.signed:
        raise ValueError(
            f"HQQ optimises zero points: it needs an unsigned affine scheme, got {scheme}"
        )
    if iters < 0 or not 0 < p <= 1 or beta <= 0 or kappa < 1:
        raise ValueError(
            f"need iters >= 0, 0 < p <= 1, beta > 0, kappa >= 1; got {iters}, {p}, {beta}, {kappa}"
        )
    n, k = weight.shape
    check_weight_scheme(scheme, k)
    w = weight.detach().float()
    qp = calibrate(w, scheme)  # min-max S and Z, per group
    rows = to_slices(w, scheme).double()  # (N·G, g) in the scale's row order, or (N, K)
    s = qp.scale.reshape(-1, 1).double()
    z = qp.zero_point.reshape(-1, 1).double()
    qmin, qmax = scheme.qrange

    def codes_of(zero: Tensor) -> Tensor:
        return torch.clamp(torch.round(rows / s + zero), qmin, qmax)

    def error_of(zero: Tensor) -> float:
        return float((rows - s * (codes_of(zero) - zero)).abs().mean())

    rtn_error = best = error_of(z)
    for _ in range(iters):
        q = codes_of(z)
        e = shrink_lp(rows - s * (q - z), beta, p)
        z_new = (q - (rows - e) / s).mean(dim=1, keepdim=True)
        err = error_of(z_new)
        beta *= kappa
        if err >= best:
            break
        best, z = err, z_new
    codes = codes_of(z)
    z_int = torch.clamp(torch.round(z), qmin, qmax)
    offset = (s * (z_int - z)).float().reshape(qp.scale.shape)
    qparams = QParams(qp.scale, z_int.reshape(qp.scale.shape), scheme, qp.axis)
    # rows of to_slices are (N·G, g) for groups along the last axis, (N, K) per channel
    return HQQResult(
        codes.reshape(n, k).to(scheme.format.storage_dtype), qparams, offset, best, rtn_error
    )


def hqq_quantize(
    model: nn.Module,
    config: QuantConfig | None = None,
    *,
    iters: int = 20,
    p: float = 0.7,
    beta: float = 10.0,
    kappa: float = 1.01,
    inplace: bool = False,
) -> nn.Module:
    """Data-free weight-only quantization of every Linear the config selects by HQQ (default:
    uint4 affine in groups of 64, the reference's usual setting); embeddings get
    round-to-nearest codes. Returns the model with `WeightOnlyLinear` layers."""
    config = config or QuantConfig(
        weight=Scheme(bits=4, signed=False, group_size=64),
        activation=None,
        module_types=(nn.Linear, nn.Embedding),
    )
    model = model if inplace else copy.deepcopy(model)
    targets = weight_only_targets(model, config)
    for name, module, scheme in targets:
        if isinstance(module, nn.Linear):
            r = hqq_layer(module.weight, scheme, iters, p, beta, kappa)
            new = WeightOnlyLinear.from_codes(module, r.codes, r.qparams, offset=r.offset)
            model.set_submodule(name, new)
    return finish_weight_only(model, config, targets)


__all__ = ["HQQResult", "hqq_layer", "hqq_quantize", "shrink_lp"]
