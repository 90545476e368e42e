"""Bias correction: the clipped-normal expectation against quadrature, the empirical corrections
against their closed forms, the analytic one from batch-norm statistics, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import zeropoint as zp
from demo.zoo.digits import DigitsCNN, DigitsData, accuracy
from zeropoint.nn.modules import QuantMixin
from zeropoint.ptq.adaround import adaround
from zeropoint.ptq.bias_correction import (
    clipped_normal_mean,
    correct_bias,
    correct_bias_analytic,
    input_distributions,
)
from zeropoint.ptq.equalize import equalize
from zeropoint.ptq.layer_io import float_simulation
from zeropoint.ptq.simulation import simulate


def _quadrature(mu: float, sigma: float, lo: float, hi: float) -> float:
    """E[clip(z, lo, hi)], z ~ N(mu, sigma²), by the trapezoid rule on ±14σ (float64)."""
    z = np.linspace(mu - 14 * sigma, mu + 14 * sigma, 400001)
    pdf = np.exp(-0.5 * ((z - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    return float(np.trapezoid(np.clip(z, lo, hi) * pdf, z))


@pytest.mark.parametrize(
    ("lo", "hi"), [(0.0, math.inf), (0.0, 6.0), (-math.inf, math.inf), (-1.0, 2.5)]
)
@pytest.mark.parametrize(("mu", "sigma"), [(0.3, 1.0), (-2.0, 0.5), (5.5, 2.0), (8.0, 0.7)])
def test_clipped_normal_mean_matches_quadrature(
    mu: float, sigma: float, lo: float, hi: float
) -> None:
    got = clipped_normal_mean(
        torch.tensor([mu], dtype=torch.float64), torch.tensor([sigma], dtype=torch.float64), lo, hi
    )
    assert float(got) == pytest.approx(_quadrature(mu, sigma, lo, hi), abs=1e-9)


def test_clipped_normal_mean_without_spread_is_the_clipped_mean() -> None:
    got = clipped_normal_mean(torch.tensor([-1.0, 3.0, 9.0]), torch.zeros(3), 0.0, 6.0)
    assert torch.equal(got, torch.tensor([0.0, 3.0, 6.0], dtype=torch.float64))


def _weight_only(bits: int, axis: int | None = 0) -> zp.QuantConfig:
    return zp.QuantConfig(weight=zp.Scheme(bits=bits, symmetric=True, axis=axis), activation=None)


def test_layer_mode_removes_exactly_the_weight_error_times_the_input_mean() -> None:
    """One linear layer, weights at 3 bits, float inputs: ε = (Q(W) − W)·E[x], and afterwards
    the quantized layer's mean output equals the float layer's on the same data."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8)).eval()
    x = torch.randn(512, 16) + torch.linspace(-2, 3, 16)  # inputs with non-zero means
    q = simulate(model, [x], _weight_only(3), progress=False)
    corrected = correct_bias(q, x, mode="layer")
    layer = q.get_submodule("0")
    assert isinstance(layer, QuantMixin)
    dw = (layer.quantized_weight() - layer.float_weight).detach().double()
    expected = model[0].bias.detach().double() - dw @ x.double().mean(0)
    assert torch.allclose(corrected.get_submodule("0").bias.double(), expected, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(corrected(x).double().mean(0), model(x).double().mean(0), atol=1e-5)
    assert torch.equal(q.get_submodule("0").bias, model[0].bias)  # a copy was corrected


def test_model_mode_matches_every_layer_mean_to_the_float_model() -> None:
    """After the correction, each quantized layer's mean output (per channel, on the data)
    equals the float model's at that layer — the error of the whole prefix removed — up to
    the rounding of the int32 bias, S_b·round(b / S_b) with S_b = S_x·S_w: at most S_b / 2."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 36, 5),
    ).eval()  # fmt: skip
    x = torch.randn(64, 3, 6, 6)
    config = zp.QuantConfig(
        weight=zp.Scheme(bits=3, symmetric=True), activation=zp.Scheme(bits=4, signed=False)
    )
    q = correct_bias(simulate(model, [x], config, progress=False), x)
    means: dict[str, torch.Tensor] = {}
    for name in ("0", "2", "5"):

        def hook(m: nn.Module, a: object, out: torch.Tensor, name: str = name) -> None:
            dims = [d for d in range(out.dim()) if d != (out.dim() - 1 if out.dim() == 2 else 1)]
            means[name] = out.double().mean(dims)

        q.get_submodule(name).register_forward_hook(hook)
    with torch.no_grad():
        with float_simulation(q):  # the layers' own outputs, before the fused ReLU
            q(x)
        h = x
        for i, layer in enumerate(model):
            h = layer(h)
            if str(i) in means:
                dims = [d for d in range(h.dim()) if d != (h.dim() - 1 if h.dim() == 2 else 1)]
                layer = q.get_submodule(str(i))
                assert isinstance(layer, QuantMixin)
                x_qp, w_qp = layer.input_qparams(), layer.weight_qparams()
                assert x_qp is not None
                half_step = 0.5 * float(x_qp.scale) * w_qp.scale.double() + 1e-6
                err = (means[str(i)] - h.double().mean(dims)).abs()
                assert bool((err <= half_step).all()), (str(i), err, half_step)


def test_after_adaround_the_float_model_is_required_and_used() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.randn(64, 8) + 1.0
    ada = adaround(model, x, _weight_only(3), num_samples=64, iterations=100, progress=False)
    with pytest.raises(ValueError, match="float_model"):
        correct_bias(ada, x)
    corrected = correct_bias(ada, x, model)
    with torch.no_grad():
        assert torch.allclose(corrected(x).double().mean(0), model(x).double().mean(0), atol=1e-5)


class BnReluLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(12)
        self.act = nn.ReLU6()
        self.fc = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.bn(x)))


def test_analytic_correction_is_the_weight_error_times_the_clipped_normal_mean() -> None:
    torch.manual_seed(0)
    model = BnReluLinear().eval()
    model.bn.weight.data = torch.rand(12) * 2 + 0.1
    model.bn.bias.data = torch.randn(12) * 3
    q = simulate(model, [torch.randn(32, 12)], _weight_only(3), progress=False)
    corrected = correct_bias_analytic(q, model)
    layer = q.get_submodule("fc")
    assert isinstance(layer, QuantMixin)
    expected_x = clipped_normal_mean(model.bn.bias.detach(), model.bn.weight.detach(), 0.0, 6.0)
    dw = (layer.quantized_weight() - layer.float_weight).detach().double()
    expected = model.fc.bias.detach().double() - dw @ expected_x
    assert torch.allclose(corrected.get_submodule("fc").bias.double(), expected, atol=1e-6)
    # inputs drawn as the batch norm says: the corrected model's mean error is gone
    bn_out = model.bn.bias.detach() + model.bn.weight.detach() * torch.randn(200000, 12)
    x = (bn_out - model.bn.bias.detach()) / model.bn.weight.detach()
    x = x * torch.sqrt(model.bn.running_var + model.bn.eps) + model.bn.running_mean
    with torch.no_grad():
        err_before = (q(x) - model(x)).double().mean(0).abs().max()
        err_after = (corrected(x) - model(x)).double().mean(0).abs().max()
    assert err_after < 0.05 * err_before


def test_analytic_correction_reads_an_equalized_model() -> None:
    """After equalization the statistics live in the scaled batch norms and the per-channel
    clip: the distribution feeding each layer is that of the equalized model."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(), nn.Conv2d(8, 4, 1)
    ).eval()  # fmt: skip
    model[1].bias.data = torch.randn(8) * 2
    eq = equalize(model, absorb_bias=False)
    (mean, std, lo, hi) = input_distributions(eq)["3"]
    assert torch.equal(mean, eq[1].bias.detach().double())
    assert torch.equal(std, eq[1].weight.detach().double().abs())
    assert torch.equal(hi, eq[2].upper.double()) and torch.equal(
        lo, torch.zeros(8, dtype=torch.float64)
    )
    q = simulate(eq, [torch.randn(16, 3, 4, 4)], _weight_only(4), progress=False)
    assert "3" in correct_bias_analytic(q, eq).__dict__["_zeropoint_bias_correction"]


def test_analytic_correction_without_batch_norms_is_a_clear_error() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    q = simulate(model, [torch.randn(16, 4)], _weight_only(4), progress=False)
    with pytest.raises(ValueError, match="analytic bias correction needs batch norms"):
        correct_bias_analytic(q, model)
    with pytest.raises(ValueError, match="no quantized layers"):
        correct_bias(model, torch.randn(16, 4))
    with pytest.raises(ValueError, match="mode"):
        correct_bias(q, torch.randn(16, 4), mode="global")


@pytest.mark.slow
def test_digits_cnn_bias_correction_gains(digits: tuple[DigitsCNN, DigitsData]) -> None:
    """Per-tensor W4A8 weights lose several points to a biased output error; the empirical
    correction wins them back (measured: 94.4 % → 99.4 %; fp32 99.7 %)."""
    model, data = digits
    calib = data.x_train[:256]
    config = zp.QuantConfig(
        weight=zp.Scheme(bits=4, symmetric=True), activation=zp.Scheme(bits=8, signed=False)
    )
    q = simulate(model, [calib], config, progress=False)
    before = accuracy(q, data.x_test, data.y_test)
    after = accuracy(correct_bias(q, calib), data.x_test, data.y_test)
    analytic = accuracy(correct_bias_analytic(q, model), data.x_test, data.y_test)
    assert before <= 96.0 and after >= 98.5 and analytic > before
