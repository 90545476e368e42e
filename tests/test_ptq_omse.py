"""OMSE: the L2-optimal clip against a dense independent search, the "omse" calibration method
in configs, dual kernels for layers whose error stays large and the deployable alternative."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import zeropoint as zp
from demo.zoo.digits import DigitsCNN, DigitsData, accuracy
from zeropoint.nn.modules import QuantMixin
from zeropoint.ptq.omse import DualQuant, omse, omse_report, relative_weight_error
from zeropoint.ptq.omse_observer import OMSE, omse_range


def _dense_best_error(x: np.ndarray, bits: int) -> float:
    """min over 20,000 clip levels α of Σ (Q_α(x) − x)² for the symmetric signed b-bit grid
    (full range [−2^(b−1), 2^(b−1) − 1], S = 2α/(2^b − 1)), in float64 numpy."""
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    m = np.abs(x).max()
    best = np.inf
    for alpha in np.linspace(m / 20000, m, 20000):
        s = 2 * alpha / (2**bits - 1)
        q = np.clip(np.round(x / s), qmin, qmax) * s
        best = min(best, float(((q - x) ** 2).sum()))
    return best


@pytest.mark.parametrize("bits", [2, 4])
def test_omse_range_is_the_l2_optimal_clip(bits: int) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2000, generator=g) * torch.rand(1, 2000, generator=g).pow(3) * 4
    scheme = zp.Scheme(bits=bits, symmetric=True, axis=0)
    lo, hi = omse_range(x, scheme)
    qp = zp.qparams_from_range(lo, hi, scheme, x.shape)
    err = float((zp.fake_quantize(x, qp).double() - x.double()).pow(2).sum())
    best = _dense_best_error(x.double().numpy()[0], bits)
    assert err <= best * 1.002  # the grid + refinement reaches the dense optimum within 0.2 %
    minmax = zp.calibrate(x, scheme, "minmax")
    assert err < float((zp.fake_quantize(x, minmax) - x).double().pow(2).sum()) * 0.8


def test_omse_is_a_calibration_method_for_weights_and_activations() -> None:
    x = torch.randn(64, 300)
    scheme = zp.Scheme(bits=4, symmetric=True, axis=0)
    qp = zp.calibrate(x, scheme, "omse")
    for other in ("minmax", "mse"):
        ref = zp.calibrate(x, scheme, other)
        assert (zp.fake_quantize(x, qp) - x).pow(2).sum() <= (zp.fake_quantize(x, ref) - x).pow(
            2
        ).sum()
    config = zp.QuantConfig(weight_observer="omse", activation_observer="omse")
    model = nn.Sequential(nn.Linear(300, 10), nn.ReLU(), nn.Linear(10, 2)).eval()
    q = zp.quantize_static(model, [x], config, progress=False)
    assert q.get_submodule("0").weight_quant.observer_name == "omse"


def test_observer_halves_merge_to_the_whole() -> None:
    x = torch.randn(8, 400)
    scheme = zp.Scheme(bits=3, symmetric=True, axis=0)
    a, b, whole = OMSE(scheme), OMSE(scheme), OMSE(scheme)
    a.update(x[:, :200])
    b.update(x[:, 200:])
    whole.update(x)
    merged = a.merge(b).qparams()
    assert torch.equal(merged.scale, whole.qparams().scale)


def _wa(w_bits: int, a_bits: int) -> zp.QuantConfig:
    return zp.QuantConfig(
        weight=zp.Scheme(bits=w_bits, symmetric=True, axis=0),
        activation=zp.Scheme(bits=a_bits, signed=False),
    )


def test_dual_kernels_are_two_quantized_tensors_and_refuse_to_lower() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(128, 16)
    single = omse(model, [x], _wa(3, 8), progress=False)
    dual = omse(model, [x], _wa(3, 8), dual_threshold=1e-6, progress=False)
    report = omse_report(dual)
    assert set(report.treated) == {"0", "2"}
    layer = dual.get_submodule("0")
    assert isinstance(layer, QuantMixin) and isinstance(layer.weight_quant, DualQuant)
    first, second = layer.weight_quant.parts()
    w = layer.float_weight.detach()
    q1 = zp.fake_quantize(w, first)
    expected = q1 + zp.fake_quantize(w - q1, second)
    assert torch.equal(layer.quantized_weight().detach(), expected)
    before = single.get_submodule("0")
    assert isinstance(before, QuantMixin)
    assert torch.equal(first.scale, before.weight_qparams().scale)  # Q₁ is the OMSE kernel
    assert report.errors["0"] == relative_weight_error(before)
    assert report.errors_after["0"] < 0.1 * report.errors["0"]
    with pytest.raises(ValueError, match="two quantized kernels"):
        layer.weight_qparams()
    with pytest.raises(ValueError, match="two quantized kernels"):
        zp.to_integer(dual, x[:2])


def test_large_error_alternative_widens_those_layers_to_one_grid() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(128, 16)
    plain = omse(model, [x], _wa(4, 8), progress=False)
    errors = omse_report(plain).errors
    threshold = (errors["0"] + errors["2"]) / 2  # one layer above, one below
    wide = omse(model, [x], _wa(4, 8), dual_threshold=threshold, large_error="bits", progress=False)
    treated = omse_report(wide).treated
    assert len(treated) == 1
    (name,) = treated
    layer = wide.get_submodule(name)
    assert isinstance(layer, QuantMixin) and layer.weight_qparams().scheme.bits == 8
    program = zp.to_integer(wide, x[:2])  # one grid per layer: lowers as usual
    assert program.fallbacks == []
    with pytest.raises(ValueError, match="large_error"):
        omse(model, [x], _wa(4, 8), large_error="triple")


@pytest.mark.slow
def test_digits_cnn_at_three_bits(digits: tuple[DigitsCNN, DigitsData]) -> None:
    """W3A8: OMSE ranges beat min-max; dual 3-bit kernels for every layer (relative error
    above 1 %) come close to fp32 (measured 81.3 % min-max, 93.9 % OMSE, 99.4 % dual; fp32
    99.7 %)."""
    model, data = digits
    calib = [data.x_train[:256]]
    minmax = zp.quantize_static(model, calib, _wa(3, 8), progress=False)
    plain = omse(model, calib, _wa(3, 8), progress=False)
    dual = omse(model, calib, _wa(3, 8), dual_threshold=0.01, progress=False)
    acc = [accuracy(m, data.x_test, data.y_test) for m in (minmax, plain, dual)]
    assert acc[0] < 85.0 and acc[1] > acc[0] + 5.0 and acc[2] > 98.5
