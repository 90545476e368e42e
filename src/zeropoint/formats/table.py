"""One table of every number format: bits, range, smallest values, resolution, dynamic range.

Columns (None where a column does not apply):
    min, max        the most negative and the largest value
    min_normal      floats: 2^emin; integers and fixed point have no normal/subnormal split
    min_subnormal   floats: 2^(emin − m), the smallest positive value
    resolution      integers: 1; fixed point: 2^−n (absolute steps); floats: eps = 2^−m (the
                    relative step, the gap after 1.0)
    dynamic_range_db  floats: 20·log10(max / min_subnormal); integers and fixed point:
                    20·log10(q_max − q_min), as IntFormat.dynamic_range_db
"""

from __future__ import annotations

from typing import Any

from zeropoint.formats.fixed import FixedPoint
from zeropoint.formats.floating import BF16, FP4_E2M1, FP8_E4M3, FP8_E5M2, FP16, FP32, FloatFormat
from zeropoint.formats.integer import (
    BINARY,
    INT2,
    INT4,
    INT8,
    INT16,
    TERNARY,
    UINT4,
    UINT8,
    IntFormat,
)
from zeropoint.report.tables import format_table

__all__ = ["COLUMNS", "describe_formats", "format_table"]

COLUMNS: tuple[str, ...] = (
    "name",
    "bits",
    "kind",
    "min",
    "max",
    "min_normal",
    "min_subnormal",
    "resolution",
    "dynamic_range_db",
)


def _int_row(name: str, f: IntFormat, narrow: bool = False) -> dict[str, Any]:
    lo, hi = f.qrange(narrow)
    kind = "int" if f.signed else "uint"
    return dict(
        zip(COLUMNS, (name, f.bits, kind, lo, hi, None, None, 1, f.dynamic_range_db(narrow)))
    )


def _float_row(f: FloatFormat) -> dict[str, Any]:
    values = (f.min, f.max, f.min_normal, f.min_subnormal, f.eps, f.dynamic_range_db)
    return dict(zip(COLUMNS, (f.name, f.bits, "float", *values)))


def _fixed_row(f: FixedPoint) -> dict[str, Any]:
    values = (f.min, f.max, None, None, f.resolution, f.dynamic_range_db)
    return dict(zip(COLUMNS, (f.name, f.total_bits, "fixed", *values)))


def describe_formats() -> list[dict[str, Any]]:
    """One row (a dict keyed by COLUMNS) per format: integers, floats, fixed point.

    binary is {0, 1} (1-bit unsigned); ternary is {−1, 0, +1} (2-bit signed, narrow range).
    """
    ints = [(f.name, f, False) for f in (INT2, INT4, INT8, INT16, UINT4, UINT8)]
    ints += [("binary", BINARY, False), ("ternary", TERNARY, True)]
    rows = [_int_row(name, f, narrow) for name, f, narrow in ints]
    rows += [_float_row(f) for f in (FP32, FP16, BF16, FP8_E4M3, FP8_E5M2, FP4_E2M1)]
    fixed = (FixedPoint(7, 8, signed=True), FixedPoint(3, 3), FixedPoint(0, 15, signed=True))
    rows += [_fixed_row(f) for f in fixed]
    return rows
