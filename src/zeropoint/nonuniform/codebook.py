"""Codebook (look-up table) quantization: a user rule, or 2^b levels learned by 1-D k-means.

A codebook quantizer stores a table of reals c_0..c_{n−1} and sends each real r to a code
q ∈ [0, n); decoding is the table look-up Q(r) = c_q. Two ways of choosing q:

* `RuleCodebook` — a user rule given as sorted thresholds t_0 < … < t_{n−2} and values
  v_0..v_{n−1}:  q = #{j : t_j ≤ r},  i.e.  r < t_0 → v_0,  t_{j−1} ≤ r < t_j → v_j,
  r ≥ t_{n−2} → v_{n−1}  (Gholami et al. 2021, "A Survey of Quantization Methods", §III-A, eq. 3).
* `Codebook` / `KMeansCodebook` — the nearest level, q = argmin_i |r − c_i| with ties to the lower
  index, i.e. the thresholds are the midpoints (c_i + c_{i+1})/2. `KMeansCodebook.fit` learns the
  levels minimising  Σ_r (Q(r) − r)²  by Lloyd's algorithm (Lloyd 1957/1982; Max 1960 — on the
  empirical distribution Lloyd-Max *is* 1-D k-means), as in Deep Compression (Han et al. 2016).

Codes are stored in the smallest unsigned dtype that holds them (uint8 for ≤ 8 bits).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from zeropoint.formats import IntFormat
from zeropoint.validation import check_finite, check_nonempty, check_tensor

KMEANS_BITS = (1, 8)
#: k-means++ seeds on at most this many values (a uniform sample with replacement beyond it):
#: seeding costs one pass over the data per level, Lloyd's iterations only O(2^b log N) each.
SEEDING_SAMPLE = 1 << 14
Init = Literal["kmeans++", "quantile"]


# --------------------------------------------------------------------------- shared checks


def check_bits(bits: object, lo: int, hi: int, what: str) -> int:
    """Raise TypeError/ValueError unless ``bits`` is an int in [lo, hi]; return it."""
    if not isinstance(bits, int) or isinstance(bits, bool):
        raise TypeError(f"{what} must be an int, got {type(bits).__name__} ({bits!r})")
    if not lo <= bits <= hi:
        raise ValueError(f"{what}={bits} is out of range: expected {lo}..{hi}")
    return bits


def check_codes(codes: object, n_codes: int, what: str = "codes") -> Tensor:
    """Raise TypeError unless ``codes`` is an integer tensor, ValueError unless all lie in
    [0, n_codes); return them as int64 (ready for indexing)."""
    if not isinstance(codes, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(codes).__name__}")
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise TypeError(f"{what} must be an integer tensor, got dtype {codes.dtype}")
    codes = codes.long()
    bad = (codes < 0) | (codes >= n_codes)
    if bool(bad.any()):
        first = tuple(int(i) for i in bad.nonzero()[0].tolist()) if codes.dim() else ()
        value = int(codes[first]) if codes.dim() else int(codes)
        raise ValueError(
            f"{what} hold {int(bad.sum())} value(s) outside [0, {n_codes}): "
            f"first {value} at index {first}"
        )
    return codes


def code_dtype(bits: int) -> torch.dtype:
    """The storage dtype of b-bit codes: that of the unsigned b-bit integer format."""
    return IntFormat(bits, signed=False).storage_dtype


def _as_1d(values: Sequence[float] | Tensor, dtype: torch.dtype, what: str) -> Tensor:
    t = torch.as_tensor(values).detach()
    if t.dim() != 1:
        raise ValueError(f"{what} must be 1-D, got shape {tuple(t.shape)}")
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{what} must be real numbers, got dtype {t.dtype}")
    t = t.to(dtype)
    check_finite(t, what)
    return t


def _first_unsorted(t: Tensor, strict: bool) -> int | None:
    bad = (t[1:] <= t[:-1]) if strict else (t[1:] < t[:-1])
    return int(bad.nonzero()[0]) + 1 if bool(bad.any()) else None


# --------------------------------------------------------------------------- user rule


@dataclass(frozen=True, eq=False)
class RuleCodebook:
    """A user quantization rule: Q(r) = v_q with q = #{j : t_j ≤ r} (thresholds inclusive below).

    ``RuleCodebook(thresholds=[0, 1], values=[0, 1, 2])`` means r < 0 → 0, 0 ≤ r < 1 → 1,
    r ≥ 1 → 2. Thresholds must be strictly increasing; values need not be sorted or distinct.
    """

    thresholds: Tensor
    values: Tensor
    bits: int = field(init=False)

    def __post_init__(self) -> None:
        t = _as_1d(self.thresholds, torch.float64, "RuleCodebook.thresholds")
        v = _as_1d(self.values, torch.float32, "RuleCodebook.values")
        if v.numel() != t.numel() + 1:
            raise ValueError(
                f"RuleCodebook needs one value more than thresholds: got {t.numel()} "
                f"threshold(s) and {v.numel()} value(s)"
            )
        i = _first_unsorted(t, strict=True)
        if i is not None:
            raise ValueError(
                f"RuleCodebook.thresholds must be strictly increasing: t[{i - 1}]="
                f"{t[i - 1].item()} >= t[{i}]={t[i].item()}"
            )
        object.__setattr__(self, "thresholds", t)
        object.__setattr__(self, "values", v)
        object.__setattr__(self, "bits", max(1, math.ceil(math.log2(v.numel()))))

    @property
    def name(self) -> str:
        return f"rule {self.bits}-bit ({self.values.numel()} values)"

    def levels(self) -> Tensor:
        """The sorted distinct values the rule can produce (float32)."""
        return torch.unique(self.values)

    def encode(self, x: Tensor) -> Tensor:
        """q = #{j : t_j ≤ x} per element (same shape)."""
        x = check_tensor(x, "x")
        check_finite(x, "x")
        codes = torch.bucketize(x.double(), self.thresholds, right=True)
        return codes.to(code_dtype(self.bits))

    def decode(self, codes: Tensor) -> Tensor:
        """v_q per element (same shape, float32)."""
        return self.values[check_codes(codes, self.values.numel())]


# --------------------------------------------------------------------------- nearest level


@dataclass(frozen=True, eq=False)
class Codebook:
    """Nearest-level look-up table: q = argmin_i |r − c_i| (ties to the lower index), Q(r) = c_q.

    ``table`` is sorted ascending (float32; repeated levels allowed); the decision thresholds
    are the midpoints (c_i + c_{i+1})/2, computed in float64, where they are exact unless two
    neighbouring levels differ by more than 2^29 in magnitude, so the rule is exactly "nearest,
    ties to the lower index". ``bits`` ≥ ⌈log2 len(table)⌉ is the code width.
    """

    table: Tensor
    bits: int

    def __post_init__(self) -> None:
        t = _as_1d(self.table, torch.float32, f"{type(self).__name__}.table")
        check_nonempty(t, f"{type(self).__name__}.table")
        check_bits(self.bits, 1, 16, f"{type(self).__name__}.bits")
        if t.numel() > 1 << self.bits:
            raise ValueError(
                f"{type(self).__name__} has {t.numel()} levels, more than 2^bits = "
                f"{1 << self.bits} codes"
            )
        i = _first_unsorted(t, strict=False)
        if i is not None:
            raise ValueError(
                f"{type(self).__name__}.table must be sorted ascending: table[{i - 1}]="
                f"{t[i - 1].item()} > table[{i}]={t[i].item()}"
            )
        object.__setattr__(self, "table", t)

    @property
    def name(self) -> str:
        return f"codebook {self.bits}-bit ({self.table.numel()} levels)"

    def levels(self) -> Tensor:
        """The sorted distinct levels (float32)."""
        return torch.unique(self.table)

    def encode(self, x: Tensor) -> Tensor:
        """Index of the nearest level per element, ties to the lower index (same shape)."""
        x = check_tensor(x, "x")
        check_finite(x, "x")
        t = self.table.double()
        midpoints = (t[1:] + t[:-1]) / 2
        # right=False: x equal to a midpoint stays in the lower cell (ties to the lower index).
        codes = torch.bucketize(x.double(), midpoints, right=False)
        return codes.to(code_dtype(self.bits))

    def decode(self, codes: Tensor) -> Tensor:
        """c_q per element (same shape, float32)."""
        return self.table[check_codes(codes, self.table.numel())]


def codebook_from_levels(levels: Sequence[float] | Tensor, bits: int | None = None) -> Codebook:
    """A nearest-level `Codebook` over the given levels (sorted here; duplicates removed).

    ``bits`` defaults to ⌈log2 n⌉ (at least 1) for n distinct levels.
    """
    t = _as_1d(levels, torch.float32, "levels")
    check_nonempty(t, "levels")
    t = torch.unique(t)  # sorted ascending
    if bits is None:
        bits = max(1, math.ceil(math.log2(t.numel())))
    return Codebook(t, bits)


# --------------------------------------------------------------------------- k-means


@dataclass(frozen=True, eq=False)
class KMeansCodebook(Codebook):
    """A nearest-level codebook of 2^b levels learned by Lloyd's algorithm (1-D k-means).

    ``mse_history[t]`` is the MSE of the levels after t updates with nearest assignment,
    D(c_t) = (1/N) Σ_r min_i (r − c_{t,i})² — non-increasing in t (Lloyd 1982).
    """

    mse_history: tuple[float, ...] = field(default=(), repr=False)

    @property
    def name(self) -> str:
        return f"kmeans {self.bits}-bit"

    @property
    def n_iter(self) -> int:
        """Number of Lloyd updates performed."""
        return max(len(self.mse_history) - 1, 0)

    @classmethod
    def fit(
        cls,
        x: Tensor,
        bits: int,
        generator: torch.Generator | int | None = None,
        max_iter: int = 1000,
        tol: float = 1e-7,
        init: Init = "kmeans++",
        n_init: int | None = None,
    ) -> KMeansCodebook:
        """Learn 2^b levels minimising ||Q(x) − x||² over all elements of ``x``.

        Lloyd's algorithm alternates the two optimality conditions of Lloyd-Max quantization:
          assignment  — each value goes to its nearest level: the cells are bounded by the
                        midpoints m_i = (c_i + c_{i+1})/2;
          update      — each level becomes the mean of its cell: c_i = E[r | m_{i−1} < r ≤ m_i].
        In 1-D the cells are intervals, so with the data sorted once (O(N log N)) each iteration
        is a `searchsorted` of the 2^b − 1 midpoints plus prefix sums: O(2^b log N), and the
        cell SSE  Σ(r − c)² = Σr² − 2cΣr + n c²  comes from prefix sums of r and r².
        Stops when the relative MSE decrease is ≤ ``tol``, the cells stop changing, or after
        ``max_iter`` updates (cheap: Lloyd converges slowly in 1-D at many levels). An empty
        cell keeps its level.

        ``init``: "kmeans++" — greedy k-means++ (Arthur & Vassilvitskii 2007, as scikit-learn
        runs it): the first level uniform, then 2 + ⌊ln 2^b⌋ candidates drawn with probability
        ∝ D(r)², the squared distance to the nearest chosen level, keeping the one that lowers
        Σ D² most; seeded on a uniform sample of `SEEDING_SAMPLE` values when N is larger. Lloyd
        stops in local minima (a single run at 16 levels is often 1–5 % above the best, and can
        be 25 % off on bimodal data), so ``n_init`` seedings run side by side as one batch and
        the lowest final MSE is kept; ``n_init=None`` means min(8, max(1, 128 // 2^b)) runs,
        which bounds the seeding cost (runs × levels) where restarts matter least.
        "quantile" — level i at the (i + ½)/2^b quantile (deterministic, one run).
        ``generator`` is a torch.Generator or an int seed; None means seed 0, so fits are
        always reproducible.
        """
        x = check_tensor(x, "x")
        check_nonempty(x, "x")
        check_finite(x, "x")
        check_bits(bits, *KMEANS_BITS, "KMeansCodebook bits")
        check_bits(max_iter, 0, 1 << 30, "max_iter")
        if n_init is None:
            n_init = min(8, max(1, 128 >> bits))
        check_bits(n_init, 1, 1 << 10, "n_init")
        if not (isinstance(tol, (int, float)) and tol >= 0 and math.isfinite(tol)):
            raise ValueError(f"tol={tol!r} must be a finite number >= 0")
        if init not in ("kmeans++", "quantile"):
            raise ValueError(f"init={init!r} is unknown: expected 'kmeans++' or 'quantile'")
        gen = _as_generator(generator)

        data = _SortedData(x.detach().reshape(-1))
        r, n, k = data.r, data.r.numel(), 1 << bits
        if init == "quantile":
            at = ((torch.arange(k, dtype=torch.float64) + 0.5) * n / k).long()
            c = r[at.clamp(max=n - 1)].unsqueeze(0)
        else:
            seeds = r
            if n > SEEDING_SAMPLE:
                seeds = r[torch.randint(n, (SEEDING_SAMPLE,), generator=gen)]
            c = torch.sort(_kmeans_pp(seeds, k, n_init, gen), dim=1).values
        levels, history = data.lloyd(c, max_iter, tol)
        return cls(levels.float(), bits, tuple(history))


class _SortedData:
    """1-D data sorted once, with prefix sums of r and r², for O(2^b log N) Lloyd iterations.

    Levels come as a batch ``c`` of shape (runs, 2^b), each row sorted: the ``n_init`` runs
    iterate together, so they cost about as many tensor operations as one.
    """

    def __init__(self, x: Tensor) -> None:
        self.r = torch.sort(x.double()).values
        zero = self.r.new_zeros(1)
        self.s1 = torch.cat([zero, torch.cumsum(self.r, 0)])  # s1[j] = Σ r[:j]
        self.s2 = torch.cat([zero, torch.cumsum(self.r * self.r, 0)])

    def cells(self, c: Tensor) -> Tensor:
        """Edges e (runs, 2^b + 1): cell i is r[e_i:e_{i+1}]; a value on a midpoint goes lower."""
        inner = torch.searchsorted(self.r, (c[:, 1:] + c[:, :-1]) / 2, right=True)
        ends = inner.new_zeros(c.shape[0], 1)
        return torch.cat([ends, inner, ends + self.r.numel()], dim=1)

    def sums(self, edges: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(count, Σr, Σr²) per cell, from the prefix sums."""
        lo, hi = edges[:, :-1], edges[:, 1:]
        return (hi - lo).double(), self.s1[hi] - self.s1[lo], self.s2[hi] - self.s2[lo]

    def mse(self, c: Tensor, edges: Tensor) -> Tensor:
        cnt, sum1, sum2 = self.sums(edges)
        return (sum2 - 2 * c * sum1 + cnt * c * c).sum(dim=1).clamp(min=0) / self.r.numel()

    def lloyd(self, c: Tensor, max_iter: int, tol: float) -> tuple[Tensor, list[float]]:
        """Lloyd iterations of every run; (levels, MSE history) of the run that ends lowest."""
        edges = self.cells(c)
        history = [self.mse(c, edges)]
        active = torch.ones(c.shape[0], dtype=torch.bool)
        steps = torch.zeros(c.shape[0], dtype=torch.long)
        for _ in range(max_iter):
            cnt, sum1, _ = self.sums(edges)
            update = torch.where(cnt > 0, sum1 / cnt.clamp(min=1), c)
            c = torch.where(active.unsqueeze(1), update, c)
            new_edges = self.cells(c)
            err, prev = self.mse(c, new_edges), history[-1]
            history.append(torch.where(active, err, prev))
            steps += active.long()
            stalled = (new_edges == edges).all(dim=1)
            active &= ~stalled & (prev - err > tol * prev)
            edges = new_edges
            if not bool(active.any()):
                break
        best = int(torch.argmin(history[-1]))
        runs = torch.stack(history[: int(steps[best]) + 1], dim=1)[best]
        return c[best], runs.tolist()


def _as_generator(generator: torch.Generator | int | None) -> torch.Generator:
    if isinstance(generator, torch.Generator):
        return generator
    if generator is None:
        generator = 0
    if not isinstance(generator, int) or isinstance(generator, bool):
        raise TypeError(
            f"generator must be a torch.Generator, an int seed or None, got "
            f"{type(generator).__name__}"
        )
    return torch.Generator().manual_seed(generator)


def _kmeans_pp(r: Tensor, k: int, runs: int, gen: torch.Generator) -> Tensor:
    """Greedy k-means++ seeding of k levels on 1-D data ``r`` (float64), ``runs`` times at
    once: (runs, k). Where all values already sit on chosen levels (fewer distinct values than
    levels), D² = 0 everywhere and the draw repeats an existing level."""
    n = r.numel()
    trials = 2 + int(math.log(k))
    rows = torch.arange(runs)
    first = r[torch.randint(n, (runs,), generator=gen)]
    centers = [first]
    d2 = (r.unsqueeze(0) - first.unsqueeze(1)) ** 2  # (runs, n)
    for _ in range(1, k):
        cum = torch.cumsum(d2, dim=1)
        u = torch.rand(runs, trials, generator=gen, dtype=torch.float64) * cum[:, -1:]
        picks = r[torch.searchsorted(cum, u, right=True).clamp(max=n - 1)]  # (runs, trials)
        cand = torch.minimum(d2.unsqueeze(1), (r - picks.unsqueeze(2)) ** 2)  # (runs, trials, n)
        best = torch.argmin(cand.sum(dim=2), dim=1)
        centers.append(picks[rows, best])
        d2 = cand[rows, best]
    return torch.stack(centers, dim=1)
