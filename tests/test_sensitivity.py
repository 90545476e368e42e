"""`zp.analyze`: per-unit statistics and sensitivities against brute-force references written
here — every unit switched by hand and the whole model run, KL and SQNR in float64, PyTorch's
own fake-quantization — and the Fisher estimate against the exact second-order expectation."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

import zeropoint as zp
from tests.cli_models import build_model, calib_batches
from zeropoint.analysis.metrics import spearman
from zeropoint.analysis.units import find_units
from zeropoint.workflows.graph import state_of


def _kl(y: torch.Tensor, ref: torch.Tensor) -> float:
    p = torch.softmax(ref.double(), -1)
    return float((p * (p.log() - torch.log_softmax(y.double(), -1))).sum(-1).mean())


def _simulated(model_q: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The fake-quant simulation (float arithmetic on quantized values): gradients enabled,
    which the converted layers read as "not deployed", no parameter requiring one."""
    params = list(model_q.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            return model_q(x).detach()
    finally:
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)


@pytest.fixture(scope="module")
def setup() -> tuple[nn.Module, nn.Module, list[torch.Tensor]]:
    model = build_model().eval()
    batches = calib_batches()
    model_q = zp.quantize_static(model, batches, zp.int8_static(reduce_range=False),
                                 progress=False)  # fmt: skip
    return model, model_q, batches


def test_units_cover_every_quantizer_once(setup: tuple) -> None:
    _, model_q, _ = setup
    units = find_units(model_q)
    names = [u.name for u in units]
    assert names == ["input x", "conv1", "conv2", "add", "mean", "fc"]
    quantizers = [id(q) for u in units for q in u.quantizers]
    fake = [m for m in model_q.modules() if isinstance(m, zp.nn.quantizers.FakeQuant)]
    assert sorted(quantizers) == sorted(id(q) for q in fake)


def test_exact_sensitivities_match_brute_force(setup: tuple) -> None:
    model, model_q, batches = setup
    result = zp.analyze(model, model_q, batches, metric="kl", fast=False, consistency=False,
                        progress=False)  # fmt: skip
    units = find_units(model_q)
    ref = torch.cat([model(x).detach() for x in batches])

    def kl_with(on: set[str]) -> float:
        saved = [(q, q.mode) for u in units for q in u.quantizers]
        for u in units:
            for q in u.quantizers:
                q.mode = "quantize" if u.name in on else "off"
        try:
            return _kl(torch.cat([_simulated(model_q, x) for x in batches]), ref)
        finally:
            for q, mode in saved:
                q.mode = mode

    everything = {u.name for u in units}
    full = kl_with(everything)
    assert result.quantized_drop == pytest.approx(full, rel=1e-9, abs=1e-15)
    for la in result.layers:
        only = kl_with({la.name})
        all_but = kl_with(everything - {la.name})
        # the partial runs reuse cached values, in float64 KL: equal to rounding of the last ulp
        assert la.only_quantized == pytest.approx(only, rel=1e-9, abs=1e-15), la.name
        assert la.all_but == pytest.approx(all_but, rel=1e-9, abs=1e-15), la.name
        assert la.recovery == pytest.approx(full - all_but, rel=1e-9, abs=1e-15)


def test_accuracy_metric_with_labels_and_agreement(setup: tuple) -> None:
    model, model_q, batches = setup
    g = torch.Generator().manual_seed(5)
    labelled = [(x, torch.randint(0, 10, (x.shape[0],), generator=g)) for x in batches]
    result = zp.analyze(model, model_q, labelled, fast=False, consistency=False, progress=False)
    assert result.metric == "accuracy"
    y = torch.cat([lab for _, lab in labelled])
    ref = torch.cat([model(x).detach() for x in batches]).argmax(1)
    assert result.float_value == pytest.approx(100 * float((ref == y).double().mean()))
    quant = torch.cat([_simulated(model_q, x) for x in batches]).argmax(1)
    assert result.quantized_value == pytest.approx(100 * float((quant == y).double().mean()))
    agree = zp.analyze(model, model_q, batches, metric="agreement", fast=False,
                       consistency=False, progress=False)  # fmt: skip
    assert agree.quantized_value == pytest.approx(100 * float((quant == ref).double().mean()))


def test_statistics_against_independent_computations(setup: tuple) -> None:
    model, model_q, batches = setup
    result = zp.analyze(model, model_q, batches, exact=False, fast=False, consistency=False,
                        progress=False)  # fmt: skip
    rows = {la.name: la.stats for la in result.layers}
    # weight SQNR: PyTorch's own per-channel fake quantization of the folded weight
    conv2 = model_q.conv2
    qp = conv2.weight_qparams()
    w = conv2.float_weight.detach()
    ref = torch.fake_quantize_per_channel_affine(
        w, qp.scale.float(), qp.zero_point.int(), 0, qp.scheme.qmin, qp.scheme.qmax
    )
    expected = 10 * math.log10(float((w.double() ** 2).sum() / ((ref - w).double() ** 2).sum()))
    assert rows["conv2"].weight_sqnr_db == pytest.approx(expected, rel=1e-9)
    # the input quantizer sees the data itself: clip range, clipped share and SQNR by hand
    q = model_q.act_quant["x"]
    s, z = float(q.scale), int(q.zero_point)
    lo, hi = s * (q.scheme.qmin - z), s * (q.scheme.qmax - z)
    stats = rows["input x"]
    assert (stats.clip_lo, stats.clip_hi) == pytest.approx((lo, hi))
    x = torch.cat(batches).double()
    outside = ((x < lo - s / 2) | (x > hi + s / 2)).double().mean()
    assert stats.clipped_share == pytest.approx(float(outside))
    xq = torch.fake_quantize_per_tensor_affine(torch.cat(batches), s, z, q.scheme.qmin,
                                               q.scheme.qmax).double()  # fmt: skip
    sqnr = 10 * math.log10(float((x**2).sum() / ((xq - x) ** 2).sum()))
    assert stats.activation_sqnr_db == pytest.approx(sqnr, rel=1e-6)
    h = stats.histogram
    assert h is not None and sum(h.counts) + h.below + h.above == x.numel()


def test_clipped_share_counts_values_beyond_the_calibrated_range(setup: tuple) -> None:
    model, model_q, _ = setup
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 3, 12, 12, generator=g).clamp(-2, 2)
    mask = torch.rand(x.shape, generator=g) < 0.1
    x[mask] = 50.0  # far outside every calibrated input range
    result = zp.analyze(model, model_q, [x], exact=False, fast=False, consistency=False,
                        progress=False)  # fmt: skip
    stats = next(la.stats for la in result.layers if la.name == "input x")
    assert stats.clipped_share == pytest.approx(float(mask.double().mean()))


def test_fisher_estimate_approximates_the_exact_kl(setup: tuple) -> None:
    """For 8-bit quantization the KL is second order in the perturbation, so the Fisher
    estimate E_y[(gᵀδ)²]/2 approximates it. With 128 sampled labels per row the Monte-Carlo
    error is a few percent; the tolerance (25 %) also covers the third-order terms."""
    model, model_q, batches = setup
    result = zp.analyze(model, model_q, batches, metric="kl", fisher_samples=128,
                        consistency=False, progress=False)  # fmt: skip
    for la in result.layers:
        assert la.fisher is not None and la.only_quantized is not None
        assert la.fisher == pytest.approx(la.only_quantized, rel=0.25), la.name
    rho = result.rank_correlation["fisher estimate vs only-this-quantized"]
    assert rho >= 0.9


def test_spearman_matches_scipy_with_ties() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 6, 40).astype(float)
    b = a + rng.normal(0, 2, 40)
    assert spearman(a.tolist(), b.tolist()) == pytest.approx(stats.spearmanr(a, b).statistic)
    assert math.isnan(spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))


def test_float_operations_and_layers_left_float_are_named() -> None:
    class WithSin(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(6, 6)
            self.b = nn.Linear(6, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.sin(self.a(x)))

    model = WithSin().eval()
    data = [torch.randn(5, 6, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    cfg = zp.int8_static().with_(skip=("b",))
    model_q = zp.quantize_static(model, data, cfg, progress=False)
    result = zp.analyze(model, model_q, data, consistency=False, progress=False)
    assert result.float_layers == ["b"]
    assert any("sin" in op for op in result.float_ops)
    assert "b" not in state_of(model_q).layers


def test_consistency_is_part_of_the_analysis(setup: tuple) -> None:
    pytest.importorskip("onnxruntime")
    model, model_q, batches = setup
    result = zp.analyze(model, model_q, batches, exact=False, fast=False, progress=False)
    c = result.consistency
    assert c is not None and c.samples == 24
    assert c.outputs["sim_engine"].share == 1.0  # the lowering's promise on this model
    assert {r["operation"] for r in c.rows()} >= {"conv1", "conv2", "fc"}
    doc = result.as_dict()
    assert doc["consistency"]["outputs_identical"]["sim_engine"] == 1.0


def test_bad_inputs() -> None:
    model = build_model().eval()
    with pytest.raises(ValueError, match="not prepared by zeropoint"):
        zp.analyze(model, model, calib_batches())
    model_q = zp.quantize_static(model, calib_batches(), progress=False)
    with pytest.raises(ValueError, match="unknown metric 'f1'"):
        zp.analyze(model, model_q, calib_batches(), metric="f1")
    with pytest.raises(ValueError, match="needs labels"):
        zp.analyze(model, model_q, calib_batches(), metric="accuracy")
    with pytest.raises(ValueError, match="at least one batch"):
        zp.analyze(model, model_q, [])
    with pytest.raises(TypeError, match=r"float nn\.Module"):
        zp.analyze("model", model_q, calib_batches())  # type: ignore[arg-type]
    from tests.cli_models import build_mlp, mlp_batches

    mlp = build_mlp().eval()
    for config, kind in (("int8_dynamic", "dynamic"), (zp.int4_weight_only(32), "weight-only")):
        with pytest.raises(ValueError, match=f"Mlp is a {kind} model: the analysis switches"):
            zp.analyze(mlp, zp.quantize_dynamic(build_mlp().eval(), config), mlp_batches())


# -------------------------------------------------- layers whose weights lie on their grid


def test_a_loaded_checkpoint_analyses_as_the_model_that_was_saved(setup: tuple, tmp_path) -> None:
    # a checkpoint stores the weights' codes: loaded, every layer holds S·q, on its grid. With
    # the float model given, "off" is the float model again, so the analysis is the saved
    # model's — which the brute-force test above checks unit by unit
    from tests.cli_models import build_model as fresh

    model, model_q, batches = setup
    zp.save(model_q, tmp_path / "ckpt")
    loaded = zp.load(tmp_path / "ckpt", fresh().eval())
    for name in ("conv1", "conv2", "fc"):  # the premise: no float weights left in it
        layer = loaded.get_submodule(name)
        assert torch.equal(layer.quantized_weight(), layer.float_weight)
    options = dict(metric="kl", consistency=False, progress=False)
    saved = zp.analyze(model, model_q, batches, **options)
    again = zp.analyze(model, loaded, batches, **options)
    assert again.notes == []
    # the same codes and the same float weights: the same numbers, to the last bit
    assert again.quantized_drop == saved.quantized_drop
    for a, b in zip(saved.layers, again.layers, strict=True):
        assert b.name == a.name
        assert b.only_quantized == a.only_quantized, a.name
        assert b.recovery == a.recovery, a.name
        assert b.stats.weight_sqnr_db == a.stats.weight_sqnr_db, a.name
    # the model is left as it was loaded
    assert torch.equal(loaded.conv2.quantized_weight(), loaded.conv2.float_weight)
    # without the float model nothing can separate the weights' error: said, not hidden
    blind = zp.analyze(None, loaded, batches, **options)
    assert any("conv1, conv2, fc" in n and "on their grid" in n for n in blind.notes)
    assert math.isinf(blind.layers[1].stats.weight_sqnr_db)


def test_pair_bounded_weights_are_analysed_against_the_float_weights(setup: tuple) -> None:
    # pair-bounded 8-bit weights are snapped onto their grid at convert (x86 without VNNI):
    # the weight SQNR and the sensitivities compare them with the float model's weights
    from zeropoint.fold import fold_bn

    model, _, batches = setup
    cfg = zp.int8_static(reduce_range=False).with_(pair_bounded_weights=True)
    model_q = zp.quantize_static(model, batches, cfg, progress=False)
    result = zp.analyze(model, model_q, batches, metric="kl", consistency=False, progress=False)
    assert result.notes == []
    rows = {la.name: la for la in result.layers}
    folded = fold_bn(copy.deepcopy(model.conv1), model.bn1).weight.detach()
    for name, float_w in (("conv1", folded), ("conv2", model.conv2.weight.detach())):
        grid = model_q.get_submodule(name).float_weight.detach()
        expected = 10 * math.log10(float((float_w.double() ** 2).sum()
                                         / ((grid - float_w).double() ** 2).sum()))  # fmt: skip
        assert rows[name].stats.weight_sqnr_db == pytest.approx(expected, rel=1e-6), name
    # brute force: every layer but u given its float weight by hand, quantizers switched by hand
    units = find_units(model_q)
    ref = torch.cat([model(x).detach() for x in batches])
    floats = {"conv1": folded, "conv2": model.conv2.weight.detach(), "fc": model.fc.weight.detach()}

    def kl_with(on: set[str]) -> float:
        hand = copy.deepcopy(model_q)
        for u in find_units(hand):
            for q in u.quantizers:
                q.mode = "quantize" if u.name in on else "off"
            if u.layer is not None and u.name not in on:
                with torch.no_grad():
                    u.layer.float_weight.copy_(floats[u.name])
        return _kl(torch.cat([_simulated(hand, x) for x in batches]), ref)

    assert kl_with(set()) == pytest.approx(0.0, abs=1e-9)  # all off: the float model
    everything = {u.name for u in units}
    for la in result.layers:
        assert la.only_quantized == pytest.approx(kl_with({la.name}), rel=1e-6, abs=1e-12)
        assert la.all_but == pytest.approx(kl_with(everything - {la.name}), rel=1e-6, abs=1e-12)
