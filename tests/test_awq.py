"""AWQ's scale and clipping searches against brute force, and its effect on a layer whose inputs
have outlier channels."""

from __future__ import annotations

import torch
from torch import nn

import zeropoint as zp
from zeropoint.nn.weight_only import WeightOnlyLinear
from zeropoint.ptq.awq import awq_layer, awq_quantize, clip_search

SCHEME = zp.Scheme(bits=4, symmetric=False, group_size=16)


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(24, 64, generator=g)
    x = torch.randn(300, 64, generator=g)
    x[:, [3, 17, 40]] *= 25  # outlier input channels
    return w, x


def test_scale_search_picks_the_brute_force_best_alpha() -> None:
    w, x = _data()
    result = awq_layer(w, x, SCHEME, grid=20, clip=False)
    a = x.abs().mean(0).clamp(min=1e-4)
    losses = []
    for i in range(20):  # the paper's search, written out: s = a^α normalised, Q round to nearest
        s = a ** (i / 20)
        s = s / (s.max() * s.min()).sqrt()
        wq = zp.fake_quantize(w * s, zp.calibrate(w * s, SCHEME))
        losses.append(float(((x / s) @ wq.T - x @ w.T).pow(2).mean()))
    best = min(range(20), key=lambda i: losses[i])
    assert result.alpha == best / 20
    torch.testing.assert_close(torch.tensor(result.losses), torch.tensor(losses), rtol=1e-5, atol=0)
    assert best > 0 and losses[best] < 0.8 * losses[0]  # outliers: scaling beats plain RTN


def test_clip_search_matches_brute_force_per_group() -> None:
    w, x = _data(1)
    qp = clip_search(w, x, SCHEME, grid=10, max_shrink=0.5)
    for row, group in [(0, 0), (5, 2), (23, 3)]:
        cols = slice(16 * group, 16 * group + 16)
        wg, xg = w[row, cols], x[:, cols]
        errs = []
        for i in range(6):
            r = 1 - i / 10
            lo, hi = float(wg.min()) * r, float(wg.max()) * r
            qpg = zp.qparams_from_range(lo, hi, SCHEME.with_(group_size=None))
            errs.append(float((xg @ (wg - zp.fake_quantize(wg, qpg))).pow(2).mean()))
        r = 1 - min(range(6), key=lambda i: errs[i]) / 10
        expected = zp.qparams_from_range(
            float(wg.min()) * r, float(wg.max()) * r, SCHEME.with_(group_size=None)
        )
        assert torch.isclose(qp.scale[row, group], expected.scale, rtol=1e-6)
        assert int(qp.zero_point[row, group]) == int(expected.zero_point)


def test_awq_model_layer_applies_its_input_scale() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 24))
    w, x = _data(2)
    with torch.no_grad():
        model[0].weight.copy_(w)
    config = zp.QuantConfig(weight=SCHEME, activation=None, module_types=(nn.Linear,))
    q = awq_quantize(model, [x[:150], x[150:]], config)
    layer = q[0]
    assert isinstance(layer, WeightOnlyLinear) and layer._scaled_input
    with torch.no_grad():
        ref = model(x)
        manual = (x / layer.input_scale) @ layer.quantized_weight().T + model[0].bias
        torch.testing.assert_close(layer(x), manual, rtol=1e-5, atol=1e-5)
        rtn = zp.quantize_dynamic(model, config)
        assert ((q(x) - ref) ** 2).mean() < 0.7 * ((rtn(x) - ref) ** 2).mean()


def test_awq_checkpoint_keeps_the_input_scale(tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    _, x = _data(3)
    config = zp.QuantConfig(weight=SCHEME, activation=None, module_types=(nn.Linear,))
    q = awq_quantize(model, [x], config)
    restored = zp.load(
        zp.save(q, tmp_path / "awq"), nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    )
    assert torch.equal(restored[0].input_scale, q[0].input_scale)
    with torch.no_grad():
        assert torch.equal(restored(x), q(x))
