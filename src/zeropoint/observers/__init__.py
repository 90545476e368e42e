"""Calibration observers: streaming, mergeable statistics and the clip range chosen from them."""

from zeropoint.observers.aciq import ACIQ, gauss_clip_ratio, laplace_clip_ratio
from zeropoint.observers.base import Observer
from zeropoint.observers.histogram import MSE, Entropy, Histogram, HistogramObserver, Percentile
from zeropoint.observers.minmax import MeanMinMax, MinMax, MovingAverageMinMax
from zeropoint.observers.registry import OBSERVERS, calibrate, make_observer

__all__ = [
    "ACIQ",
    "MSE",
    "OBSERVERS",
    "Entropy",
    "Histogram",
    "HistogramObserver",
    "MeanMinMax",
    "MinMax",
    "MovingAverageMinMax",
    "Observer",
    "Percentile",
    "calibrate",
    "gauss_clip_ratio",
    "laplace_clip_ratio",
    "make_observer",
]
