"""Observers: streaming statistics of the tensors a quantizer will see, and the clip range from them.

Statistics are kept apart from the choice of range (as in AIMET v2): an observer collects
mergeable statistics (min/max, histograms, moments) with ``update(batch)``; ``qparams()`` turns
them into a clipping range [α, β] with its estimator and then into (S, Z) through the one formula,
`zeropoint.qparams.qparams_from_range`. Two observers fed halves of the data and merged with
``merge(other)`` give the same result as one fed all of it.

Granularity follows the observer's `Scheme`: every batch is viewed as rows by
`zeropoint.qparams.to_slices` (one row per tensor, channel or group) and each row keeps its own
statistics. Per-channel observers accept batches whose other dimensions vary (e.g. the batch size).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import TypeVar

import torch
from torch import Tensor

from zeropoint.qparams import QParams, Scheme, from_slices, qparams_from_range, to_slices
from zeropoint.validation import check_finite, check_nonempty, check_tensor

ObserverT = TypeVar("ObserverT", bound="Observer")


class Observer(ABC):
    """Base class: row bookkeeping, validation and the range → QParams step.

    Subclasses implement ``_update_rows(rows)`` (rows: float32 (C, n)), ``_merge(other)`` and
    ``_range() -> (lo, hi)`` (float64 tensors of shape (C,)).
    """

    def __init__(self, scheme: Scheme | None = None) -> None:
        if scheme is not None and not isinstance(scheme, Scheme):
            raise TypeError(
                f"{type(self).__name__} needs a Scheme (or None), got {type(scheme).__name__}"
            )
        self.scheme = scheme if scheme is not None else Scheme()
        self.num_batches = 0
        self.num_values = 0
        self._shape: tuple[int, ...] | None = None
        self._rows = 0

    # ------------------------------------------------------------------ public API
    def update(self, x: Tensor) -> Tensor:
        """Record the statistics of ``x``; returns ``x`` unchanged (usable inside forward)."""
        check_tensor(x, f"batch given to {type(self).__name__}")
        check_nonempty(x, f"batch given to {type(self).__name__}")
        x_det = x.detach()
        check_finite(x_det, f"batch given to {type(self).__name__}")
        rows = to_slices(x_det.to(torch.float32), self.scheme)
        self._check_layout(x_det, rows.shape[0])
        self._update_rows(rows)
        self.num_batches += 1
        self.num_values += x.numel()
        return x

    def qparams(self) -> QParams:
        """The (S, Z) for the range this observer's estimator chooses."""
        if self.num_batches == 0 or self._shape is None:
            raise ValueError(
                f"{type(self).__name__} has seen no data: call update() with calibration "
                "batches before qparams() (is the calibration set empty?)"
            )
        lo, hi = self.range()
        return qparams_from_range(lo, hi, self.scheme, self._shape)

    def range(self) -> tuple[Tensor, Tensor]:
        """The chosen clipping range (α, β), shaped like the scale (scalar per tensor)."""
        if self._shape is None:
            raise ValueError(f"{type(self).__name__} has seen no data")
        lo, hi = self._range()
        return from_slices(lo, self._shape, self.scheme), from_slices(hi, self._shape, self.scheme)

    def merge(self: ObserverT, other: ObserverT) -> ObserverT:
        """Fold ``other``'s statistics into this observer (in place) and return it."""
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        if other.scheme != self.scheme:
            raise ValueError(
                f"cannot merge observers of different schemes: {other.scheme} vs {self.scheme}"
            )
        if other.num_batches == 0:
            return self
        if self.num_batches == 0:
            self._shape, self._rows = other._shape, other._rows
            self._copy_from(other)
        else:
            if other._rows != self._rows:
                raise ValueError(f"cannot merge observers of {other._rows} and {self._rows} slices")
            self._merge(other)
        self.num_batches += other.num_batches
        self.num_values += other.num_values
        return self

    def reset(self) -> None:
        """Forget everything seen so far; keep the scheme and every option (e.g. the
        percentile, the number of bins), i.e. the constructor's arguments."""
        params = inspect.signature(type(self).__init__).parameters
        options = {
            name: getattr(self, name)
            for name, p in params.items()
            if name not in ("self", "scheme") and p.kind is p.POSITIONAL_OR_KEYWORD
            and hasattr(self, name)
        }  # fmt: skip
        type(self).__init__(self, self.scheme, **options)  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.scheme}, batches={self.num_batches})"

    # ------------------------------------------------------------------ internals
    def _check_layout(self, x: Tensor, rows: int) -> None:
        if self._shape is None:
            self._shape, self._rows = tuple(x.shape), rows
            return
        if rows != self._rows:
            raise ValueError(
                f"{type(self).__name__}: batch of shape {tuple(x.shape)} gives {rows} slices under "
                f"{self.scheme}, but earlier batches gave {self._rows}"
            )
        if self.scheme.granularity == "per_group" and tuple(x.shape) != self._shape:
            raise ValueError(
                f"group-wise observer expects every batch of shape {self._shape}, got {tuple(x.shape)}"
            )

    def _copy_from(self, other: Observer) -> None:
        for key, value in vars(other).items():
            if key not in ("scheme", "num_batches", "num_values", "_shape", "_rows"):
                setattr(self, key, value.clone() if isinstance(value, Tensor) else value)

    @abstractmethod
    def _update_rows(self, rows: Tensor) -> None: ...

    @abstractmethod
    def _merge(self, other: Observer) -> None: ...

    @abstractmethod
    def _range(self) -> tuple[Tensor, Tensor]: ...


def row_minmax(rows: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row (min, max) in float64 (two reductions: torch.aminmax(dim=1) is far slower)."""
    return rows.amin(dim=1).to(torch.float64), rows.amax(dim=1).to(torch.float64)
