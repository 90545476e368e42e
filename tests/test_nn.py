"""Simulation layers and quantizer modules: forward passes against the functional definition,
learnable-quantizer gradients against the papers' closed forms, QAT conv+bn against by-hand folding."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zeropoint as zp
from zeropoint.nn import (
    LSQ,
    PACT,
    FakeQuant,
    LSQPlus,
    QuantConvTranspose2d,
    QuantEmbedding,
    QuantLinear,
)
from zeropoint.nn.convbn import QuantConvBn2d
from zeropoint.nn.learnable import LEARNABLE
from zeropoint.nn.modules import QuantConv2d
from zeropoint.qparams import Scheme

W8 = Scheme(bits=8, symmetric=True, narrow=True, axis=0)


def _weight_fq(scheme: Scheme = W8) -> FakeQuant:
    return FakeQuant(scheme, mode="track")


def test_quant_linear_uses_the_fake_quantized_weight() -> None:
    layer = nn.Linear(16, 8)
    q = QuantLinear.from_float(layer, _weight_fq())
    x = torch.randn(4, 16)
    qp = zp.calibrate(layer.weight.detach(), W8)
    expected = F.linear(x, zp.fake_quantize(layer.weight.detach(), qp), layer.bias)
    torch.testing.assert_close(q(x), expected, rtol=0, atol=0)
    assert isinstance(q, nn.Linear) and q.weight is layer.weight  # parameters are shared


def test_transposed_conv_quantizes_per_output_channel_on_axis_1() -> None:
    layer = nn.ConvTranspose2d(4, 6, 2, stride=2)
    q = QuantConvTranspose2d.from_float(layer, _weight_fq(W8.with_(axis=1)))
    x = torch.randn(2, 4, 3, 3)
    y = q(x)
    assert y.shape == (2, 6, 6, 6)
    qp = q.weight_qparams()
    assert qp.axis == 1 and qp.scale.shape == (6,)
    expected = F.conv_transpose2d(x, zp.fake_quantize(layer.weight.detach(), qp), layer.bias, 2)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


def test_group_wise_conv_weight_is_sub_channel() -> None:
    layer = nn.Conv2d(8, 4, 3)
    scheme = Scheme(bits=4, symmetric=True, group_size=24)
    q = QuantConv2d.from_float(layer, _weight_fq(scheme))
    w = q.quantized_weight().detach()
    # blocks of 24 of the flattened (8·3·3 = 72) weights of each output channel
    flat = layer.weight.detach().reshape(4, 72)
    ref = zp.fake_quantize(flat, zp.calibrate(flat, scheme)).reshape(4, 8, 3, 3)
    torch.testing.assert_close(w, ref, rtol=0, atol=0)


def test_quant_embedding_looks_up_quantized_rows() -> None:
    emb = nn.Embedding(50, 12)
    q = QuantEmbedding.from_float(emb, _weight_fq(Scheme(bits=4, symmetric=True, axis=0)))
    idx = torch.tensor([[1, 7, 49]])
    table = q.quantized_weight().detach()
    torch.testing.assert_close(q(idx), table[idx], rtol=0, atol=0)


def test_fake_quant_modes_and_state_dict_round_trip() -> None:
    fq = FakeQuant(Scheme(bits=8, signed=False))
    x = torch.rand(100) * 3
    assert fq(x) is x  # observe: pass-through
    qp = fq.freeze()
    assert fq.mode == "quantize" and torch.equal(fq(x), zp.fake_quantize(x, qp))
    other = FakeQuant(Scheme(bits=8, signed=False))
    other.load_state_dict(fq.state_dict())
    assert other.scale.item() == qp.scale.item() and int(other.zero_point) == int(qp.zero_point)
    with pytest.raises(ValueError, match="mode"):
        fq.mode = "sometimes"
    with pytest.raises(ValueError, match="no quantization parameters"):
        FakeQuant(Scheme(), mode="quantize")(x)


def test_lsq_step_gradient_matches_the_paper() -> None:
    # Esser et al. 2020, eq. 3: ∂x̂/∂s = −x/s + round(x/s) inside, qmin or qmax outside;
    # the step's gradient is scaled by g = 1/√(N·qmax)
    scheme = Scheme(bits=4, signed=False)
    lsq = LSQ(scheme, signed=False)
    x = torch.tensor([0.05, 0.31, 0.77, 2.0, -0.4])
    lsq(x)  # initialise
    with torch.no_grad():
        lsq.scale.fill_(0.1)
    lsq(x).sum().backward()
    s, qmax = 0.1, 15
    v = x / s
    inside = (v >= 0) & (v <= qmax)
    per_elem = torch.where(inside, torch.round(v) - v, torch.where(v < 0, 0.0, float(qmax)))
    g = 1 / math.sqrt(x.numel() * qmax)
    assert lsq.scale.grad is not None
    assert lsq.scale.grad.item() == pytest.approx(per_elem.sum().item() * g, rel=1e-5)


def test_lsq_plus_learns_an_integer_zero_point() -> None:
    q = LSQPlus(Scheme(bits=4))
    x = torch.linspace(-0.5, 2.5, 50, requires_grad=True)
    q(x)
    qp = q.qparams()
    assert qp.zero_point.dtype == torch.int32 and qp.scheme.signed  # the data has negatives
    # initialised to the MSE observer's (S, Z) on the first batch
    ref = zp.calibrate(x.detach(), Scheme(bits=4, axis=0).with_(axis=None), "mse")
    assert qp.scale.item() == ref.scale.item() and int(qp.zero_point) == int(ref.zero_point)


def test_lsq_plus_gradients_match_the_closed_form() -> None:
    # Bhalgat et al. 2020: with x̂ = S·(clamp(round(x/S) + Z, qmin, qmax) − Z),
    # ∂x̂/∂S = round(x/S) − x/S inside, (qmin − Z) or (qmax − Z) outside; ∂x̂/∂Z = −S outside,
    # 0 inside; both scaled by g = 1/√(N·(qmax − qmin)); Z's gradient reaches the offset
    q = LSQPlus(Scheme(bits=3), signed=True)  # int3: [−4, 3]
    x = torch.tensor([-2.0, -0.26, 0.0, 0.33, 0.61, 1.9, 4.0])
    q(x)
    with torch.no_grad():
        q.scale.fill_(0.25)
        q.offset.fill_(-1.2)  # rounds to Z = −1: codes [−4, 3] cover x/S in [−3, 4]
    q(x).sum().backward()
    s, z = 0.25, -1
    v = x / s
    r = torch.round(v)
    inside = (r >= -4 - z) & (r <= 3 - z)
    bound = torch.where(r < -4 - z, float(-4 - z), float(3 - z))
    g = 1 / math.sqrt(x.numel() * 7)
    d_s = torch.where(inside, r - v, bound).sum().item() * g
    d_z = (-s * (~inside).sum()).item() * g
    assert q.scale.grad is not None and q.offset.grad is not None
    assert q.scale.grad.item() == pytest.approx(d_s, rel=1e-6)
    assert q.offset.grad.item() == pytest.approx(d_z, rel=1e-6)


def test_pact_gradient_of_alpha_is_one_above_the_clip() -> None:
    # Choi et al. 2018, eq. 3: ∂ŷ/∂α = 1 for x ≥ α, else 0
    pact = PACT(Scheme(bits=4, signed=False), alpha=1.0, signed=False)
    x = torch.tensor([-1.0, 0.2, 0.9, 1.5, 3.0])
    pact(x).sum().backward()
    assert pact.alpha.grad is not None and pact.alpha.grad.item() == pytest.approx(2.0)
    out = pact(x).detach()
    assert out.min().item() == 0.0 and out.max().item() == pytest.approx(1.0)


def test_signed_pact_clips_both_sides() -> None:
    # y = clamp(x, −α, α) on the narrow signed range [−7, 7] (4 bits): ∂ŷ/∂α = +1 above α,
    # −1 below −α, 0 inside; levels k·α/7
    pact = PACT(Scheme(bits=4, signed=False), alpha=1.4)  # the sign comes from the data
    x = torch.tensor([-3.0, -1.5, -0.3, 0.0, 0.9, 1.5, 2.0])
    y = pact(x)
    assert pact.scheme == Scheme(bits=4, signed=True, symmetric=True, narrow=True)
    y.sum().backward()
    assert pact.alpha.grad is not None and pact.alpha.grad.item() == pytest.approx(2 - 2)
    expected = torch.tensor([-7, -7, -2, 0, 4, 7, 7]) * torch.tensor(1.4) / 7
    torch.testing.assert_close(y.detach(), expected, rtol=0, atol=0)
    assert "int4 sym,narrow" in repr(pact) and "signed, from data" in repr(pact)


@pytest.mark.parametrize("kind", ["lsq", "lsq+", "pact"])
@pytest.mark.parametrize("positive", [True, False])
def test_activation_quantizers_take_their_sign_from_the_first_batch(
    kind: str, positive: bool
) -> None:
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    x = x.abs() if positive else x
    q = LEARNABLE[kind](Scheme(bits=4, signed=False))
    assert "from the first batch" in repr(q)
    y = q(x)
    assert q.scheme.signed is not positive and q.qparams().scheme == q.scheme
    assert ("uint4" if positive else "int4") in repr(q)
    if not positive:  # negative values survive (an unsigned quantizer would zero them)
        neg = x < 0
        assert bool((y[neg] < 0).float().mean() > 0.5)
    # the forward pass is fake_quantize with the quantizer's own (S, Z), bit for bit
    assert torch.equal(y.detach(), zp.fake_quantize(x, q.qparams()))
    # a fresh quantizer loading this state takes the same sign without seeing data
    fresh = LEARNABLE[kind](Scheme(bits=4, signed=False))
    fresh.load_state_dict(q.state_dict())
    assert fresh.scheme == q.scheme and torch.equal(fresh(x), y)


def test_a_fixed_sign_is_kept() -> None:
    x = torch.tensor([-1.0, -0.5, 0.25, 1.0])
    q = LSQ(Scheme(bits=4, signed=False), signed=False)
    assert q(x)[:2].tolist() == [0.0, 0.0]  # asked for: unsigned, negatives clip to 0
    assert q.scheme.signed is False and "fixed" in repr(q)


def test_per_channel_lsq_forward_and_gradient() -> None:
    w = torch.randn(3, 10, generator=torch.Generator().manual_seed(2))
    q = LSQ(Scheme(bits=3, symmetric=True, axis=0), 3, signed=True, weight=True)
    q(w)
    with torch.no_grad():
        q.scale.copy_(torch.tensor([0.2, 0.3, 0.5]))
    y = q(w)
    assert torch.equal(y.detach(), zp.fake_quantize(w, q.qparams()))
    (y * torch.arange(10.0)).sum().backward()  # a different gradient per element
    s = torch.tensor([0.2, 0.3, 0.5]).unsqueeze(1)
    v = w / s
    r = torch.round(v)
    inside = (r >= -4) & (r <= 3)
    per_elem = torch.where(inside, r - v, r.clamp(-4, 3)) * torch.arange(10.0)
    g = 1 / math.sqrt(10 * 3)
    assert q.scale.grad is not None
    torch.testing.assert_close(q.scale.grad, per_elem.sum(1) * g, rtol=1e-5, atol=1e-7)


def test_weight_step_has_a_floor_relative_to_its_channel() -> None:
    # a collapsed step (1e-12, as weight decay produced) is raised to max|W_c| / (256·m), m = 8
    # for int4 [−8, 7]: the clip level m·S stays at 1/256 of the channel's largest weight
    w = torch.tensor([[0.5, -1.0, 0.25, 0.1], [1e-3, -2e-3, 0.0, 5e-4], [0.0, 0.0, 0.0, 0.0]])
    q = LSQ(Scheme(bits=4, symmetric=True, axis=0), 3, signed=True, weight=True)
    q(w)
    with torch.no_grad():
        q.scale.fill_(1e-12)
    y = q(w)
    # (an all-zero channel's floor is the smallest normal float32: 1e-12 stands there)
    floor = torch.tensor([1.0 / 2048, 2e-3 / 2048, 1e-12])
    torch.testing.assert_close(q.qparams().scale, floor, rtol=1e-6, atol=0)
    assert torch.equal(y.detach(), zp.fake_quantize(w, q.qparams()))
    y.sum().backward()  # below the floor the step gets no gradient
    assert q.scale.grad is not None and torch.equal(q.scale.grad[:2], torch.zeros(2))
    # the floor follows the weights: halve them and it halves
    q(w / 2)
    torch.testing.assert_close(q.qparams().scale[:2], floor[:2] / 2, rtol=1e-6, atol=0)


def test_learnable_quantizers_refuse_qparams_before_data() -> None:
    for q in (LSQ(Scheme(bits=4)), LSQPlus(Scheme(bits=4)), PACT(Scheme(bits=4))):
        with pytest.raises(ValueError, match="has seen no data"):
            q.qparams()


def _conv_bn() -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    conv = nn.Conv2d(3, 5, 3, padding=1)
    bn = nn.BatchNorm2d(5)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return conv, bn


def test_qat_conv_bn_folds_batch_statistics_while_training() -> None:
    conv, bn = _conv_bn()
    fused = QuantConvBn2d.from_conv_bn(QuantConv2d.from_float(conv, None), bn)
    fused.train()
    x = torch.randn(8, 3, 6, 6)
    y = fused(x)
    # Jacob et al. 2018: W·γ/σ_B and β + (b − μ_B)·γ/σ_B with this batch's statistics
    ref_float = F.conv2d(x, conv.weight, conv.bias, padding=1)
    mu, var = ref_float.mean((0, 2, 3)), ref_float.var((0, 2, 3), unbiased=False)
    s = bn.weight / torch.sqrt(var + bn.eps)
    expected = F.conv2d(
        x, conv.weight * s.reshape(-1, 1, 1, 1), bn.bias + (conv.bias - mu) * s, padding=1
    )
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    # ... which is nn.BatchNorm2d's training output, with running statistics updated alike
    reference_bn = nn.BatchNorm2d(5)
    reference_bn.load_state_dict({k: v for k, v in bn.state_dict().items()})
    with torch.no_grad():
        reference_bn.running_mean.zero_()  # type: ignore[union-attr]
        reference_bn.running_var.fill_(1)  # type: ignore[union-attr]
        reference_bn.weight.copy_(bn.weight)
        reference_bn.bias.copy_(bn.bias)
        reference_bn.train()
        torch.testing.assert_close(reference_bn(ref_float), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(bn.running_mean, reference_bn.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, reference_bn.running_var, rtol=1e-5, atol=1e-6)


def test_qat_conv_bn_after_freeze_uses_running_stats_and_converts_exactly() -> None:
    conv, bn = _conv_bn()
    fused = QuantConvBn2d.from_conv_bn(QuantConv2d.from_float(conv, _weight_fq()), bn)
    fused.train()
    for _ in range(3):
        fused(torch.randn(8, 3, 6, 6))
    fused.freeze_bn()
    x = torch.randn(2, 3, 6, 6)
    y_frozen = fused(x)
    conv_only = fused.to_conv()
    assert type(conv_only) is QuantConv2d and "bn" not in conv_only._modules
    torch.testing.assert_close(conv_only(x), y_frozen, rtol=1e-5, atol=1e-5)
    fused.eval()
    torch.testing.assert_close(fused(x), y_frozen, rtol=0, atol=0)
