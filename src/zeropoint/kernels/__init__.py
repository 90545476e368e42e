"""Compiled CPU kernels (built from C++ source by `zeropoint.kernels.build`, each with a
pure-torch fallback): weight-only Linear with packed int / table / fp8 weights."""

from zeropoint.kernels.packed import (
    PackedWeight,
    affine,
    dequantize,
    fp8,
    kernels_available,
    linear,
    table,
)

__all__ = ["PackedWeight", "affine", "dequantize", "fp8", "kernels_available", "linear", "table"]
