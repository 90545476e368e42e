"""Error metrics against closed forms; sweeps show error growing as bits shrink."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import zeropoint as zp
from zeropoint.analysis import (
    UniformQuantizer,
    cosine,
    error_report,
    max_abs_error,
    mse,
    sqnr_db,
    sweep,
)
from zeropoint.quantizer import Quantizer


def test_metrics_closed_forms() -> None:
    x = torch.tensor([3.0, 4.0])
    y = torch.tensor([3.0, 5.0])
    assert mse(x, y) == 0.5
    assert max_abs_error(x, y) == 1.0
    assert sqnr_db(x, y) == pytest.approx(10 * math.log10(25 / 1))
    assert cosine(x, y) == pytest.approx(29 / (5 * math.sqrt(34)))
    assert sqnr_db(x, x) == math.inf
    assert cosine(torch.zeros(2), torch.zeros(2)) == 1.0


@pytest.mark.parametrize("bits", [4, 6, 8, 10])
def test_sqnr_of_uniform_data_is_6_02_db_per_bit(bits: int) -> None:
    # Levels kΔ, k = −2^(b−1)..2^(b−1)−1, Δ = 2/2^b (range [−1, 1 − Δ] gives S = Δ, Z = 0), and
    # x uniform over exactly their rounding cells, [−1 − Δ/2, 1 − Δ/2): noise Δ²/12, signal
    # 1/3 + Δ²/4, so SQNR = 10·log10(4^b + 3) ≈ 6.02·b dB. 10^6 draws: sampling noise < 0.02 dB.
    delta = 2.0 / 2**bits
    g = torch.Generator().manual_seed(bits)
    x = (torch.rand(1_000_000, generator=g, dtype=torch.float64) * 2 - 1 - delta / 2).float()
    qp = zp.qparams_from_range(-1.0, 1.0 - delta, zp.Scheme(bits=bits))
    assert qp.scale.item() == delta and int(qp.zero_point) == 0
    expected = 10 * math.log10(4**bits + 3)
    assert sqnr_db(x, zp.fake_quantize(x, qp)) == pytest.approx(expected, abs=0.02)


def test_error_report_matches_a_numpy_reference() -> None:
    # reference: the codes clip(rint(x / S) + Z) in numpy (float32 division, as ONNX), the
    # reconstruction S·(q − Z) and the four metrics in float64 — nothing from zeropoint but S, Z
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 2
    u = UniformQuantizer.fit(x, zp.Scheme(bits=4), "mse")
    assert isinstance(u, Quantizer) and u.bits == 4
    s, z = float(u.qparams.scale), int(u.qparams.zero_point)
    xn = x.numpy()
    codes = np.clip(np.rint(xn / np.float32(s)) + z, -8, 7)
    x_hat = ((codes - z) * np.float32(s)).astype(np.float32).astype(np.float64)
    xd = xn.astype(np.float64)
    err = x_hat - xd
    r = error_report(x, u)
    assert r.mse == pytest.approx(np.mean(err**2), rel=1e-12)
    assert r.sqnr_db == pytest.approx(10 * np.log10(np.sum(xd**2) / np.sum(err**2)), rel=1e-12)
    assert r.max_abs == pytest.approx(np.abs(err).max(), rel=1e-12)
    cos = np.dot(xd, x_hat) / (np.linalg.norm(xd) * np.linalg.norm(x_hat))
    assert r.cosine == pytest.approx(cos, rel=1e-12)
    assert error_report(x, u.qparams).as_dict() == {**r.as_dict(), "name": str(u.qparams.scheme)}


def test_sweep_error_grows_as_bits_shrink() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 128, generator=g) * torch.logspace(-1, 1, 64).unsqueeze(1)
    rows = sweep(
        w,
        bits=[2, 4, 8],
        methods=["minmax", "percentile"],
        granularities=["per_tensor", "per_channel", "per_group"],
    )
    assert len(rows) == 3 * 2 * 3
    for method in ("minmax", "percentile"):
        for gran in ("per_tensor", "per_channel", "per_group"):
            errs = [r.mse for r in rows if r.method == method and r.granularity == gran]
            assert errs[0] > errs[1] > errs[2]  # 2 > 4 > 8 bits
    # finer granularity adapts to the 100x spread of channel ranges: per-channel beats
    # per-tensor (the large channels, whose step is unchanged, dominate the MSE), groups more so
    at4 = {r.granularity: r.mse for r in rows if r.bits == 4 and r.method == "minmax"}
    assert at4["per_group"] < at4["per_channel"] < at4["per_tensor"] / 2
    with pytest.raises(ValueError, match="unknown granularity"):
        sweep(w, bits=[8], granularities=["per_row"])
