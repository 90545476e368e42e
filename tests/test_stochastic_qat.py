"""Stochastic rounding of QAT weights: seeded per quantizer through the config, unbiased while
training, to nearest in eval mode and after conversion, refused where nothing trains."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import zeropoint as zp
from demo.zoo.digits import DigitsCNN, DigitsData, accuracy, train
from zeropoint.nn import LSQ, FakeQuant
from zeropoint.qparams import QParams, Scheme
from zeropoint.workflows.graph import state_of

STOCHASTIC_W = Scheme(bits=3, symmetric=True, axis=0, rounding="stochastic")


def _mlp() -> nn.Module:
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def _config(learnable: str | None = "lsq", seed: int | None = 0) -> zp.QuantConfig:
    return zp.QuantConfig(
        weight=STOCHASTIC_W,
        activation=Scheme(bits=8, signed=False),
        activation_observer="moving_average",
        learnable=learnable,
        seed=seed,
    )


X = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))


def test_a_stochastic_config_needs_a_seed_and_gives_each_quantizer_its_own_stream() -> None:
    with pytest.raises(ValueError, match=r"rounds stochastically.*seed=0"):
        _config(seed=None)
    rule = zp.LayerRule(name="0", weight=STOCHASTIC_W.with_(bits=4))
    with pytest.raises(ValueError, match="seed"):
        zp.QuantConfig(weight=None, rules=(rule,))
    with pytest.raises(ValueError, match=r"seed=-1"):
        _config(seed=-1)
    config = _config().with_(rules=(rule,))
    a, b = config.generator_for("0.weight"), config.generator_for("2.weight")
    again = config.with_(seed=0).generator_for("0.weight")
    assert a is not None and b is not None and again is not None
    assert torch.equal(torch.rand(8, generator=a), torch.rand(8, generator=again))
    assert not torch.equal(torch.rand(8, generator=a), torch.rand(8, generator=b))
    assert (
        _config(seed=1).generator_for("x") is not None
        and zp.QuantConfig().generator_for("x") is None
    )
    nearest = config.deterministic()
    assert {s.rounding for s in nearest.schemes} == {"half_even"} and nearest.seed == 0
    for entry in (zp.quantize_static, zp.quantize_dynamic):
        with pytest.raises(ValueError, match=r"rounds stochastically.*training-time"):
            entry(_mlp(), [X], config) if entry is zp.quantize_static else entry(_mlp(), config)


@pytest.mark.parametrize("learnable", [None, "lsq"])
def test_weights_round_stochastically_and_unbiased_while_training(learnable: str | None) -> None:
    qat = zp.prepare_qat(_mlp(), _config(learnable), example_inputs=X)
    layer = qat.get_submodule("2")
    assert isinstance(layer.weight_quant, LSQ if learnable else FakeQuant)
    draws = torch.stack([layer.quantized_weight().detach() for _ in range(2000)])
    w = layer.float_weight.detach()
    qp = layer.weight_quant.qparams()
    scale = qp.scale.reshape(-1, 1)
    inside = w.abs() <= 3 * scale  # int3 symmetric: codes −4..3, the top level is 3·S
    lo, hi = torch.floor(w / scale) * scale, (torch.floor(w / scale) + 1) * scale
    # every draw is one of the two neighbouring levels, and their mean is w itself (unbiased):
    # within 5 standard errors, σ ≤ S/2 per draw
    assert bool(((draws == lo) | (draws == hi))[:, inside].all())
    error = (draws.mean(0) - w).abs()[inside]
    assert bool((error <= 5 * 0.5 * scale.expand_as(w)[inside] / 2000**0.5).all())
    # the same config (seed) draws the same numbers; eval mode rounds to nearest
    replay = zp.prepare_qat(_mlp(), _config(learnable), example_inputs=X).get_submodule("2")
    assert torch.equal(replay.quantized_weight(), draws[0])
    qat.eval()
    nearest = zp.fake_quantize(
        w, QParams(qp.scale, qp.zero_point, qp.scheme.with_(rounding="half_even"), 0)
    )
    assert torch.equal(layer.quantized_weight().detach(), nearest)


def test_conversion_rounds_to_nearest_and_the_checkpoint_round_trips(tmp_path: Path) -> None:
    qat = zp.prepare_qat(_mlp(), _config(), example_inputs=X)
    opt = torch.optim.Adam(zp.qat_param_groups(qat), lr=1e-2)
    for _ in range(5):
        loss = qat(X).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    converted = zp.convert(qat)
    quantizers = [m for m in converted.modules() if isinstance(m, FakeQuant)]
    assert quantizers and all(q.scheme.rounding == "half_even" for q in quantizers)
    assert all(q.generator is None for q in quantizers)
    converted.train()  # still to nearest: a converted model is what is deployed
    with torch.no_grad():
        assert torch.equal(converted(X), converted(X))
    converted.eval()
    program = zp.to_integer(converted, X[:2])  # the integer weights need no random numbers
    with torch.no_grad():
        sim = converted(X)
        assert (program(X) - sim).abs().max() <= converted.act_quant["_2"].scale * 1.0001
    saved = zp.save(converted, tmp_path / "ckpt")
    loaded = zp.load(saved, _mlp())
    assert state_of(loaded).config.seed == 0
    with torch.no_grad():
        assert torch.equal(loaded(X), sim)


@pytest.mark.slow
def test_digits_w3a3_lsq_with_stochastic_weight_rounding(
    digits: tuple[DigitsCNN, DigitsData],
) -> None:
    model, data = digits
    accs = {}
    for rounding in ("half_even", "stochastic"):
        config = zp.w3a3_qat("lsq")
        config = config.with_(weight=config.weight.with_(rounding=rounding), seed=0)
        qat = zp.prepare_qat(model, config, example_inputs=data.x_train[:256])
        train(qat, data, epochs=3, lr=3e-3, seed=0)
        accs[rounding] = accuracy(zp.convert(qat), data.x_test, data.y_test)
    print(
        f"W3A3 LSQ, 3 epochs: nearest {accs['half_even']:.2f}, stochastic {accs['stochastic']:.2f}"
    )
    # both train to within a few points of fp32 (99.7%) in three epochs
    assert min(accs.values()) >= 93.0
