"""Observers by name, and `calibrate`: one call from a tensor to its QParams."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from zeropoint.observers.aciq import ACIQ
from zeropoint.observers.base import Observer
from zeropoint.observers.histogram import MSE, Entropy, Percentile
from zeropoint.observers.minmax import MeanMinMax, MinMax, MovingAverageMinMax
from zeropoint.qparams import QParams, Scheme

OBSERVERS: dict[str, type[Observer]] = {
    "minmax": MinMax,
    "moving_average": MovingAverageMinMax,
    "mean_minmax": MeanMinMax,
    "percentile": Percentile,
    "entropy": Entropy,
    "mse": MSE,
    "aciq": ACIQ,
}

#: methods whose estimator assumes uniform integer levels (KL over 2^b bins, ACIQ's noise term)
INTEGER_ONLY = ("entropy", "aciq")


def make_observer(method: str, scheme: Scheme | None = None, **options: Any) -> Observer:
    """A fresh observer for ``method`` (one of `OBSERVERS`) with its options."""
    try:
        cls = OBSERVERS[method]
    except KeyError:
        raise ValueError(
            f"unknown calibration method {method!r}: expected one of {sorted(OBSERVERS)}"
        ) from None
    if isinstance(scheme, Scheme) and scheme.float_format is not None and method in INTEGER_ONLY:
        raise ValueError(
            f"calibration method {method!r} models the error of a uniform integer grid; "
            f"{scheme} is a float format: use 'minmax' (amax scaling), 'moving_average', "
            "'percentile' or 'mse'"
        )
    return cls(scheme, **options)


def calibrate(
    x: Tensor, scheme: Scheme | None = None, method: str = "minmax", **options: Any
) -> QParams:
    """QParams for ``x`` under ``scheme`` with the clip range chosen by ``method``."""
    observer = make_observer(method, scheme, **options)
    observer.update(x)
    return observer.qparams()


from zeropoint.ptq import omse_observer as _omse  # noqa: E402,F401  (registers "omse")
