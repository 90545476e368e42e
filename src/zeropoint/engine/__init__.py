"""Integer-only inference: fixed-point requantization, int8 kernels, lowering to a program."""

from zeropoint.engine.fixedpoint import (
    multiplier_error_table,
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    quantize_multipliers,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
)
from zeropoint.engine.program import IntegerProgram, to_integer
from zeropoint.engine.requantize import Requantizer

__all__ = [
    "IntegerProgram",
    "Requantizer",
    "multiplier_error_table",
    "multiply_by_quantized_multiplier",
    "quantize_multiplier",
    "quantize_multipliers",
    "rounding_divide_by_pot",
    "saturating_rounding_doubling_high_mul",
    "to_integer",
]
