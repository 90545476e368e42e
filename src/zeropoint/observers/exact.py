"""Exact sums of floats, independent of the order and grouping of the additions.

Floating-point addition is not associative: Σ over batches a, b, c accumulated as (a + b) + c
and as a + (b + c) may differ in the last bit, so a running float sum depends on how the data was
split (into batches, shards, processes). `ExactSum` keeps the exact value instead, as an integer
multiple of the smallest float64 subnormal 2^−1074 (a "superaccumulator", Kulisch & Miranker
1986), split into signed limbs of 30 bits held in int64:

    value = Σ_k limb_k · 2^(30k − 1074),   k = 0 … 71

Every finite float64 x = M · 2^(e − 53) (``frexp``: |M| < 2^53 an integer) is such a multiple, so
it is added without rounding: M · 2^p (p = e − 53 + 1074) is cut into the three limbs it
overlaps. Two accumulators add limb by limb (``merge``, or an all-reduce SUM across processes).
The stored integer is then a function of the multiset of values added and nothing else; after
carry propagation into the canonical form (every limb in [0, 2^30) except the signed top one)
its limbs are too, and so is the float64 that ``value()`` rounds it to.

Non-finite terms (an overflowed float32 sum) are kept apart and added in float (±inf and NaN
are absorbing, so their result does not depend on order either).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

LIMB_BITS = 30
LIMBS = 72  # 30·72 = 2160 bits: 2^−1074 … 2^1024 (the float64 range) plus 62 bits of carries
LOW = -1074  # the value of limb 0's unit: the smallest float64 subnormal
_MASK = (1 << LIMB_BITS) - 1
#: Additions between carry propagations: each adds < 2^30 per limb, far from int64's 2^63.
_PENDING_LIMIT = 1 << 20


class ExactSum:
    """One exact sum per row: ``add(values)`` with values of shape (rows,)."""

    def __init__(self, rows: int) -> None:
        self.limbs = torch.zeros(rows, LIMBS, dtype=torch.int64)
        self.special = torch.zeros(rows, dtype=torch.float64)  # ±inf / NaN terms
        self._pending = 0

    @property
    def rows(self) -> int:
        return self.limbs.shape[0]

    def add(self, values: Tensor) -> None:
        """Add ``values[r]`` to row r, exactly. (In numpy: a few dozen integer operations on
        vectors of ``rows`` elements, where torch's per-call overhead would dominate.)"""
        x = values.detach().to(torch.float64).reshape(-1).numpy(force=True)
        if x.shape[0] != self.rows:
            raise ValueError(f"expected {self.rows} values, got {x.shape[0]}")
        finite = np.isfinite(x)
        if not finite.all():
            self.special += torch.from_numpy(np.where(finite, 0.0, x))
            x = np.where(finite, x, 0.0)
        mantissa, exponent = np.frexp(x)
        m = np.ldexp(mantissa, 53).astype(np.int64)  # exact: |M| < 2^53
        p = exponent.astype(np.int64) - 53 - LOW
        # subnormals (p < 0): the low bits of M are zero, so shifting them out is exact
        m = np.right_shift(m, np.minimum(np.maximum(-p, 0), 63))
        p = np.maximum(p, 0)
        q, s = np.divmod(p, LIMB_BITS)
        low = np.left_shift(m & (np.left_shift(1, LIMB_BITS - s) - 1), s)
        rest = np.right_shift(m, LIMB_BITS - s)  # M·2^s = rest·2^30 + low
        limbs = self.limbs.numpy()  # shares memory with the tensor
        rows = np.arange(self.rows)
        limbs[rows, q] += low  # one limb per row in each statement: no repeated index
        limbs[rows, q + 1] += rest & _MASK
        limbs[rows, q + 2] += np.right_shift(rest, LIMB_BITS)
        self._pending += 1
        if self._pending >= _PENDING_LIMIT:
            self.normalize()

    def merge(self, other: ExactSum) -> None:
        """Add ``other``'s sums into this one (exact)."""
        if other.rows != self.rows:
            raise ValueError(f"cannot merge exact sums of {other.rows} and {self.rows} rows")
        self.limbs += other.limbs
        self.special += other.special
        self._pending += max(other._pending, 1)
        if self._pending >= _PENDING_LIMIT:
            self.normalize()

    def normalize(self) -> None:
        """Propagate carries into the canonical form: limbs 0 … 70 in [0, 2^30), the top limb
        signed (a negative sum borrows from it, as in two's complement)."""
        limbs = self.limbs.numpy()
        while True:
            carry = np.right_shift(limbs[:, :-1], LIMB_BITS)  # floor: the sign moves upwards
            if not carry.any():
                break
            limbs[:, :-1] -= np.left_shift(carry, LIMB_BITS)
            limbs[:, 1:] += carry
        self._pending = 0

    def value(self) -> Tensor:
        """The sums rounded to float64 (within an ulp; computed from the canonical form, so the
        same exact value always gives the same bits)."""
        self.normalize()
        limbs = self.limbs.numpy()
        negative = limbs[:, -1] < 0  # canonical: the sign is the top limb's
        magnitude = ExactSum(self.rows)
        magnitude.limbs = torch.from_numpy(np.where(negative[:, None], -limbs, limbs))
        magnitude.normalize()  # every limb in [0, 2^30): no cancellation below
        mag = magnitude.limbs.numpy()
        total = np.zeros(self.rows, dtype=np.float64)
        with np.errstate(over="ignore"):  # beyond float64's range the sum is ±inf
            for k in np.flatnonzero(mag.any(axis=0))[::-1]:  # most significant first
                total = total + np.ldexp(mag[:, k].astype(np.float64), LIMB_BITS * k + LOW)
        total = np.where(negative, -total, total)
        return torch.from_numpy(total) + self.special

    def clone(self) -> ExactSum:
        new = ExactSum(self.rows)
        new.limbs = self.limbs.clone()
        new.special = self.special.clone()
        new._pending = self._pending
        return new
