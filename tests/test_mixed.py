"""Mixed precision: the knapsack against enumeration, budgets held exactly, the obviously
sensitive layer kept at high precision, an editable config; ACIQ's bit allocation against its
closed form and against enumeration."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

import zeropoint as zp
from zeropoint.mixed.aciq import (
    aciq_allocate,
    aciq_bits,
    aciq_levels,
    allocation_mse,
    channel_ranges,
    quantize_channels,
)
from zeropoint.mixed.knapsack import solve

# ---------------------------------------------------------------------------- the knapsack


def _enumerate(values: list[list[float]], weights: list[list[float]], cap: float) -> float:
    best = math.inf
    for pick in itertools.product(*[range(len(v)) for v in values]):
        if sum(w[c] for w, c in zip(weights, pick)) <= cap:
            best = min(best, sum(v[c] for v, c in zip(values, pick)))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_knapsack_is_optimal_on_integer_weights(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = [rng.random(4).tolist() for _ in range(5)]
    weights = [rng.integers(1, 30, 4).astype(float).tolist() for _ in range(5)]
    cap = float(sum(min(w) for w in weights) + rng.integers(0, 60))
    pick = solve(values, weights, cap)
    assert sum(w[c] for w, c in zip(weights, pick)) <= cap
    assert sum(v[c] for v, c in zip(values, pick)) == pytest.approx(
        _enumerate(values, weights, cap)
    )


def test_knapsack_holds_a_real_budget_exactly_when_it_rounds() -> None:
    """Weights that are not integers (or a capacity above the resolution) are rounded up in
    units of capacity/resolution: the real constraint holds, and the value is at least as good
    as the optimum under the capacity shrunk by one unit per group."""
    rng = np.random.default_rng(7)
    values = [rng.random(3).tolist() for _ in range(6)]
    weights = [(rng.random(3) * 1000).tolist() for _ in range(6)]
    cap = 2345.678
    pick = solve(values, weights, cap, resolution=64)
    assert sum(w[c] for w, c in zip(weights, pick)) <= cap
    shrunk = cap - 6 * cap / 64
    assert sum(v[c] for v, c in zip(values, pick)) <= _enumerate(values, weights, shrunk) + 1e-12


def test_knapsack_refuses_an_impossible_budget() -> None:
    with pytest.raises(ValueError, match="no choice fits"):
        solve([[1.0, 0.0]], [[5.0, 9.0]], 4.0)


# ---------------------------------------------------------------------------- the search


class Chain(nn.Module):
    """Three linear layers. ``b`` reads one input that is always zero (a's unit 0 is dead) with
    a weight 16 times its row's largest: the outliers set b's per-channel scales but contribute
    nothing, so below 8 bits the rest of each row rounds to zero and b's output vanishes — b is
    obviously the layer to keep at high precision. b is also small (1536 weights of 4768), so
    the budget can afford it."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = nn.Linear(32, 96)
        self.b = nn.Linear(96, 16)
        self.c = nn.Linear(16, 10)
        with torch.no_grad():
            for m in (self.a, self.b, self.c):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / math.sqrt(m.in_features))
                m.bias.zero_()
            self.a.weight[0] = 0.0
            self.a.bias[0] = -1.0  # relu(−1) = 0: a dead unit
            self.b.weight[:, 0] = 16.0 * self.b.weight.abs().amax(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def _data() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(32, 32, generator=g) for _ in range(3)]


def _bits(model_q: nn.Module) -> dict[str, int]:
    return {n: model_q.get_submodule(n).weight_quant.scheme.bits for n in ("a", "b", "c")}


def test_the_sensitive_layer_gets_the_high_precision() -> None:
    model, data = Chain().eval(), _data()
    result = zp.mixed_precision(model, data, avg_weight_bits=4.0, progress=False)
    chosen = {c.name: c.weight_bits for c in result.choices}
    assert chosen["b"] == 8
    assert max(chosen["a"], chosen["c"]) < 8  # the budget is spent on b
    # the config is editable and does what it says
    model_q = zp.quantize_static(model, data, result.config, progress=False)
    assert _bits(model_q) == chosen
    # and it beats uniform 4-bit weights at the same budget (measured, not predicted)
    uniform = zp.quantize_static(model, data, zp.int8_static(reduce_range=False).with_(
        weight=zp.int8_static().weight.with_(bits=4)), progress=False)  # fmt: skip
    ref = torch.cat([model(x) for x in data]).detach()

    def kl(m: nn.Module) -> float:
        with torch.no_grad():
            y = torch.cat([m(x) for x in data])
        p = torch.softmax(ref.double(), -1)
        return float((p * (p.log() - torch.log_softmax(y.double(), -1))).sum(-1).mean())

    assert kl(model_q) < kl(uniform)


@pytest.mark.parametrize("sensitivity", ["exact", "fast"])
def test_budgets_hold_exactly(sensitivity: str) -> None:
    model, data = Chain().eval(), _data()
    n = {name: model.get_submodule(name).weight.numel() for name in ("a", "b", "c")}
    others = sum(p.numel() for p in model.parameters()) - sum(n.values())
    scales = 96 + 16 + 10
    for avg in (2.5, 3.0, 5.0):
        r = zp.mixed_precision(model, data, avg_weight_bits=avg, sensitivity=sensitivity,
                               progress=False)  # fmt: skip
        bits = {c.name: c.weight_bits for c in r.choices}
        spent = sum(n[k] * bits[k] for k in n)
        assert spent <= avg * sum(n.values())
        assert r.avg_weight_bits == pytest.approx(spent / sum(n.values()))
    budget = 4 * (others + scales) + (n["a"] * 3 + n["b"] * 8 + n["c"] * 2) / 8
    r = zp.mixed_precision(model, data, model_bytes=budget, sensitivity=sensitivity,
                           progress=False)  # fmt: skip
    bits = {c.name: c.weight_bits for c in r.choices}
    size = 4 * (others + scales) + sum(n[k] * bits[k] for k in n) / 8
    assert size <= budget and r.model_bytes == pytest.approx(size)


def test_max_drop_picks_the_smallest_model_within_the_drop() -> None:
    model, data = Chain().eval(), _data()
    loose = zp.mixed_precision(model, data, max_drop=10.0, progress=False)
    assert all(c.weight_bits == 2 for c in loose.choices)  # any drop allowed: the smallest
    high = zp.mixed_precision(model, data, avg_weight_bits=8.0, progress=False)
    limit = 2 * high.predicted_drop
    tight = zp.mixed_precision(model, data, max_drop=limit, progress=False)
    assert tight.predicted_drop <= limit
    assert loose.model_bytes < tight.model_bytes < high.model_bytes
    # no single layer can be made narrower without breaking the drop budget
    for c in tight.choices:
        for w in (2, 3, 4):
            if w < (c.weight_bits or 32):
                lighter = tight.predicted_drop - c.drop + tight.sensitivity[(w, 8)][c.name]
                assert lighter > limit


def test_float_layers_and_16_bit_activations_are_choices() -> None:
    """Only 2-bit weights, or float (32 bits): a budget of b in float and the rest at 2 bits
    (11.7 bits on average) keeps b — the layer that 2 bits ruins — in float."""
    model, data = Chain().eval(), _data()
    r = zp.mixed_precision(model, data, avg_weight_bits=11.7, weight_bits=(2,),
                           activation_bits=(8, 16), allow_float=True, progress=False)  # fmt: skip
    chosen = {c.name: (c.weight_bits, c.activation_bits) for c in r.choices}
    assert chosen["b"] == (None, None)
    assert chosen["a"][0] == chosen["c"][0] == 2
    model_q = zp.quantize_static(model, data, r.config, progress=False)
    assert "b" not in zp.workflows.graph.state_of(model_q).layers
    assert model_q.a.weight_quant.scheme.bits == 2
    assert "zp.LayerRule(name='b', skip=True)" in r.rules_source()
    # the source runs as printed and gives the config back
    scope: dict[str, object] = {"zp": zp}
    exec(r.rules_source(), scope)
    base = zp.int8_static(reduce_range=False)
    assert base.with_(rules=scope["rules"] + base.rules) == r.config


def test_search_bad_inputs() -> None:
    model, data = Chain().eval(), _data()
    with pytest.raises(ValueError, match="exactly one budget"):
        zp.mixed_precision(model, data, progress=False)
    with pytest.raises(ValueError, match="exactly one budget"):
        zp.mixed_precision(model, data, avg_weight_bits=4, max_drop=0.1, progress=False)
    with pytest.raises(ValueError, match="smallest model"):
        zp.mixed_precision(model, data, avg_weight_bits=1.0, progress=False)
    with pytest.raises(ValueError, match=r"weight_bits=\(1, 8\)"):
        zp.mixed_precision(model, data, avg_weight_bits=4, weight_bits=(1, 8), progress=False)
    with pytest.raises(ValueError, match="sensitivity='exact'"):
        zp.mixed_precision(model, data, max_drop=0.1, sensitivity="fast", progress=False)


# ---------------------------------------------------------------------------- ACIQ


def test_aciq_levels_are_the_closed_form_and_optimal() -> None:
    r = torch.tensor([0.5, 1.0, 3.0, 8.0, 0.1], dtype=torch.float64)
    budget = 5 * 2.0**4
    n = aciq_levels(r, budget)
    w = r.numpy() ** (2 / 3)
    np.testing.assert_allclose(n.numpy(), budget * w / w.sum(), rtol=1e-12)
    assert float(n.sum()) == pytest.approx(budget)
    # stationarity of the Lagrangian: R_i² / n_i³ is the same for every channel
    kkt = (r**2 / n**3).numpy()
    np.testing.assert_allclose(kkt, kkt[0], rtol=1e-10)
    # and no feasible move lowers the modelled error
    best = allocation_mse(r, n)
    rng = np.random.default_rng(0)
    for _ in range(200):
        d = torch.from_numpy(rng.normal(0, 0.5, 5))
        d -= d.mean()
        moved = n + d
        if bool((moved > 0).all()):
            assert allocation_mse(r, moved) >= best


@pytest.mark.parametrize("avg", [2.0, 3.0, 3.5])
def test_aciq_integer_bits_match_enumeration(avg: float) -> None:
    r = torch.tensor([0.2, 1.0, 2.5, 6.0], dtype=torch.float64)
    bits = aciq_bits(r, avg, min_bits=1, max_bits=6)
    budget = 4 * 2.0**avg
    assert float((2.0 ** bits.double()).sum()) <= budget
    best = min(
        (sum(float(ri) ** 2 / (12 * 4.0**m) for ri, m in zip(r, ms)), ms)
        for ms in itertools.product(range(1, 7), repeat=4)
        if sum(2**m for m in ms) <= budget
    )
    got = sum(float(ri) ** 2 / (12 * 4.0**m) for ri, m in zip(r, bits.tolist()))
    assert got == pytest.approx(best[0])
    assert bits.tolist() == sorted(bits.tolist())  # wider ranges never get fewer bits


def test_quantize_channels_is_the_per_channel_quantizer_per_width() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 5, 3, 3, generator=g)
    bits = torch.tensor([2, 3, 4, 8, 4, 2])
    out = quantize_channels(w, bits)
    for i, b in enumerate(bits.tolist()):
        qmax = 2 ** (b - 1) - 1
        scale = float(w[i].abs().max()) / qmax
        ref = torch.fake_quantize_per_tensor_affine(w[i], scale, 0, -qmax, qmax)
        torch.testing.assert_close(out[i], ref, rtol=0, atol=1e-6)


def test_aciq_allocation_lowers_the_error_at_the_same_budget() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(32, 64, generator=g) * torch.logspace(-1, 1, 32).reshape(-1, 1)
    bits = aciq_bits(channel_ranges(w), 4.0, min_bits=2, max_bits=8)
    assert float((2.0 ** bits.double()).sum()) <= 32 * 16
    uniform = quantize_channels(w, torch.full((32,), 4))
    allocated = quantize_channels(w, bits)
    # measured with equal importance per channel (the model's objective): the sum of MSEs
    err = lambda q: float(((q - w) ** 2).mean(1).sum())  # noqa: E731
    assert err(allocated) < err(uniform)
    model = nn.Sequential(nn.Linear(64, 32))
    with torch.no_grad():
        model[0].weight.copy_(w)
    q, widths = aciq_allocate(model, 4.0)
    assert torch.equal(widths["0"], bits)
    torch.testing.assert_close(q[0].weight, allocated, rtol=0, atol=0)
    assert torch.equal(model[0].weight, w)  # the original is untouched


def test_sensitivities_are_measured_on_the_candidate_models_given() -> None:
    # e.g. AdaRound's model at each width: the drops are those of the given weights. Given the
    # 8-bit model as the "2-bit" candidate, the 2-bit drops are the 8-bit ones exactly.
    from zeropoint.mixed.search import measure_sensitivities

    model, data = Chain().eval(), _data()
    default = measure_sensitivities(model, data, weight_bits=(2, 8), progress=False)
    eight = default.variants[(8, 8)]
    given = measure_sensitivities(
        model, data, weight_bits=(2, 8), progress=False, variants={(2, 8): eight, (8, 8): eight}
    )
    assert given.drops[(2, 8)] == default.drops[(8, 8)]
    assert given.drops[(2, 8)]["b"] < default.drops[(2, 8)]["b"]
    with pytest.raises(ValueError, match=r"lacks the candidate models .*\(2, 8\)"):
        measure_sensitivities(model, data, weight_bits=(2, 8), progress=False,
                              variants={(8, 8): eight})  # fmt: skip


def test_candidates_whose_weights_lie_on_their_grid_are_measured_against_the_float_model(
    tmp_path,
) -> None:
    # AdaRound's models, pair-bounded weights and loaded checkpoints hold S·q, not float
    # weights: the layers that are off in a one-at-a-time run must compute with the float
    # model's weights, else every drop carries the other layers' weight error. Loaded
    # checkpoints of the round-to-nearest candidates give the round-to-nearest drops.
    from zeropoint.mixed.search import measure_sensitivities

    model, data = Chain().eval(), _data()
    default = measure_sensitivities(model, data, weight_bits=(2, 8), progress=False)
    loaded = {}
    for pair, variant in default.variants.items():
        zp.save(variant, tmp_path / f"w{pair[0]}")
        loaded[pair] = zp.load(tmp_path / f"w{pair[0]}", Chain().eval())
        layer = loaded[pair].get_submodule("a")
        assert torch.equal(layer.quantized_weight(), layer.float_weight)  # the premise
    given = measure_sensitivities(model, data, weight_bits=(2, 8), progress=False,
                                  variants=loaded)  # fmt: skip
    assert given.notes == []
    for pair in default.drops:
        for name, drop in default.drops[pair].items():
            assert given.drops[pair][name] == drop, (pair, name)  # the same codes and weights
    # the candidates are left as they were given
    assert torch.equal(loaded[(2, 8)].a.quantized_weight(), loaded[(2, 8)].a.float_weight)


def test_a_bytes_per_sample_budget_makes_activation_widths_a_choice() -> None:
    # model bytes do not depend on activation widths; the bytes one inference moves do: the
    # weights read once (n·w/8) and every layer output written once (m·a/8). Chain's outputs
    # per sample: a 96, b 16, c 10 values. 40 bytes under uniform W8A8 must come from the
    # outputs: only a's (48 bytes saved at 4 bits) can give them
    from itertools import product

    from zeropoint.mixed.search import measure_sensitivities

    model, data = Chain().eval(), _data()
    table = measure_sensitivities(model, data, weight_bits=(8,), activation_bits=(4, 8),
                                  progress=False)  # fmt: skip
    assert table.outputs == {"a": 96, "b": 16, "c": 10}
    uniform = table.uniform_bytes(8) + (96 + 16 + 10)
    budget = uniform - 40
    result = table.choose(zp.Budget(bytes_per_sample=budget))
    chosen = {c.name: c.activation_bits for c in result.choices}
    assert chosen == {"a": 4, "b": 8, "c": 8}
    by_hand = table.fixed_bytes + sum(table.parameters.values()) + (96 * 4 + 16 * 8 + 10 * 8) / 8
    assert result.bytes_per_sample == pytest.approx(by_hand) and by_hand <= budget
    # the knapsack's choice is the enumerated optimum of the predicted drops
    best = min(
        (sum(table.drops[(8, a)][n] for n, a in zip("abc", acts, strict=True)), acts)
        for acts in product((4, 8), repeat=3)
        if sum(m * a for m, a in zip((96, 16, 10), acts, strict=True)) / 8
        <= budget - table.uniform_bytes(8)
    )[1]
    assert tuple(chosen[n] for n in "abc") == best
    model_q = zp.quantize_static(model, data, result.config, progress=False)
    assert model_q.act_quant["relu"].scheme.bits == 4  # a's output, after its ReLU
    # a model-bytes budget leaves every activation at its widest: it costs nothing there
    wide = table.choose(zp.Budget(model_bytes=table.uniform_bytes(8)))
    assert {c.activation_bits for c in wide.choices} == {8}
    with pytest.raises(ValueError, match="give exactly one budget"):
        zp.Budget(model_bytes=1e6, bytes_per_sample=1e6)
