"""The OMSE observer: clip ranges minimising ‖Q(r) − r‖² (Choukroun et al. 2019), registered as
the calibration method "omse" (see `zeropoint.ptq.omse` for the method and its derivation).

Kept apart from `zeropoint.ptq.omse` so that the observer registry can import it without
importing the workflows.
"""

from __future__ import annotations

import torch
from torch import Tensor

from zeropoint.functional import fake_quantize
from zeropoint.observers.base import Observer
from zeropoint.observers.estimators import _around, _best
from zeropoint.observers.histogram import MSE
from zeropoint.observers.registry import OBSERVERS
from zeropoint.qparams import Scheme, qparams_from_range

#: Values an OMSE observer keeps exactly before falling back to its histogram: per-channel
#: tensors (weights) up to MAX_EXACT values, single-row streams (per-tensor activations) up to
#: MAX_EXACT_ROW — beyond that the 4096-bin histogram's bins are far finer than any step.
MAX_EXACT = 1 << 22
MAX_EXACT_ROW = 1 << 18


def squared_errors(
    x: Tensor, lo: Tensor, hi: Tensor, scheme: Scheme, budget: int = 1 << 20
) -> Tensor:
    """Σ_j (Q_k(x_rj) − x_rj)² for every row r of ``x`` (rows, n) and candidate k of ``lo``/``hi``
    (rows, K), Q_k the scheme's quantizer on [lo_rk, hi_rk]. Returns (rows, K), float64.

    Work is done in blocks of rows × candidates of about ``budget`` values."""
    rows, n = x.shape
    k = lo.shape[1]
    per_row = scheme.with_(axis=0, group_size=None)
    out = torch.empty(rows, k, dtype=torch.float64)
    k_step = max(1, min(k, budget // max(n, 1)))
    r_step = max(1, budget // max(k_step * n, 1))
    for r0 in range(0, rows, r_step):
        xs = x[r0 : r0 + r_step]
        m = xs.shape[0]
        for k0 in range(0, k, k_step):
            kk = min(k_step, k - k0)
            xe = xs.unsqueeze(1).expand(m, kk, n).reshape(m * kk, n)
            lo_b = lo[r0 : r0 + m, k0 : k0 + kk].reshape(-1)
            hi_b = hi[r0 : r0 + m, k0 : k0 + kk].reshape(-1)
            qp = qparams_from_range(lo_b, hi_b, per_row, xe.shape)
            err = (fake_quantize(xe, qp) - xe).pow_(2).sum(1, dtype=torch.float64)
            out[r0 : r0 + m, k0 : k0 + kk] = err.reshape(m, kk)
    return out


def omse_range(
    x: Tensor, scheme: Scheme, grid: int = 100, refine: int = 41
) -> tuple[Tensor, Tensor]:
    """Per row of ``x`` (rows, n): the clip range (lo, hi) minimising ‖Q(x) − x‖² (module doc)."""
    x = x.to(torch.float32)
    lo0 = x.amin(1).double().clamp(max=0.0)
    hi0 = x.amax(1).double().clamp(min=0.0)
    if scheme.symmetric:
        m = torch.maximum(lo0.abs(), hi0)
        lo0, hi0 = -m, m
    rows = x.shape[0]

    def err(lo: Tensor, hi: Tensor) -> Tensor:
        return squared_errors(x, lo, hi, scheme)

    a = torch.linspace(1.0 / grid, 1.0, grid, dtype=torch.float64).expand(rows, grid)
    best = _best(a, err(a * lo0.unsqueeze(1), a * hi0.unsqueeze(1)))
    one = torch.ones_like(best)
    fine = _around(best, one / grid, refine, one * 1e-4, one)
    best = _best(fine, err(fine * lo0.unsqueeze(1), fine * hi0.unsqueeze(1)))
    lo_best, hi_best = best * lo0, best * hi0
    if not scheme.symmetric:
        span = (hi_best - lo_best) * 0.05
        his = _around(hi_best, span, refine, torch.zeros_like(best), hi0)
        hi_best = _best(his, err(lo_best.unsqueeze(1).expand_as(his), his))
        los = _around(lo_best, span, refine, lo0, torch.zeros_like(best))
        lo_best = _best(los, err(los, hi_best.unsqueeze(1).expand_as(los)))
    return lo_best, hi_best


class OMSE(MSE):
    """OMSE observer: exact ‖Q(r) − r‖² search on the values while at most ``max_exact`` have
    been seen (weights), the histogram estimate of the same objective beyond (activations)."""

    def __init__(
        self, scheme: Scheme | None = None, bins: int = 4096, max_exact: int = MAX_EXACT
    ) -> None:
        super().__init__(scheme, bins)
        self.max_exact = max_exact
        self.values: list[Tensor] | None = []

    def _update_rows(self, rows: Tensor) -> None:
        super()._update_rows(rows)
        if self.values is not None:
            kept = sum(v.numel() for v in self.values) + rows.numel()
            cap = self.max_exact if rows.shape[0] > 1 else min(self.max_exact, MAX_EXACT_ROW)
            self.values = [*self.values, rows.clone()] if kept <= cap else None

    def _merge(self, other: Observer) -> None:
        assert isinstance(other, OMSE)
        super()._merge(other)
        if self.values is None or other.values is None:
            self.values = None
        else:
            merged = self.values + [v.clone() for v in other.values]
            cap = self.max_exact if merged[0].shape[0] > 1 else min(self.max_exact, MAX_EXACT_ROW)
            self.values = merged if sum(v.numel() for v in merged) <= cap else None

    def adopt_values(self, parts: list[Tensor] | None) -> None:
        """Take ``parts`` (column blocks of the values, e.g. every rank's) as the values seen,
        or none (the histogram estimate) when None or past the cap: what
        `zeropoint.distributed` sets after reducing the histogram."""
        if parts is None or not parts:
            self.values = None if parts is None else []
            return
        cap = self.max_exact if parts[0].shape[0] > 1 else min(self.max_exact, MAX_EXACT_ROW)
        self.values = parts if sum(v.numel() for v in parts) <= cap else None

    def _copy_from(self, other: Observer) -> None:
        assert isinstance(other, OMSE)
        super()._copy_from(other)
        self.values = None if other.values is None else [v.clone() for v in other.values]

    def _range(self) -> tuple[Tensor, Tensor]:
        if self.values:
            return omse_range(torch.cat(self.values, dim=1), self.scheme)
        return super()._range()


OBSERVERS.setdefault("omse", OMSE)

__all__ = ["MAX_EXACT", "MAX_EXACT_ROW", "OMSE", "omse_range", "squared_errors"]
