"""The int32 bias of a quantized layer, written once for the simulation, the engine and the export.

A layer y = W x + b with x = S_x·(q_x − Z_x) and W = S_w·q_w accumulates in int32

    acc = Σ (q_x − Z_x)·q_w + q_b,        y ≈ S_x·S_w·acc,

so the bias is stored in the accumulator's units: scale S_b = S_x·S_w (per output channel when
the weights are; rounded to float32, as ONNX stores it), zero point 0, codes
q_b = round(b / S_b) (Jacob et al. 2018, §2.4; ONNX Runtime's quantizer writes the same).

A channel whose weights are (almost) zero but whose bias is not — a "dead" channel after batch-norm
folding, W ≈ 1e-9 with b = −1 — gets a tiny per-channel S_w from its weights, and then
|b / (S_x·S_w)| exceeds int32. Saturating it silently would output the wrong value, so the weight
scale is raised instead, to the smallest float32 value that keeps the bias inside ±2^30:

    S_w,c ← max(S_w,c, |b_c| / (S_x · 2^30))

(the other half of int32 is headroom for Σ(q_x − Z_x)·q_w). A weight on such a channel then
rounds to a few codes or to 0 — it was negligible — and the bias is exact to S_b/2. The
simulation, the integer engine and the ONNX export all read the raised scale through
`QuantMixin.weight_qparams`, so the three compute the same function.
"""

from __future__ import annotations

import torch
from torch import Tensor

from zeropoint.functional import quantize_int
from zeropoint.qparams import QParams, Scheme

#: Largest |q_b| a bias may take: half of int32, the rest is headroom for the products.
BIAS_LIMIT = float(1 << 30)


def integer_bias(x_qp: QParams, w_qp: QParams) -> bool:
    """Does a layer with these input and weight grids store an int32 bias? Only when both are
    integer grids: with a float format (fp8 / fp4) the accumulator is float and the bias stays
    float, as fp8 GEMMs add it."""
    return x_qp.scheme.float_format is None and w_qp.scheme.float_format is None


def bias_qparams(x_qp: QParams, w_qp: QParams) -> QParams:
    """S_b = fl32(S_x·S_w) (per output channel when S_w is), Z_b = 0, an int32 scheme."""
    if x_qp.scale.dim() != 0:
        raise ValueError(f"a layer's input must be quantized per tensor, got {x_qp.scheme}")
    scale = (x_qp.scale.double() * w_qp.scale.double()).to(torch.float32)
    per_channel = scale.dim() > 0
    scheme = Scheme(bits=32, symmetric=True, axis=0 if per_channel else None)
    scale = scale.reshape(-1) if per_channel else scale.reshape(())
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return QParams(scale, zero, scheme, 0 if per_channel else None)


def quantize_bias(bias: Tensor, x_qp: QParams, w_qp: QParams) -> tuple[QParams, Tensor]:
    """(S_b, q_b): the bias's int32 codes q_b = round(b / S_b), as int32."""
    qp = bias_qparams(x_qp, w_qp)
    return qp, quantize_int(bias.detach().float(), qp).to(torch.int32)


def bias_safe_weight_qparams(
    w_qp: QParams, bias: Tensor | None, x_qp: QParams | None, layer: str = "layer"
) -> QParams:
    """``w_qp`` with every scale raised to at least |b_c| / (S_x·2^30) (module docstring).

    Returns ``w_qp`` itself when nothing needs raising. Raises ValueError naming ``layer`` when
    even the raised scale cannot be represented (it would overflow float32)."""
    if bias is None or x_qp is None or not integer_bias(x_qp, w_qp):
        return w_qp
    if x_qp.scale.dim() != 0:
        raise ValueError(f"{layer}: the input must be quantized per tensor, got {x_qp.scheme}")
    b = bias.detach().double().abs()
    need = b / (x_qp.scale.double() * BIAS_LIMIT)
    if w_qp.scale.dim() == 0:
        need = need.max() if need.numel() else need.new_zeros(())
    elif w_qp.scheme.group_size is not None:
        return w_qp  # group-wise weights are weight-only: no int32 bias
    current = w_qp.scale.double()
    if not bool((need > current).any()):
        return w_qp
    raised = torch.maximum(current, need)
    scale = raised.to(torch.float32)
    scale = torch.where(scale.double() < raised, torch.nextafter(scale, scale + 1), scale)
    if not bool(torch.isfinite(scale).all()):
        worst = int(torch.argmax(need)) if need.dim() else 0
        raise ValueError(
            f"{layer}: bias {float(bias.detach().reshape(-1)[worst]):.4g} cannot be represented "
            f"in int32 at input scale {float(x_qp.scale):.4g}, even with the largest weight scale"
        )
    return QParams(scale, w_qp.zero_point, w_qp.scheme, w_qp.axis)


__all__ = [
    "BIAS_LIMIT",
    "bias_qparams",
    "bias_safe_weight_qparams",
    "integer_bias",
    "quantize_bias",
]
