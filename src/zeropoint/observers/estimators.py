"""Estimators: functions that turn a `Histogram` into a clip range (α, β) per row.

Each takes the histogram and the scheme and returns float64 tensors (lo, hi) of shape (rows,).
A range never extends beyond the data's own [min, max]; rows that saw only zeros give (0, 0).
Adding a calibration method is adding one function here and one small observer class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from zeropoint.functional import fake_quantize
from zeropoint.qparams import Scheme, qparams_from_range

if TYPE_CHECKING:
    from zeropoint.observers.histogram import Histogram


def _clip_to_data(hist: Histogram, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Both ends clamped into the data's [min, max]: an estimate that lands beside the data —
    e.g. an interpolated percentile inside the one bin that holds constant data — becomes the
    data's own bound, so lo ≤ hi always (constant data c gives [c, c])."""
    lo = torch.minimum(torch.maximum(lo, hist.lo), hist.hi)
    hi = torch.maximum(torch.minimum(hi, hist.hi), hist.lo)
    ok = hist.has_range
    return torch.where(ok, lo, torch.zeros_like(lo)), torch.where(ok, hi, torch.zeros_like(hi))


def _interpolated_quantile(counts: Tensor, start: Tensor, width: Tensor, q: Tensor) -> Tensor:
    """Per row, the position where the cumulative count reaches q·total, interpolating linearly
    inside the bin (bins [start + j·w, start + (j+1)·w))."""
    cdf = counts.cumsum(1)
    total = cdf[:, -1:]
    target = (q.unsqueeze(1) * total).clamp(min=0)
    j = torch.searchsorted(cdf, target, right=False).clamp(max=counts.shape[1] - 1)
    prev = torch.where(j > 0, cdf.gather(1, (j - 1).clamp(min=0)), torch.zeros_like(target))
    in_bin = counts.gather(1, j).clamp(min=1e-300)
    frac = ((target - prev) / in_bin).clamp(0.0, 1.0)
    return (start.unsqueeze(1) + (j.to(torch.float64) + frac) * width.unsqueeze(1)).squeeze(1)


def percentile_range(hist: Histogram, scheme: Scheme, percentile: float) -> tuple[Tensor, Tensor]:
    """Symmetric schemes: t = the p-th percentile of |x|, range [−t, t]. Asymmetric schemes:
    range [the (100 − p)-th percentile of x, the p-th percentile of x]."""
    p = torch.full((hist.rows,), percentile / 100.0, dtype=torch.float64)
    width = hist.bin_width
    if scheme.symmetric:
        t = _interpolated_quantile(hist.abs_counts(), torch.zeros_like(width), width, p)
        return _clip_to_data(hist, -t, t)
    start = -hist.radius
    lo = _interpolated_quantile(hist.counts, start, width, 1.0 - p)
    hi = _interpolated_quantile(hist.counts, start, width, p)
    return _clip_to_data(hist, lo, hi)


# ------------------------------------------------------------------------- entropy (KL)


def _smooth(p: Tensor, inside: Tensor, n_inside: Tensor, eps: float = 1e-4) -> Tensor:
    """Move mass ``eps`` onto every empty bin inside the support, taken evenly from the others
    (onnxruntime's smooth_distribution), so that KL stays finite. Outside the support: 1."""
    zeros = (p == 0) & inside
    n_zero = zeros.sum(1, keepdim=True).to(p.dtype)
    take = eps * n_zero / (n_inside - n_zero).clamp(min=1)
    out = torch.where(zeros, torch.full_like(p, eps), p - take)
    return torch.where(inside, out.clamp_(min=1e-12), torch.ones_like(p))


def _kl_thresholds(h: Tensor, t: Tensor, num_q: int) -> Tensor:
    """KL(P_t ‖ Q_t) for each candidate t (number of leading |x|-bins kept), vectorised."""
    total = h.sum()
    h = h[: int(t.max())]  # bins at or beyond every candidate only count as outliers
    j = torch.arange(h.numel())
    inside = j.unsqueeze(0) < t.unsqueeze(1)  # (T, H)
    h_in = torch.where(inside, h.unsqueeze(0), torch.zeros((), dtype=h.dtype))
    rows = torch.arange(t.numel())
    p = h_in.clone()
    p[rows, t - 1] += total - h_in.sum(1)  # the outliers, into the last kept bin
    # near-equal groups: bin j of the t kept bins goes to level ⌊j·num_q/t⌋
    group = torch.clamp(j.unsqueeze(0) * num_q // t.unsqueeze(1), max=num_q - 1)
    nonzero = h_in > 0
    q_sum = torch.zeros(t.numel(), num_q, dtype=h.dtype).scatter_add_(1, group, h_in)
    q_cnt = torch.zeros(t.numel(), num_q, dtype=h.dtype).scatter_add_(1, group, nonzero.to(h.dtype))
    q = torch.where(nonzero, q_sum.gather(1, group) / q_cnt.gather(1, group).clamp(min=1), 0.0)
    n_inside = t.unsqueeze(1).to(h.dtype)
    p = _smooth(p / total, inside, n_inside)
    q = _smooth(q / q.sum(1, keepdim=True).clamp(min=1e-300), inside, n_inside)
    return (p * torch.log(p / q)).sum(1)


def entropy_threshold_bins(h: Tensor, num_q: int, chunk: int = 256) -> int:
    """The number of |x|-bins t ≥ num_q that minimises KL(P_t ‖ Q_t) (TensorRT's algorithm):
    P_t is the first t bins with all outliers added to the last, Q_t merges those t bins into
    num_q quantization bins and spreads each back evenly over its non-empty bins.

    One change from TensorRT: the t bins are split into num_q groups of near-equal size (bin j
    to group ⌊j·num_q/t⌋). TensorRT merges ⌊t/num_q⌋ bins per group and puts the remainder into
    the last group; for num_q ≤ t < 2·num_q that last group swallows up to half of the kept
    bins, which makes KL spuriously small there and drags the threshold down (seen as a clip at
    ~2·num_q bins on every post-ReLU activation of a CNN)."""
    nonzero = (h > 0).nonzero()
    if nonzero.numel() == 0:
        return 0
    last = int(nonzero[-1]) + 1
    if last <= num_q:
        return last
    h = h[:last]
    candidates = torch.arange(num_q, last + 1)
    best_kl, best_t = float("inf"), last
    for start in range(0, candidates.numel(), chunk):
        t = candidates[start : start + chunk]
        kl = _kl_thresholds(h, t, num_q)
        i = int(torch.argmin(kl))
        if float(kl[i]) < best_kl:
            best_kl, best_t = float(kl[i]), int(t[i])
    return best_t


def entropy_range(hist: Histogram, scheme: Scheme) -> tuple[Tensor, Tensor]:
    """Clip |x| at the KL-optimal threshold T (Migacz 2017); range [−T, T] ∩ [min, max].

    Levels available on [0, T]: qmax for signed symmetric formats (128 for int8, as TensorRT);
    all qmax − qmin of them when the data is one-sided and the scheme can place Z at an end.
    Exact zeros are left out of the distributions (see the comment in the code)."""
    # Exact zeros (half of a post-ReLU activation) are represented exactly by every candidate,
    # since Z is a level: they say nothing about the clip, yet as one huge spike in bin 0 they
    # dominate KL whenever a quantization level merges bin 0 with its neighbours. Leave them out.
    abs_counts = hist.abs_counts()
    abs_counts[:, 0] -= hist.zeros
    width = hist.bin_width
    one_sided = (hist.lo >= 0) | (hist.hi <= 0)
    t = torch.zeros(hist.rows, dtype=torch.float64)
    for row in range(hist.rows):
        if not bool(hist.has_range[row]):
            continue
        full = scheme.qmax - scheme.qmin
        num_q = full if bool(one_sided[row]) and not scheme.symmetric else (full + 1) // 2
        t[row] = entropy_threshold_bins(abs_counts[row], max(num_q, 1)) * width[row]
    return _clip_to_data(hist, -t, t)


# ------------------------------------------------------------------------- MSE


def bin_points(hist: Histogram, sub: int = 4) -> tuple[Tensor, Tensor]:
    """Midpoint-rule nodes of every row's non-empty bins (density taken uniform within a bin):
    ``sub`` points per bin at the centres of equal sub-intervals, each carrying count/sub.

    Returns (points, weights) of shape (rows, P), rows padded with zero-weight nodes at 0. The
    nodes of the end bins are clamped into the data's [min, max]."""
    nonempty = hist.counts > 0
    per_row = nonempty.sum(1)
    width = int(per_row.max()) if per_row.numel() else 0
    rows = hist.rows
    # the non-empty bin indices of every row, left-aligned into a (rows, width) table
    order = torch.argsort((~nonempty).to(torch.int8), dim=1, stable=True)[:, :width]
    valid = torch.arange(width).unsqueeze(0) < per_row.unsqueeze(1)
    counts = torch.where(valid, hist.counts.gather(1, order), 0.0)
    w = hist.bin_width.unsqueeze(1)
    left = -hist.radius.unsqueeze(1) + order.to(torch.float64) * w
    offsets = (torch.arange(sub, dtype=torch.float64) + 0.5) / sub
    points = (left.unsqueeze(2) + offsets * w.unsqueeze(2)).reshape(rows, -1)
    lo, hi = hist.lo.unsqueeze(1), hist.hi.unsqueeze(1)
    points = torch.minimum(torch.maximum(points, lo), hi)
    weights = (counts / sub).repeat_interleave(sub, dim=1)
    points = torch.where(weights > 0, points, 0.0)
    return points, weights


def expected_sq_error(
    points: Tensor,
    weights: Tensor,
    lo: Tensor,
    hi: Tensor,
    scheme: Scheme,
    budget: int = 1 << 22,
) -> Tensor:
    """Σ_p w_p (Q_k(x_p) − x_p)² for every row and candidate range [lo_k, hi_k].

    ``points``/``weights``: (rows, P); ``lo``/``hi``: (rows, K). Q_k is the scheme's own quantizer
    (`qparams_from_range` + `fake_quantize`), one candidate per (row, k). Returns (rows, K)."""
    rows, n_points = points.shape
    k = lo.shape[1]
    # stochastic rounding would need random draws here: candidates are ranked by their
    # round-to-nearest error instead
    rounding = "half_even" if scheme.rounding == "stochastic" else scheme.rounding
    per_cand = scheme.with_(axis=0, group_size=None, rounding=rounding)
    out = torch.empty(rows, k, dtype=torch.float64)
    step = max(1, budget // max(k * n_points, 1))
    x32 = points.to(torch.float32)
    for r0 in range(0, rows, step):
        sl = slice(r0, r0 + step)
        n = x32[sl].shape[0]
        x = x32[sl].unsqueeze(1).expand(n, k, n_points).reshape(n * k, n_points)
        qp = qparams_from_range(lo[sl].reshape(-1), hi[sl].reshape(-1), per_cand, x.shape)
        err = (fake_quantize(x, qp).to(torch.float64) - points[sl].repeat_interleave(k, 0)) ** 2
        out[sl] = (err * weights[sl].repeat_interleave(k, 0)).sum(1).reshape(n, k)
    return out


def _best(values: Tensor, errors: Tensor) -> Tensor:
    """Per row, the candidate value of least error: (rows, K) → (rows,)."""
    return values.gather(1, errors.argmin(1, keepdim=True)).squeeze(1)


def _around(center: Tensor, half: Tensor, n: int, lo: Tensor, hi: Tensor) -> Tensor:
    """n values per row evenly over [center − half, center + half] ∩ [lo, hi]."""
    t = torch.linspace(-1.0, 1.0, n, dtype=torch.float64)
    grid = center.unsqueeze(1) + half.unsqueeze(1) * t
    return torch.minimum(torch.maximum(grid, lo.unsqueeze(1)), hi.unsqueeze(1))


def mse_range(
    hist: Histogram, scheme: Scheme, grid: int = 100, refine: int = 41, sub: int = 4
) -> tuple[Tensor, Tensor]:
    """Range minimising E[(Q(x) − x)²], estimated on the histogram, vectorised over rows.

    Search: shrink the data range [lo, hi] (symmetric: [−m, m]) by a factor a on a grid over
    (0, 1], refine a on a finer grid around the best; for asymmetric schemes then refine each end
    with the other held fixed. A sparse histogram (under 4 values per non-empty bin, e.g. one
    weight row) is its data at bin resolution already: one node per bin then suffices."""
    occupied = float((hist.counts > 0).sum())
    sparse = occupied > 0 and float(hist.count.sum()) / occupied < 4
    points, weights = bin_points(hist, 1 if sparse else sub)
    lo0, hi0 = hist.lo.clone(), hist.hi.clone()
    empty = ~hist.has_range
    lo0[empty], hi0[empty] = 0.0, 0.0
    if scheme.symmetric:
        m = torch.maximum(lo0.abs(), hi0.abs())
        lo0, hi0 = -m, m

    def err(lo: Tensor, hi: Tensor) -> Tensor:
        return expected_sq_error(points, weights, lo, hi, scheme)

    alphas = torch.linspace(1.0 / grid, 1.0, grid, dtype=torch.float64).expand(hist.rows, grid)
    a = _best(alphas, err(alphas * lo0.unsqueeze(1), alphas * hi0.unsqueeze(1)))
    one = torch.ones_like(a)
    fine = _around(a, one / grid, refine, one * 1e-4, one)
    a = _best(fine, err(fine * lo0.unsqueeze(1), fine * hi0.unsqueeze(1)))
    lo_best, hi_best = a * lo0, a * hi0
    if not scheme.symmetric:
        span = (hi_best - lo_best) * 0.05
        his = _around(hi_best, span, refine, torch.zeros_like(a), hi0.clamp(min=0.0))
        hi_best = _best(his, err(lo_best.unsqueeze(1).expand_as(his), his))
        los = _around(lo_best, span, refine, lo0.clamp(max=0.0), torch.zeros_like(a))
        lo_best = _best(los, err(los, hi_best.unsqueeze(1).expand_as(los)))
    return _clip_to_data(hist, lo_best, hi_best)
