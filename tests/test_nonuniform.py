"""Specification of zeropoint.nonuniform: power-of-two, codebook and binary-code quantizers.

Every number is checked against a reference that does not use the code under test: closed forms
(Max 1960's Gaussian table, α* = mean|r|), float64 numpy, exact rationals, scikit-learn KMeans.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from zeropoint.nonuniform import (
    BinaryCodeQuantizer,
    Codebook,
    KMeansCodebook,
    LogQuantizer,
    RuleCodebook,
    codebook_from_levels,
)
from zeropoint.quantizer import Quantizer


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # These tensors are small: a second intra-op thread buys nothing, and on a busy CI machine
    # its spin-waits make the file several times slower. Restored after the module.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gaussian(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def laplace(n: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).laplace(size=n).astype(np.float32))


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.mean((a.double().numpy() - b.double().numpy()) ** 2))


def uniform_minmax_mse(x: np.ndarray, bits: int) -> float:
    """Uniform affine quantization of [min, max] onto 2^b levels, in float64 numpy."""
    lo, hi = x.min(), x.max()
    step = (hi - lo) / (2**bits - 1)
    xh = lo + np.round((x - lo) / step) * step
    return float(np.mean((xh - x) ** 2))


finite32 = st.floats(-1e4, 1e4, width=32, allow_subnormal=False)


# ============================================================================ log2


def test_log_levels_are_powers_of_two_with_one_code_for_zero() -> None:
    # 4 bits signed: 1 sign bit + 3 exponent bits, one reserved for zero -> K = 7 exponents.
    q = LogQuantizer(alpha=1.0, bits=4)
    mags = [2.0**-k for k in range(7)]
    assert q.levels().tolist() == sorted([-m for m in mags] + [0.0] + mags)
    assert q.levels().numel() == 2**4 - 1
    assert not bool(torch.signbit(q.levels()[7]))  # the zero level is +0.0
    # 3 bits unsigned: all bits index the exponent -> K = 7, top level α = 0.5.
    u = LogQuantizer(alpha=0.5, bits=3, signed=False)
    assert u.levels().tolist() == [0.0, *sorted(0.5 * 2.0**-k for k in range(7))]


def test_log_fit_alpha_is_smallest_power_of_two_at_or_above_max_abs() -> None:
    assert LogQuantizer.fit(torch.tensor([0.1, -0.3]), 4).alpha == 0.5
    assert LogQuantizer.fit(torch.tensor([0.5, -0.25]), 4).alpha == 0.5  # already a power of 2
    assert LogQuantizer.fit(torch.tensor([1.0, -3.0]), 4).alpha == 4.0
    assert LogQuantizer.fit(torch.tensor([0.0, 0.0]), 4).alpha == 1.0  # any α represents 0
    plain = LogQuantizer.fit(torch.tensor([0.1, -0.3]), 4, power_of_two_scale=False)
    assert plain.alpha == float(np.float32(0.3))
    assert plain.levels().max().item() == pytest.approx(0.3, rel=1e-7)


@pytest.mark.parametrize(
    ("value", "log_q", "linear_q"),
    [
        (1.45, 2.0, 1.0),  # between 1 and 2: above √2 ≈ 1.414, below 1.5
        (1.41, 1.0, 1.0),  # below both thresholds
        (1.5, 2.0, 2.0),  # exactly 1.5·2^0: linear tie goes to the larger magnitude
        (2.9, 4.0, 2.0),  # above 2√2 ≈ 2.83, below 3
        (3.0, 4.0, 4.0),
        (0.0625, 0.125, 0.125),  # exactly half the smallest level s = 0.125 -> s
        (0.0624, 0.0, 0.0),  # below s/2 -> 0
        (100.0, 8.0, 8.0),  # beyond α saturates
    ],
)
def test_log_rounding_thresholds(value: float, log_q: float, linear_q: float) -> None:
    # α = 8, 4 bits: magnitudes 8, 4, 2, 1, 1/2, 1/4, 1/8.
    for rounding, expected in (("log", log_q), ("linear", linear_q)):
        q = LogQuantizer(alpha=8.0, bits=4, rounding=rounding)
        x = torch.tensor([value, -value])
        assert q.decode(q.encode(x)).tolist() == [expected, -expected]


def _log_data(alpha: float, n: int) -> torch.Tensor:
    """Log-uniform magnitudes from far below the smallest level to above α, random signs."""
    g = torch.Generator().manual_seed(1)
    mags = alpha * 2.0 ** (torch.rand(n, generator=g) * 12 - 10)
    signs = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    return (mags * signs).float()


def test_log_linear_rounding_is_the_nearest_level() -> None:
    q = LogQuantizer(alpha=2.0, bits=4, rounding="linear")
    x = _log_data(2.0, 20000)
    levels = q.levels().double().numpy()
    xd = x.double().numpy()
    ref = levels[np.argmin(np.abs(xd[:, None] - levels[None, :]), axis=1)]
    np.testing.assert_array_equal(q.decode(q.encode(x)).double().numpy(), ref)


def test_log_log_rounding_is_nearest_in_log2_domain() -> None:
    q = LogQuantizer(alpha=2.0, bits=4, rounding="log")
    x = _log_data(2.0, 20000)
    mags = 2.0 * 2.0 ** -np.arange(7.0)
    xd = x.double().numpy()
    with np.errstate(divide="ignore"):
        k = np.argmin(np.abs(np.log2(np.abs(xd))[:, None] - np.log2(mags)[None, :]), axis=1)
    ref = np.where(np.abs(xd) < mags.min() / 2, 0.0, np.sign(xd) * mags[k])
    np.testing.assert_array_equal(q.decode(q.encode(x)).double().numpy(), ref)


def test_log_relative_error_bounds_linear_one_third_log_sqrt2_minus_1() -> None:
    # Inside [s, α] the worst relative error of "linear" is 1/3 (at 1.5a -> a or 2a), that of
    # "log" √2 − 1 (just below √2·a -> a); dense sampling gets within 1e-3 of both suprema.
    x = torch.linspace(0.125, 8.0, 200001)
    worst = {}
    for rounding in ("linear", "log"):
        q = LogQuantizer(alpha=8.0, bits=4, rounding=rounding)
        worst[rounding] = float(((q.decode(q.encode(x)) - x).abs() / x).max())
    assert 1 / 3 - 1e-3 < worst["linear"] <= 1 / 3 + 1e-6
    assert math.sqrt(2) - 1 - 1e-3 < worst["log"] <= math.sqrt(2) - 1 + 1e-6


def test_log_code_layout_sign_bit_and_monotone_magnitude_code() -> None:
    q = LogQuantizer(alpha=1.0, bits=4)
    x = torch.tensor([0.0, 2.0**-6, 0.5, 1.0, -(2.0**-6), -1.0])
    assert q.encode(x).tolist() == [0, 1, 6, 7, 8 + 1, 8 + 7]
    assert q.decode(torch.tensor([8])).item() == 0.0  # the unused negative-zero code
    assert not torch.signbit(q.decode(torch.tensor([8]))).item()
    u = LogQuantizer(alpha=1.0, bits=3, signed=False)
    assert u.encode(torch.tensor([1.0, 0.0, -5.0])).tolist() == [7, 0, 0]  # negatives saturate


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.integers(1, 40), elements=finite32), st.integers(2, 8))
def test_log_properties(values: np.ndarray, bits: int) -> None:
    x = torch.from_numpy(values)
    lin = LogQuantizer.fit(x, bits, rounding="linear")
    log = LogQuantizer.fit(x, bits, rounding="log")
    for q in (lin, log):
        xh = q.decode(q.encode(x))
        assert bool(torch.isin(xh, q.levels()).all())
        assert torch.equal(q.decode(q.encode(-x)), -xh)  # odd symmetry
    # linear is the true nearest level, so never farther than the log-domain choice
    err_lin = (lin.decode(lin.encode(x)).double() - x.double()).abs()
    err_log = (log.decode(log.encode(x)).double() - x.double()).abs()
    assert bool((err_lin <= err_log).all())


# ============================================================================ codebooks


def test_rule_codebook_thresholds_inclusive_below() -> None:
    rule = RuleCodebook(thresholds=[0.0, 1.0], values=[0.0, 1.0, 2.0])
    x = torch.tensor([-5.0, -1e-7, 0.0, 0.5, 0.999, 1.0, 7.0])
    assert rule.encode(x).tolist() == [0, 0, 1, 1, 1, 2, 2]
    assert rule.decode(rule.encode(x)).tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 2.0, 2.0]
    assert rule.bits == 2
    assert rule.levels().tolist() == [0.0, 1.0, 2.0]


def test_rule_codebook_values_need_not_be_sorted() -> None:
    rule = RuleCodebook(thresholds=[-1.0, 1.0], values=[5.0, -2.0, 5.0])
    assert rule.decode(rule.encode(torch.tensor([-3.0, 0.0, 3.0]))).tolist() == [5.0, -2.0, 5.0]
    assert rule.levels().tolist() == [-2.0, 5.0]


def test_codebook_from_levels_nearest_with_ties_to_lower_index() -> None:
    cb = codebook_from_levels([2.0, -1.0, 0.0, 0.0])
    assert cb.table.tolist() == [-1.0, 0.0, 2.0] and cb.bits == 2
    x = torch.tensor([-0.5, 1.0, 1.0001, -7.0, 9.0, 0.49])
    assert cb.encode(x).tolist() == [0, 1, 2, 0, 2, 1]  # -0.5 and 1.0 are midpoints
    assert cb.decode(cb.encode(x)).tolist() == [-1.0, 0.0, 2.0, -1.0, 2.0, 0.0]


def _nearest_exact(x: float, table: list[float]) -> int:
    """argmin_i |x − c_i| in exact rationals, first (lowest) index on ties."""
    fx = Fraction(x)
    dists = [abs(fx - Fraction(c)) for c in table]
    return dists.index(min(dists))


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float32, st.integers(1, 12), elements=finite32),
    arrays(np.float32, st.integers(1, 30), elements=finite32),
)
def test_codebook_encode_is_exact_nearest(levels: np.ndarray, values: np.ndarray) -> None:
    cb = codebook_from_levels(torch.from_numpy(levels))
    table = cb.table.tolist()
    codes = cb.encode(torch.from_numpy(values)).tolist()
    assert codes == [_nearest_exact(float(v), table) for v in values]


@pytest.mark.parametrize("dist", [gaussian, laplace])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_kmeans_beats_uniform_minmax(dist, bits: int) -> None:  # type: ignore[no-untyped-def]
    x = dist(100_000, seed=3)
    cb = KMeansCodebook.fit(x, bits, generator=0)
    km = mse(cb.decode(cb.encode(x)), x)
    uni = uniform_minmax_mse(x.double().numpy(), bits)
    # measured MSE ratio uniform / k-means: Gaussian 7.7, 4.2, 3.3; Laplace 25, 9.6, 6.2
    # (2, 3, 4 bits): min-max spends its levels on the rare tails.
    assert km < 0.5 * uni


@pytest.mark.parametrize("dist", [gaussian, laplace])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_kmeans_matches_sklearn_inertia(dist, bits: int) -> None:  # type: ignore[no-untyped-def]
    x = dist(10_000, seed=4)
    cb = KMeansCodebook.fit(x, bits, generator=0)
    ours = mse(cb.decode(cb.encode(x)), x) * x.numel()
    ref = KMeans(2**bits, n_init=5, random_state=0, tol=1e-8, max_iter=1000)
    with threadpool_limits(limits=1):  # sklearn's OpenMP threads crawl on a busy machine
        sk = ref.fit(x.double().numpy()[:, None]).inertia_
    assert ours == pytest.approx(sk, rel=0.01)


def test_kmeans_lloyd_iterations_never_increase_mse() -> None:
    x = laplace(50_000, seed=5)
    for init in ("kmeans++", "quantile"):
        cb = KMeansCodebook.fit(x, 4, generator=1, init=init)
        h = np.array(cb.mse_history)
        assert cb.n_iter > 5
        # 1e-12 relative: the prefix-sum SSE is exact to float64 round-off, far below this.
        assert bool(np.all(np.diff(h) <= 1e-12 * h[:-1]))
        assert h[-1] < h[0]
        # the recorded MSE is the MSE of the returned (float32) codebook
        assert mse(cb.decode(cb.encode(x)), x) == pytest.approx(h[-1], rel=1e-5)


def test_kmeans_converged_levels_are_cell_means() -> None:
    # Lloyd-Max centroid condition: each level is the mean of the values encoded to it.
    x = gaussian(20_000, seed=6)
    cb = KMeansCodebook.fit(x, 3, generator=0, tol=0.0, max_iter=100_000)
    codes, xd = cb.encode(x).numpy(), x.double().numpy()
    means = [xd[codes == i].mean() for i in range(8)]
    np.testing.assert_allclose(cb.table.double().numpy(), means, rtol=0, atol=1e-6)


def test_kmeans_reproduces_max_1960_gaussian_quantizers() -> None:
    # Max 1960, Table I (unit Gaussian): 1 bit ±0.7979 (= √(2/π)), MSE 0.3634 (= 1 − 2/π);
    # 2 bits ±0.4528, ±1.510, MSE 0.1175. Symmetrised sample of 2·10^5: sampling error ≈ 0.005.
    z = gaussian(100_000, seed=7)
    x = torch.cat([z, -z])
    one = KMeansCodebook.fit(x, 1, generator=0, tol=0.0)
    np.testing.assert_allclose(one.table.numpy(), [-0.7979, 0.7979], atol=0.01)
    assert one.mse_history[-1] == pytest.approx(1 - 2 / math.pi, rel=0.01)
    two = KMeansCodebook.fit(x, 2, generator=0, tol=0.0)
    np.testing.assert_allclose(two.table.numpy(), [-1.510, -0.4528, 0.4528, 1.510], atol=0.015)
    assert two.mse_history[-1] == pytest.approx(0.1175, rel=0.01)


def test_kmeans_is_seeded_and_deterministic() -> None:
    x = laplace(30_000, seed=8)
    a = KMeansCodebook.fit(x, 3, generator=11)
    b = KMeansCodebook.fit(x, 3, generator=torch.Generator().manual_seed(11))
    c = KMeansCodebook.fit(x, 3)  # None means seed 0
    d = KMeansCodebook.fit(x, 3, generator=0)
    assert torch.equal(a.table, b.table) and torch.equal(c.table, d.table)
    assert torch.equal(
        KMeansCodebook.fit(x, 3, init="quantile").table,
        KMeansCodebook.fit(x, 3, init="quantile", generator=5).table,
    )


def test_kmeans_fewer_distinct_values_than_levels_is_exact() -> None:
    x = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, -2.5])
    for init in ("kmeans++", "quantile"):
        cb = KMeansCodebook.fit(x, 3, init=init)
        assert torch.equal(cb.decode(cb.encode(x)), x)


# ============================================================================ binary codes


def test_binary_one_base_is_the_closed_form_optimum() -> None:
    # m = 1: min_{α,b} ||r − αb||² is solved by b = sign(r), α = mean|r| (Rastegari et al.
    # 2016), with error mean(r²) − mean|r|².
    x = laplace(10_000, seed=10)
    xd = x.double().numpy()
    q = BinaryCodeQuantizer.fit(x, 1)
    alpha = np.abs(xd).mean()
    assert q.alphas.item() == pytest.approx(alpha, rel=1e-6)
    np.testing.assert_allclose(q.decode(q.encode(x)).numpy(), alpha * np.sign(xd), rtol=1e-6)
    assert mse(q.decode(q.encode(x)), x) == pytest.approx(np.mean(xd**2) - alpha**2, rel=1e-5)


def test_binary_error_falls_strictly_as_bases_are_added() -> None:
    x = gaussian(20_000, seed=11)
    errors = []
    for m in (1, 2, 3, 4):
        q = BinaryCodeQuantizer.fit(x, m)
        errors.append(mse(q.decode(q.encode(x)), x))
    # measured: 0.359, 0.116, 0.036, 0.011 (k-means, unconstrained: 0.359, 0.116, 0.033, 0.0091)
    assert errors == sorted(errors, reverse=True) and len(set(errors)) == 4
    assert errors[0] == pytest.approx(1 - 2 / math.pi, rel=0.02)
    assert errors[3] < 0.02


def test_binary_greedy_matches_numpy_and_alternating_never_worse() -> None:
    x = gaussian(20_000, seed=12)
    xd = x.double().numpy()
    for m in (2, 3, 4):
        # independent greedy: α_i = mean|e|, e -= α_i·sign(e)
        e, alphas = xd.copy(), []
        for _ in range(m):
            alphas.append(np.abs(e).mean())
            e = e - alphas[-1] * np.where(e >= 0, 1.0, -1.0)
        greedy = BinaryCodeQuantizer.fit(x, m, n_iter=0)
        np.testing.assert_allclose(greedy.alphas.numpy(), sorted(alphas, reverse=True), rtol=1e-5)
        # re-encoding with the nearest candidate can only improve on greedy's own signs
        assert greedy.mse_history[0] <= np.mean(e**2) * (1 + 1e-12)
        alt = BinaryCodeQuantizer.fit(x, m)
        h = np.array(alt.mse_history)
        assert bool(np.all(np.diff(h) <= 0)) and h[0] == greedy.mse_history[0]
        assert mse(alt.decode(alt.encode(x)), x) < mse(greedy.decode(greedy.encode(x)), x)
    # m = 4: greedy 0.030 -> alternating 0.011 (Xu et al.'s point: greedy is far from optimal)
    assert alt.mse_history[-1] < 0.5 * greedy.mse_history[0]


def test_binary_codes_follow_bit_layout_and_encode_is_nearest() -> None:
    x = gaussian(5_000, seed=13)
    q = BinaryCodeQuantizer.fit(x, 3)
    a = q.alphas.double().numpy()
    codes = np.arange(8)
    signs = np.where((codes[:, None] >> np.arange(3)) & 1, 1.0, -1.0)  # bit i set <=> b_i = +1
    candidates = signs @ a
    np.testing.assert_allclose(q.decode(torch.arange(8)).numpy(), candidates, rtol=1e-6)
    xd = x.double().numpy()
    best = np.abs(xd[:, None] - candidates[None, :]).min(axis=1)
    got = np.abs(q.decode(q.encode(x)).double().numpy() - xd)
    np.testing.assert_allclose(got, best, rtol=0, atol=1e-6)


def test_binary_converged_alphas_solve_the_normal_equations() -> None:
    x = laplace(20_000, seed=14)
    q = BinaryCodeQuantizer.fit(x, 2, n_iter=1000, tol=0.0)
    codes = q.encode(x).long().numpy()
    b = np.where((codes[:, None] >> np.arange(2)) & 1, 1.0, -1.0)
    ls, *_ = np.linalg.lstsq(b, x.double().numpy(), rcond=None)
    np.testing.assert_allclose(q.alphas.double().numpy(), ls, rtol=1e-5)


def test_binary_per_row_fits_each_output_channel_on_its_own() -> None:
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(15)) * torch.linspace(
        0.1, 3.0, 16
    ).unsqueeze(1)
    per_row = BinaryCodeQuantizer.fit(w, 2, axis=0)
    assert per_row.alphas.shape == (16, 2)
    for i in range(16):
        alone = BinaryCodeQuantizer.fit(w[i], 2)
        np.testing.assert_allclose(per_row.alphas[i].numpy(), alone.alphas.numpy(), rtol=1e-5)
    one = BinaryCodeQuantizer.fit(w, 1, axis=0)
    np.testing.assert_allclose(one.alphas[:, 0].numpy(), w.abs().double().mean(1), rtol=1e-6)
    # per row is optimal for m = 1, so it beats the single per-tensor α on rows of mixed scale
    tensor = BinaryCodeQuantizer.fit(w, 1)
    assert mse(one.decode(one.encode(w)), w) < mse(tensor.decode(tensor.encode(w)), w)
    # another axis: slices along axis 1 of the transpose are the same rows
    cols = BinaryCodeQuantizer.fit(w.T.contiguous(), 1, axis=-1)
    assert cols.axis == 1
    np.testing.assert_allclose(cols.alphas.numpy(), one.alphas.numpy(), rtol=1e-6)
    assert torch.equal(cols.decode(cols.encode(w.T)), one.decode(one.encode(w)).T)


# ============================================================================ the shared contract


def _all_quantizers() -> list[Quantizer]:
    x = laplace(4_000, seed=16).reshape(40, 100)
    return [
        LogQuantizer.fit(x, 5),
        LogQuantizer.fit(x.abs(), 3, signed=False, rounding="linear"),
        RuleCodebook(thresholds=[0.0, 1.0], values=[0.0, 1.0, 2.0]),
        codebook_from_levels([-1.0, 0.0, 0.5, 2.0]),
        KMeansCodebook.fit(x, 3),
        BinaryCodeQuantizer.fit(x, 3),
    ]


@pytest.mark.parametrize("shape", [(), (7,), (3, 4, 5)])
def test_every_quantizer_implements_the_protocol_on_any_shape(shape: tuple[int, ...]) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(17))
    for q in _all_quantizers():
        assert isinstance(q, Quantizer)
        assert isinstance(q.name, str) and isinstance(q.bits, int)
        codes = q.encode(x)
        assert codes.shape == x.shape and not codes.is_floating_point()
        assert int(codes.max()) < 2**q.bits if codes.numel() else True
        xh = q.decode(codes)
        assert xh.shape == x.shape and xh.dtype == torch.float32
        assert bool(torch.isin(xh, q.levels()).all())  # type: ignore[attr-defined]
        with pytest.raises(dataclasses.FrozenInstanceError):
            q.bits = 3  # type: ignore[misc]


def test_per_row_binary_keeps_shape_and_checks_slices() -> None:
    w = torch.randn(6, 2, 3, generator=torch.Generator().manual_seed(18))
    q = BinaryCodeQuantizer.fit(w, 2, axis=0)
    assert q.decode(q.encode(w)).shape == w.shape
    assert q.levels().shape == (6, 4)
    with pytest.raises(ValueError, match="6 slices along axis 0"):
        q.encode(torch.randn(5, 2, 3))


BAD_FITS = [
    (lambda x: LogQuantizer.fit(x, 4), "log"),
    (lambda x: KMeansCodebook.fit(x, 2), "kmeans"),
    (lambda x: BinaryCodeQuantizer.fit(x, 2), "binary"),
]


@pytest.mark.parametrize(("fit", "label"), BAD_FITS)
def test_fit_rejects_bad_tensors(fit, label: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="1 NaN"):
        fit(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="Inf"):
        fit(torch.tensor([1.0, float("inf")]))
    with pytest.raises(ValueError, match="empty"):
        fit(torch.empty(0, 3))
    with pytest.raises(TypeError, match="floating-point"):
        fit(torch.tensor([1, 2]))
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        fit([1.0, 2.0])


@pytest.mark.parametrize(
    ("fit", "bad_bits"),
    [
        (lambda b: LogQuantizer.fit(torch.ones(3), b), [1, 9]),
        (lambda b: KMeansCodebook.fit(torch.ones(3), b), [0, 9]),
        (lambda b: BinaryCodeQuantizer.fit(torch.ones(3), b), [0, 5]),
    ],
)
def test_fit_rejects_unsupported_bits(fit, bad_bits: list[int]) -> None:  # type: ignore[no-untyped-def]
    for b in bad_bits:
        with pytest.raises(ValueError, match=f"={b} is out of range"):
            fit(b)
    with pytest.raises(TypeError, match="must be an int"):
        fit(2.0)


def test_decode_rejects_codes_out_of_range_or_not_integer() -> None:
    for q in _all_quantizers():
        n = 2**q.bits  # log2 and binary use every code; codebooks as many as they have levels
        if isinstance(q, RuleCodebook):
            n = q.values.numel()
        if isinstance(q, Codebook):
            n = q.table.numel()
        with pytest.raises(ValueError, match=rf"outside \[0, {n}\): first {n} at index \(1,\)"):
            q.decode(torch.tensor([0, n]))
        with pytest.raises(ValueError, match="first -1"):
            q.decode(torch.tensor([-1]))
        with pytest.raises(TypeError, match="integer tensor"):
            q.decode(torch.tensor([0.0]))


def test_other_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match=r"non-negative data, got min -1\.0"):
        LogQuantizer.fit(torch.tensor([-1.0, 2.0]), 4, signed=False)
    with pytest.raises(ValueError, match="rounding='nearest' is unknown"):
        LogQuantizer.fit(torch.ones(2), 4, rounding="nearest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="strictly increasing"):
        RuleCodebook(thresholds=[1.0, 0.0], values=[0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="one value more than thresholds"):
        RuleCodebook(thresholds=[0.0], values=[0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="5 levels, more than 2\\^bits = 4"):
        Codebook(torch.arange(5.0), bits=2)
    with pytest.raises(ValueError, match="init='random' is unknown"):
        KMeansCodebook.fit(torch.ones(4), 2, init="random")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="generator must be"):
        KMeansCodebook.fit(torch.ones(4), 2, generator="seed")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="contains 1 NaN"):
        KMeansCodebook.fit(torch.randn(8), 2).encode(torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="axis=2 is out of range"):
        BinaryCodeQuantizer.fit(torch.ones(3, 4), 2, axis=2)
