"""Analysis: how far quantized tensors are from the originals (`errors`), and why a quantized
model lost accuracy, unit by unit (`analyze`: statistics, exact and fast sensitivities, the
three executions compared)."""

from zeropoint.analysis.errors import (
    ErrorReport,
    SweepRow,
    UniformQuantizer,
    cosine,
    error_report,
    max_abs_error,
    mse,
    report,
    sqnr_db,
    sweep,
)
from zeropoint.analysis.metrics import METRICS, Metric, spearman
from zeropoint.analysis.model import LayerAnalysis, ModelAnalysis, analyze

__all__ = [
    "METRICS",
    "ErrorReport",
    "LayerAnalysis",
    "Metric",
    "ModelAnalysis",
    "SweepRow",
    "UniformQuantizer",
    "analyze",
    "cosine",
    "error_report",
    "max_abs_error",
    "mse",
    "report",
    "spearman",
    "sqnr_db",
    "sweep",
]
