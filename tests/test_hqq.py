"""HQQ against a direct float64 implementation of its half-quadratic iterations, its ℓp error
against round-to-nearest, and the fractional zero points through the layer and a checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import zeropoint as zp
from zeropoint.ptq.hqq import hqq_layer, hqq_quantize

SCHEME = zp.Scheme(bits=4, signed=False, group_size=32)


def _reference(
    w: np.ndarray,
    bits: int,
    group: int,
    iters: int = 20,
    p: float = 0.7,
    beta: float = 10.0,
    kappa: float = 1.01,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Badri & Shaji's iterations in numpy, per group: min-max start, then q, e (ℓp shrinkage),
    z (closed form), β·κ, stopping when the mean |w − ŵ| no longer falls."""
    rows = w.reshape(-1, group).astype(np.float64)
    qmax = 2**bits - 1
    lo, hi = np.minimum(rows.min(1), 0), np.maximum(rows.max(1), 0)
    s = ((hi - lo) / qmax).astype(np.float32).astype(np.float64)[:, None]
    z = np.clip(-np.round(lo[:, None] / s), 0, qmax)

    def q_of(z):
        return np.clip(np.round(rows / s + z), 0, qmax)

    def err(z):
        return np.abs(rows - s * (q_of(z) - z)).mean()

    best = err(z)
    for _ in range(iters):
        q = q_of(z)
        d = rows - s * (q - z)
        e = np.sign(d) * np.maximum(np.abs(d) - np.maximum(np.abs(d), 1e-30) ** (p - 1) / beta, 0)
        z_new = (q - (rows - e) / s).mean(1, keepdims=True)
        beta *= kappa
        if err(z_new) >= best:
            break
        best, z = err(z_new), z_new
    return q_of(z), s, z


def test_hqq_matches_the_direct_iterations() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 128, generator=g) + 0.3 * torch.randn(16, 128, generator=g) ** 3
    result = hqq_layer(w, SCHEME)
    q, s, z = _reference(w.numpy(), 4, 32)
    assert np.array_equal(result.codes.numpy().reshape(-1, 32), q)
    # Ŵ = S·(q − Z) + O reproduces S·(q − z) with the fractional z
    w_hat = (q - z) * s
    layer_w = (
        result.codes.float().reshape(-1, 32) - result.qparams.zero_point.reshape(-1, 1)
    ) * result.qparams.scale.reshape(-1, 1) + result.offset.reshape(-1, 1)
    np.testing.assert_allclose(layer_w.numpy(), w_hat, rtol=0, atol=1e-6)
    assert result.error < result.rtn_error


def test_hqq_model_runs_and_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.GELU(), nn.Linear(96, 32))
    config = zp.QuantConfig(weight=SCHEME, activation=None, module_types=(nn.Linear,))
    q = hqq_quantize(model, config)
    x = torch.randn(8, 64)
    layer = q[0]
    assert layer.weight_offset.shape == layer.weight_qparams.scale.shape
    with torch.no_grad():
        torch.testing.assert_close(
            q[0](x), x @ layer.dequantized_weight().T + model[0].bias, rtol=1e-5, atol=1e-5
        )
        restored = zp.load(
            zp.save(q, tmp_path / "hqq"),
            nn.Sequential(nn.Linear(64, 96), nn.GELU(), nn.Linear(96, 32)),
        )
        assert torch.equal(restored(x), q(x))
    with pytest.raises(ValueError, match="unsigned affine"):
        hqq_layer(torch.randn(4, 32), zp.Scheme(bits=4, symmetric=True, group_size=32))
