"""Plain-text tables: one renderer for every table zeropoint prints (CLI, demo, benchmarks)."""

from __future__ import annotations

from typing import Any


def _cell(v: object, column: str, digits: dict[str, int]) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and column in digits:
        return f"{v:.{digits[column]}f}"
    if isinstance(v, float) and column.endswith("_db"):
        return f"{v:.2f}"
    if isinstance(v, float):
        # The exact value where it is short (127.99609375), else 7 significant digits, which
        # still tells every value here from its neighbours (2^7 − 2^−8 must not print as 128).
        return repr(v) if len(repr(v)) <= 12 else f"{v:.7g}"
    return str(v)


def format_table(rows: list[dict[str, Any]], digits: dict[str, int] | None = None) -> str:
    """Render rows as a plain-text table: a header, a rule, one line per row.

    Text columns are left-aligned, numbers right-aligned; columns are the union of the rows' keys
    in first-seen order, missing cells and None print as "-", decibels with two decimals, and
    the float columns named in ``digits`` with that many decimals.
    """
    digits = digits or {}
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    cells = [[_cell(row.get(c), c, digits) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    text = [all(isinstance(row.get(c), str) or row.get(c) is None for row in rows) for c in columns]

    def line(values: list[str]) -> str:
        parts = [v.ljust(w) if left else v.rjust(w) for v, w, left in zip(values, widths, text)]
        return "  ".join(parts).rstrip()

    out = [line(columns), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)
