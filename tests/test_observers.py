"""Calibration observers: exact against torch.ao and numpy where a reference exists; better than
min-max on outlier data; streaming and mergeable."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import zeropoint as zp
from zeropoint.observers import (
    ACIQ,
    MSE,
    OBSERVERS,
    Entropy,
    Histogram,
    MeanMinMax,
    MinMax,
    MovingAverageMinMax,
    Percentile,
    gauss_clip_ratio,
    laplace_clip_ratio,
    make_observer,
)
from zeropoint.qparams import Scheme


def _outlier_data(dist: str, n: int = 1_000_000, seed: int = 0) -> torch.Tensor:
    """Unit Gaussian or Laplace samples with two far outliers (2 in 10^6, at ±80)."""
    g = torch.Generator().manual_seed(seed)
    if dist == "gauss":
        x = torch.randn(n, generator=g)
    else:
        u = torch.rand(n, generator=g, dtype=torch.float64) - 0.5
        x = (-torch.sign(u) * torch.log1p(-2 * u.abs())).float()  # Laplace(0, 1) by inversion
    x[0], x[1] = 80.0, -75.0
    return x


def _mse(x: torch.Tensor, qp: zp.QParams) -> float:
    return float(((zp.fake_quantize(x, qp).double() - x.double()) ** 2).mean())


# --------------------------------------------------------------------------- min-max


def test_minmax_and_moving_average_match_torch_ao() -> None:
    from torch.ao.quantization.observer import (
        MovingAverageMinMaxObserver,
        PerChannelMinMaxObserver,
    )

    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(8, 4, 5, generator=g) * (i + 1) for i in range(5)]
    ours = MovingAverageMinMax(Scheme(signed=False), averaging_constant=0.1)
    ref = MovingAverageMinMaxObserver(averaging_constant=0.1, dtype=torch.quint8)
    per_channel = MinMax(Scheme(symmetric=True, axis=1))
    ref_c = PerChannelMinMaxObserver(
        ch_axis=1, dtype=torch.qint8, qscheme=torch.per_channel_symmetric
    )
    for b in batches:
        ours.update(b)
        ref(b)
        per_channel.update(b)
        ref_c(b)
    s, z = ref.calculate_qparams()
    assert ours.qparams().scale.item() == pytest.approx(s.item(), rel=1e-6)
    assert int(ours.qparams().zero_point) == int(z)
    s_c, _ = ref_c.calculate_qparams()
    torch.testing.assert_close(per_channel.qparams().scale, s_c.float(), rtol=1e-6, atol=0)


# --------------------------------------------------------------------------- histogram


def test_histogram_counts_equal_numpy_at_the_final_range() -> None:
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(10_000, generator=g) * s for s in (0.1, 1.0, 3.0)]
    hist = Histogram(1, bins=1024)
    for b in batches:
        hist.add(b.reshape(1, -1))
    data = torch.cat(batches).double().numpy()
    r = float(hist.radius[0])
    assert r > np.abs(data).max() >= r / 2  # smallest power of two above max|x|
    ref, _ = np.histogram(data, bins=1024, range=(-r, r))
    assert np.array_equal(hist.counts[0].numpy(), ref)


@pytest.mark.parametrize("method", sorted(set(OBSERVERS) - {"moving_average"}))
@pytest.mark.parametrize(
    "scheme", [Scheme(bits=8), Scheme(bits=4, symmetric=True, axis=0)], ids=str
)
def test_merge_of_halves_equals_one_observer_fed_everything(method: str, scheme: Scheme) -> None:
    if _samples_are_channels(method, scheme):
        return
    g = torch.Generator().manual_seed(2)
    first = torch.randn(3, 5000, generator=g) * torch.tensor([[0.5], [2.0], [7.0]])
    second = torch.randn(3, 3000, generator=g) * 3
    whole = make_observer(method, scheme)
    whole.update(first)
    whole.update(second)
    a, b = make_observer(method, scheme), make_observer(method, scheme)
    a.update(second)  # order and split differ from `whole`
    b.update(first)
    merged = a.merge(b)
    # histograms and extremes merge exactly; moments are float64 sums (last-bit differences)
    torch.testing.assert_close(merged.qparams().scale, whole.qparams().scale, rtol=1e-9, atol=0)
    assert torch.equal(merged.qparams().zero_point, whole.qparams().zero_point)


# --------------------------------------------------------------------------- estimators


def test_percentile_matches_numpy_within_one_bin() -> None:
    x = _outlier_data("laplace", 200_000)
    for p in (99.0, 99.9, 99.99):
        obs = Percentile(Scheme(symmetric=True), percentile=p)
        obs.update(x)
        _, hi = obs.range()
        ref = np.percentile(x.abs().numpy(), p)
        width = float(obs.hist.bin_width[0])  # type: ignore[union-attr]
        assert abs(hi.item() - ref) <= width
    asym = Percentile(Scheme(), percentile=99.9)
    asym.update(x)
    lo, hi = asym.range()
    assert lo.item() == pytest.approx(np.percentile(x.numpy(), 0.1), abs=0.04)
    assert hi.item() == pytest.approx(np.percentile(x.numpy(), 99.9), abs=0.04)


def _tensorrt_kl_threshold(hist: np.ndarray, num_q: int) -> int:
    """TensorRT's entropy calibration (Migacz 2017), written plainly: for every candidate number
    of kept bins t, P = the first t bins with the outliers added to the last one, Q = those t
    bins merged into num_q groups and spread evenly over each group's non-empty bins; return the
    t of least KL(P ‖ Q) after onnxruntime's smoothing (ε = 1e-4). As in zeropoint, the groups
    are of near-equal size (bin j → group ⌊j·num_q/t⌋) instead of TensorRT's remainder-in-the-
    last-group split."""
    from scipy.stats import entropy

    def smooth(p: np.ndarray, eps: float = 1e-4) -> np.ndarray:
        zeros = p == 0
        n_zero, n_nonzero = zeros.sum(), p.size - zeros.sum()
        return p + eps * zeros - (eps * n_zero / n_nonzero) * ~zeros

    last = int(np.nonzero(hist)[0][-1]) + 1
    best_t, best_kl = last, np.inf
    for t in range(num_q, last + 1):
        sliced = hist[:t].astype(np.float64)
        p = sliced.copy()
        p[-1] += hist[t:].sum()
        q = np.zeros(t)
        bounds = [(k * t + num_q - 1) // num_q for k in range(num_q + 1)]  # first j of group k
        for k in range(num_q):
            start, stop = bounds[k], bounds[k + 1]
            nonzero = sliced[start:stop] != 0
            if nonzero.sum():
                q[start:stop] = sliced[start:stop].sum() / nonzero.sum() * nonzero
        p = smooth(p / p.sum())
        q = smooth(q / q.sum())
        kl = entropy(p, q)
        if kl < best_kl:
            best_t, best_kl = t, kl
    return best_t


@pytest.mark.parametrize("dist", ["gauss", "laplace"])
def test_entropy_threshold_equals_plain_tensorrt_algorithm(dist: str) -> None:
    x = _outlier_data(dist, 100_000, seed=5)[2:]  # no outliers: a few hundred candidates
    obs = Entropy(Scheme(bits=8, symmetric=True), bins=2048)
    obs.update(x)
    hist = obs.hist
    assert hist is not None
    t_ref = _tensorrt_kl_threshold(hist.abs_counts()[0].numpy(), num_q=128)
    _, hi = obs.range()
    assert hi.item() == pytest.approx(t_ref * float(hist.bin_width[0]), rel=1e-12)
    assert 3.0 < hi.item() < x.abs().max().item()  # it does clip


def test_entropy_ignores_exact_zeros_of_relu_outputs() -> None:
    # Half the values of a post-ReLU activation are exact zeros, which every candidate clip
    # represents exactly; the threshold must be the one chosen for the positive part alone.
    g = torch.Generator().manual_seed(6)
    positive = torch.randn(50_000, generator=g).abs()
    relu_out = torch.cat([positive, torch.zeros(60_000)])
    scheme = Scheme(bits=8, signed=False)
    with_zeros, alone = Entropy(scheme), Entropy(scheme)
    with_zeros.update(relu_out)
    alone.update(positive)
    assert with_zeros.range()[1].item() == alone.range()[1].item()
    assert with_zeros.range()[1].item() > 2.5  # a moderate clip of |N(0,1)|, not a collapse


def test_mse_observer_is_within_one_percent_of_brute_force_optimum() -> None:
    x = _outlier_data("gauss", 200_000, seed=3)
    for bits in (4, 8):
        scheme = Scheme(bits=bits, symmetric=True)
        obs = MSE(scheme)
        obs.update(x)
        ours = _mse(x, obs.qparams())
        clips = torch.linspace(0.5, 12, 576)  # brute force on the data, 0.02 steps
        best = min(_mse(x, zp.qparams_from_range(-c, c, scheme)) for c in clips.tolist())
        assert ours <= best * 1.01


def test_aciq_clip_ratios_match_the_paper() -> None:
    # Banner et al. 2019: α*/b for Laplace(b), bits 2..8
    laplace = [2.83, 3.89, 5.03, 6.20, 7.41, 8.64, 9.89]
    for bits, ref in zip(range(2, 9), laplace, strict=True):
        assert laplace_clip_ratio(bits) == pytest.approx(ref, rel=0.01)
    gauss = [1.71, 2.15, 2.55, 2.94, 3.29, 3.61, 3.92]
    for bits, ref in zip(range(2, 9), gauss, strict=True):
        assert gauss_clip_ratio(bits) == pytest.approx(ref, rel=0.01)


def test_aciq_fits_laplace_scale() -> None:
    x = _outlier_data("laplace", 500_000, seed=4)
    obs = ACIQ(Scheme(bits=4, symmetric=True), distribution="laplace")
    obs.update(x)
    _, hi = obs.range()
    # b = E|x| = 1 for Laplace(0, 1): the clip is 5.03·b
    assert hi.item() == pytest.approx(5.03, rel=0.02)


@pytest.mark.parametrize("dist", ["gauss", "laplace"])
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_clipping_methods_beat_minmax_on_outlier_data(
    dist: str, bits: int, symmetric: bool
) -> None:
    x = _outlier_data(dist)
    scheme = Scheme(bits=bits, symmetric=symmetric)
    baseline = _mse(x, zp.calibrate(x, scheme, "minmax"))
    for method in ("percentile", "entropy", "mse", "aciq"):
        assert _mse(x, zp.calibrate(x, scheme, method)) < baseline, method


# --------------------------------------------------------------------------- bad input


def test_observer_errors_name_the_problem() -> None:
    obs = MinMax(Scheme())
    with pytest.raises(ValueError, match="seen no data"):
        obs.qparams()
    with pytest.raises(ValueError, match="empty"):
        obs.update(torch.empty(0, 3))
    with pytest.raises(ValueError, match="NaN"):
        obs.update(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="unknown calibration method"):
        zp.calibrate(torch.randn(4), Scheme(), method="kl")
    per_channel = Percentile(Scheme(axis=0))
    per_channel.update(torch.randn(3, 4))
    with pytest.raises(ValueError, match="gives 5 slices"):
        per_channel.update(torch.randn(5, 4))
    with pytest.raises(TypeError, match="cannot merge"):
        MinMax().merge(Entropy())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="percentile"):
        Percentile(percentile=0)
    with pytest.raises(ValueError, match="power of two"):
        Histogram(1, bins=1000)


# --------------------------------------------------------------------------- degenerate data


@pytest.mark.parametrize("method", sorted(OBSERVERS))
@pytest.mark.parametrize(
    "scheme",
    [Scheme(), Scheme(symmetric=True), Scheme(bits=4, signed=False), Scheme(axis=0)],
    ids=str,
)
@pytest.mark.parametrize("value", [-3.0, 0.0, 2.5])
def test_constant_data_gives_a_valid_scale(method: str, scheme: Scheme, value: float) -> None:
    if _samples_are_channels(method, scheme):
        return
    # the clip range of constant data c is [c, c], widened to contain 0: [min(c, 0), max(c, 0)].
    # Closed form: affine S = |c| / (qmax − qmin), c on a level exactly; symmetric S = 2|c| /
    # (2^b − 1), c one half step from the top level; c = 0: S = 1 and 0 exact.
    x = torch.full((4, 100), value)
    qp = zp.calibrate(x, scheme, method)
    qmin, qmax = scheme.qrange
    if value == 0.0:
        expected = 1.0
    elif scheme.symmetric:
        expected = 2 * abs(value) / (qmax - qmin)
    else:
        expected = abs(value) / (qmax - qmin)
    if method == "omse":  # least squared error: c exactly on a level, a scale within 1 %
        assert bool(((qp.scale - expected).abs() <= 0.01 * expected).all())
    else:
        torch.testing.assert_close(qp.scale, torch.full_like(qp.scale, expected), rtol=1e-6, atol=0)
    err = (zp.fake_quantize(x, qp) - x).abs().max().item()
    # (the half step plus float32 rounding of S and of S·q)
    assert err <= (expected / 2 * (1 + 1e-5) if scheme.symmetric else 1e-6 * abs(value))


def test_percentile_of_constant_data_with_a_dead_layer_quantizes_statically() -> None:
    from torch import nn

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    with torch.no_grad():  # the first layer is dead: its output is the constant bias 0.7
        model[0].weight.zero_()
        model[0].bias.fill_(0.7)
    calib = [torch.randn(16, 4, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    q = zp.quantize_static(model, calib, zp.int8_static("percentile"), progress=False)
    x = calib[0]
    # the edge after the dead layer holds 0.7 exactly (uint8 affine: 0.7 is the top level)
    torch.testing.assert_close(q(x), model(x), rtol=0, atol=0.02)


@pytest.mark.parametrize(
    ("cls", "options"),
    [
        (Percentile, {"percentile": 90.0, "bins": 512}),
        (MovingAverageMinMax, {"averaging_constant": 0.5}),
        (ACIQ, {"distribution": "gauss", "bins": 1024}),
        (Entropy, {"bins": 256}),
        (MSE, {"bins": 64}),
    ],
)
def test_reset_keeps_the_scheme_and_options(cls: type, options: dict[str, object]) -> None:
    scheme = Scheme(bits=4, symmetric=True)
    obs = cls(scheme, **options)
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    obs.update(x * 100)
    obs.reset()
    assert obs.num_batches == 0 and obs.scheme == scheme
    for key, value in options.items():
        assert getattr(obs, key) == value
    obs.update(x)
    fresh = cls(scheme, **options)
    fresh.update(x)
    assert torch.equal(obs.qparams().scale, fresh.qparams().scale)


def test_percentile_below_50_is_refused_for_asymmetric_schemes() -> None:
    with pytest.raises(ValueError, match="percentile=30"):
        Percentile(Scheme(), percentile=30)
    # symmetric: the 30th percentile of |x| is a valid (if odd) clip
    obs = Percentile(Scheme(symmetric=True), percentile=30)
    obs.update(torch.linspace(-1, 1, 2001))
    assert obs.range()[1].item() == pytest.approx(0.3, abs=2e-3)


def test_moving_average_is_the_one_observer_whose_merge_is_not_exact() -> None:
    # merge weights the two EMAs by their batch counts (documented); an EMA fed every batch in
    # order gives another value, since an EMA depends on the order of batches
    batches = [torch.full((10,), float(v)) for v in (1.0, 2.0, 3.0, 10.0)]
    a, b, whole = (MovingAverageMinMax(Scheme(), averaging_constant=0.5) for _ in range(3))
    for x in batches[:2]:
        a.update(x)
    for x in batches[2:]:
        b.update(x)
    for x in batches:
        whole.update(x)
    # a: 1 → 1.5; b: 3 → 6.5; merged: 1.5 + (2/4)·(6.5 − 1.5) = 4.0; whole: 1, 1.5, 2.25, 6.125
    assert a.merge(b).range()[1].item() == 4.0
    assert whole.range()[1].item() == 6.125


def _samples_are_channels(method: str, scheme: Scheme) -> bool:
    """mean_minmax averages over samples along dimension 0: a scheme with its channels there is
    refused, with a message saying so (checked here instead of the generic property)."""
    if method != "mean_minmax" or scheme.axis != 0:
        return False
    with pytest.raises(ValueError, match="samples along dimension 0"):
        make_observer(method, scheme)
    return True


def test_mean_minmax_is_the_mean_of_each_samples_extremes() -> None:
    # NNCF's MEAN_MINMAX: α = mean_n min(x_n), β = mean_n max(x_n), over every sample of every
    # batch (dimension 0), per tensor or per channel (axis 1 of an activation (N, C, L))
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(5, 3, 40, generator=g) * 2, torch.randn(2, 3, 40, generator=g) + 4]
    samples = np.concatenate([b.numpy() for b in batches]).astype(np.float64)
    per_tensor = MeanMinMax(Scheme(bits=8, signed=False))
    per_channel = MeanMinMax(Scheme(bits=8, signed=False, axis=1))
    for b in batches:
        assert per_tensor.update(b) is b
        per_channel.update(b)
    lo, hi = per_tensor.range()
    assert float(lo) == pytest.approx(samples.min(axis=(1, 2)).mean(), rel=1e-12)
    assert float(hi) == pytest.approx(samples.max(axis=(1, 2)).mean(), rel=1e-12)
    lo_c, hi_c = per_channel.range()
    np.testing.assert_allclose(lo_c.reshape(-1).numpy(), samples.min(axis=2).mean(0), rtol=1e-12)
    np.testing.assert_allclose(hi_c.reshape(-1).numpy(), samples.max(axis=2).mean(0), rtol=1e-12)
    # one outlier sample moves the range by 1/N of its excess, min-max by all of it
    spike = torch.zeros(1, 3, 40)
    spike[0, 0, 0] = 100.0
    quiet = torch.ones(9, 3, 40)
    mean_obs, minmax = (
        MeanMinMax(Scheme(bits=8, signed=False)),
        MinMax(Scheme(bits=8, signed=False)),
    )
    for obs in (mean_obs, minmax):
        obs.update(quiet)
        obs.update(spike)
    assert float(mean_obs.range()[1]) == pytest.approx((9 * 1.0 + 100.0) / 10)
    assert float(minmax.range()[1]) == 100.0


def test_mean_minmax_calibrates_a_model_by_name() -> None:
    from torch import nn

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    calib = [torch.randn(16, 4, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    q = zp.quantize_static(model, calib, zp.int8_static("mean_minmax"), progress=False)
    x = torch.cat(calib)
    relu_out = torch.relu(model[0](x)).detach()
    quantizers = [
        m for n, m in q.named_modules() if n.startswith("act_quant.") and n.count(".") == 1
    ]
    scales = sorted(float(m.scale) for m in quantizers)
    expected = relu_out.amax(dim=1).mean().item() / 255  # unsigned [0, mean max]: S = β / 255
    # (the calibration pass sees the input through its own quantizer: 1e-3, not 1e-6)
    assert any(abs(s - expected) <= 1e-3 * expected for s in scales), (scales, expected)
    assert relu_out.max().item() / 255 > 1.2 * expected  # min-max would give another scale
