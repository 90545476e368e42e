"""Number formats: integers of any width, IEEE-754 and low-precision floats, fixed point."""

from zeropoint.formats.fixed import FixedPoint
from zeropoint.formats.floating import (
    BF16,
    FLOAT_FORMATS,
    FP4_E2M1,
    FP8_E4M3,
    FP8_E4M3FN,
    FP8_E5M2,
    FP16,
    FP32,
    BitFields,
    FloatFormat,
)
from zeropoint.formats.ieee754 import Fields, ieee754_fields
from zeropoint.formats.integer import (
    BINARY,
    INT2,
    INT4,
    INT8,
    INT16,
    INT32,
    TERNARY,
    UINT2,
    UINT4,
    UINT8,
    UINT16,
    IntFormat,
)
from zeropoint.formats.table import describe_formats, format_table

__all__ = [
    "BF16",
    "BINARY",
    "FLOAT_FORMATS",
    "FP4_E2M1",
    "FP8_E4M3",
    "FP8_E4M3FN",
    "FP8_E5M2",
    "FP16",
    "FP32",
    "INT2",
    "INT4",
    "INT8",
    "INT16",
    "INT32",
    "TERNARY",
    "UINT2",
    "UINT4",
    "UINT8",
    "UINT16",
    "BitFields",
    "Fields",
    "FixedPoint",
    "FloatFormat",
    "IntFormat",
    "describe_formats",
    "format_table",
    "ieee754_fields",
]
