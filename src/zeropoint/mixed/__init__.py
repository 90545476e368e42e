"""Mixed precision: per-layer widths under a budget (`mixed_precision`, from the sensitivities
of `zeropoint.analysis`), the knapsack that chooses them, and ACIQ's analytic per-channel bit
allocation (`zeropoint.mixed.aciq`)."""

from zeropoint.mixed.aciq import aciq_allocate, aciq_bits, aciq_levels, quantize_channels
from zeropoint.mixed.search import (
    Budget,
    LayerChoice,
    MixedPrecisionResult,
    SensitivityTable,
    measure_sensitivities,
    mixed_precision,
    total_bytes,
)

__all__ = [
    "Budget",
    "LayerChoice",
    "MixedPrecisionResult",
    "SensitivityTable",
    "aciq_allocate",
    "aciq_bits",
    "aciq_levels",
    "measure_sensitivities",
    "mixed_precision",
    "quantize_channels",
    "total_bytes",
]
