"""The int32 bias: S_b = S_x·S_w, q_b = round(b / S_b), and the weight scale raised only where
the bias would leave ±2^30 — checked against float64 arithmetic written here."""

from __future__ import annotations

import pytest
import torch

import zeropoint as zp
from zeropoint.bias import BIAS_LIMIT, bias_safe_weight_qparams, quantize_bias

W8 = zp.Scheme(bits=8, symmetric=True, narrow=True, axis=0)


def _x_qp(scale: float) -> zp.QParams:
    return zp.qparams_from_range(0.0, 255 * scale, zp.Scheme(bits=8, signed=False))


def test_bias_codes_are_the_rounded_quotient_in_float64() -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(16, 8, generator=gen)
    b = torch.randn(16, generator=gen)
    w_qp, x_qp = zp.calibrate(w, W8), _x_qp(0.02)
    qp, q_b = quantize_bias(b, x_qp, w_qp)
    s_b = (x_qp.scale.double() * w_qp.scale.double()).float().double()  # stored as float32
    expected = torch.round(b.double() / s_b).to(torch.int32)
    assert torch.equal(q_b, expected) and q_b.dtype == torch.int32
    assert qp.scheme.bits == 32 and torch.equal(qp.scale.double(), s_b)


def test_only_channels_whose_bias_overflows_get_a_larger_scale() -> None:
    w = torch.randn(4, 8)
    w[0] = 3e-9  # a dead channel: its own scale is ~2e-11
    b = torch.tensor([-1.0, 0.5, -0.25, 2.0])
    w_qp, x_qp = zp.calibrate(w, W8), _x_qp(0.01)
    raised = bias_safe_weight_qparams(w_qp, b, x_qp, "conv")
    need = 1.0 / (float(x_qp.scale) * BIAS_LIMIT)
    assert float(raised.scale[0]) >= need and float(raised.scale[0]) <= need * (1 + 2**-22)
    assert torch.equal(raised.scale[1:], w_qp.scale[1:])
    q_b = quantize_bias(b, x_qp, raised)[1]
    assert int(q_b.abs().max()) <= BIAS_LIMIT
    assert bias_safe_weight_qparams(zp.calibrate(torch.randn(4, 8), W8), b, x_qp) is not None


def test_an_unrepresentable_bias_is_an_error_naming_the_layer() -> None:
    w_qp = zp.calibrate(torch.full((2, 4), 1e-30), W8)
    x_qp = _x_qp(1e-38)
    with pytest.raises(ValueError, match=r"features\.3: bias .* cannot be represented"):
        bias_safe_weight_qparams(w_qp, torch.tensor([3e38, 1.0]), x_qp, "features.3")
