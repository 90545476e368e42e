"""QAT on the digits CNN: LSQ at W2A2 / W3A3 against fp32 and round-to-nearest; PACT and LSQ+."""

from __future__ import annotations

import pytest
import torch

import zeropoint as zp
from demo.zoo.digits import DigitsCNN, DigitsData, accuracy, train
from zeropoint.nn import LSQ, PACT, LSQPlus
from zeropoint.nn.convbn import QuantConvBn2d
from zeropoint.nn.learnable import pact_regularizer
from zeropoint.workflows.graph import state_of


def _qat(model: DigitsCNN, data: DigitsData, config: zp.QuantConfig, epochs: int) -> float:
    q = zp.prepare_qat(model, config, example_inputs=data.x_train[:256])
    extra = pact_regularizer if config.learnable == "pact" else None
    train(q, data, epochs=epochs, lr=3e-3, extra_loss=extra)
    return accuracy(zp.convert(q), data.x_test, data.y_test)


def _round_to_nearest(model: DigitsCNN, data: DigitsData, config: zp.QuantConfig) -> float:
    ptq = config.with_(learnable=None, activation_observer="minmax")
    q = zp.quantize_static(model, data.calibration_batches(), ptq, progress=False)
    return accuracy(q, data.x_test, data.y_test)


def test_prepare_qat_places_learnable_quantizers_and_qat_batchnorm(
    digits: tuple[DigitsCNN, DigitsData],
) -> None:
    model, data = digits
    q = zp.prepare_qat(model, zp.w2a2_qat("lsq"), example_inputs=data.x_train[:64])
    assert q.training and state_of(q).workflow == "qat"
    assert isinstance(q.stem[0], QuantConvBn2d) and isinstance(q.head.weight_quant, LSQ)
    acts = list(q.act_quant.values())
    assert all(isinstance(a, LSQ) for a in acts)
    # first and last layers stay at 8 bits, the rest at 2
    assert q.stem[0].weight_quant.scheme.bits == 8 and q.head.weight_quant.scheme.bits == 8
    assert q.block.conv1.weight_quant.scheme.bits == 2
    # every quantizer scale is a parameter the optimizer sees from the start
    params = {id(p) for p in q.parameters()}
    assert all(id(a.scale) in params for a in acts)
    assert isinstance(zp.prepare_qat(model, zp.w2a2_qat("pact")).act_quant["x"], PACT)
    assert isinstance(zp.prepare_qat(model, zp.w2a2_qat("lsq+")).act_quant["x"], LSQPlus)


def test_qat_training_updates_the_shadow_weights_and_converts(
    digits: tuple[DigitsCNN, DigitsData],
) -> None:
    model, data = digits
    q = zp.prepare_qat(model, zp.w4a4_qat("lsq"), example_inputs=data.x_train[:64])
    before = q.block.conv1.float_weight.detach().clone()
    train(q, data, epochs=1, lr=1e-3)
    assert not torch.equal(before, q.block.conv1.float_weight)
    zp.freeze_bn(q)
    converted = zp.convert(q)
    assert not any(isinstance(m, QuantConvBn2d | LSQ) for m in converted.modules())
    with torch.no_grad():
        y1, y2 = converted(data.x_test[:16]), converted(data.x_test[:16])
    assert torch.equal(y1, y2)


@pytest.mark.slow
def test_lsq_w2a2_within_two_points_and_w3a3_within_one(
    digits: tuple[DigitsCNN, DigitsData],
) -> None:
    model, data = digits
    fp32 = accuracy(model, data.x_test, data.y_test)
    rtn2 = _round_to_nearest(model, data, zp.w2a2_qat())
    rtn3 = _round_to_nearest(model, data, zp.w3a3_qat())
    lsq2 = _qat(model, data, zp.w2a2_qat("lsq"), epochs=25)
    lsq3 = _qat(model, data, zp.w3a3_qat("lsq"), epochs=15)
    print(
        f"fp32 {fp32:.2f}  W2A2: RTN {rtn2:.2f} LSQ {lsq2:.2f}  W3A3: RTN {rtn3:.2f} LSQ {lsq3:.2f}"
    )
    assert rtn2 < fp32 - 20  # round-to-nearest collapses at 2 bits
    assert lsq2 >= fp32 - 2.0
    assert lsq3 >= fp32 - 1.0


@pytest.mark.slow
@pytest.mark.parametrize("learnable", ["pact", "lsq+"])
def test_pact_and_lsq_plus_recover_w2a2(
    digits: tuple[DigitsCNN, DigitsData], learnable: str
) -> None:
    model, data = digits
    fp32 = accuracy(model, data.x_test, data.y_test)
    rtn2 = _round_to_nearest(model, data, zp.w2a2_qat())
    acc = _qat(model, data, zp.w2a2_qat(learnable), epochs=20)
    print(f"{learnable} W2A2 {acc:.2f} (fp32 {fp32:.2f}, RTN {rtn2:.2f})")
    assert acc >= fp32 - 5.0 and acc > rtn2 + 50


def test_qat_param_groups_keep_weight_decay_off_the_quantizers(
    digits: tuple[DigitsCNN, DigitsData],
) -> None:
    model, data = digits
    q = zp.prepare_qat(model, "w4a4_qat", example_inputs=data.x_train[:64])  # preset by name
    groups = zp.qat_param_groups(q, weight_decay=0.1)
    quant = [m for m in q.modules() if isinstance(m, LSQ | LSQPlus | PACT)]
    expected = {id(p) for m in quant for p in m.parameters(recurse=False)}
    assert {id(p) for p in groups[1]["params"]} == expected and groups[1]["weight_decay"] == 0.0
    assert groups[0]["weight_decay"] == 0.1
    everything = {id(p) for p in q.parameters()}
    assert {id(p) for g in groups for p in g["params"]} == everything
    assert not expected & {id(p) for p in groups[0]["params"]}
    # with no gradient at all, AdamW's decoupled decay alone moves the weights, not the steps
    opt = torch.optim.AdamW(groups, lr=0.5)
    before = {id(p): p.detach().clone() for p in q.parameters()}
    for p in q.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for p in q.parameters():
        moved = not torch.equal(before[id(p)], p.detach())
        assert moved == (id(p) not in expected and bool(before[id(p)].abs().sum() > 0))


def test_prepare_qat_refuses_other_workflows_configs_and_restores_in_place_models(
    digits: tuple[DigitsCNN, DigitsData],
) -> None:
    model, _ = digits
    with pytest.raises(ValueError, match=r"prepare_qat: the config \(int8_dynamic\) is dynamic"):
        zp.prepare_qat(model, zp.int8_dynamic())
    with pytest.raises(ValueError, match=r"unknown preset 'w1a1_qat'.*w2a2_qat"):
        zp.prepare_qat(model, "w1a1_qat")
    copy = DigitsCNN()
    copy.load_state_dict(model.state_dict())
    copy.eval()
    state = {k: v.clone() for k, v in copy.state_dict().items()}
    modules = dict(copy.named_modules())
    with pytest.raises(RuntimeError):  # the example batch has the wrong shape
        zp.prepare_qat(copy, zp.w4a4_qat(), example_inputs=torch.zeros(2, 3), inplace=True)
    assert dict(copy.named_modules()).keys() == modules.keys()
    assert all(copy.get_submodule(k) is m for k, m in modules.items())
    assert all(torch.equal(v, state[k]) for k, v in copy.state_dict().items())
    assert "_zeropoint" not in copy.__dict__ and "forward" not in copy.__dict__
    assert not copy.training
