"""Reports: plain-text tables, plots and HTML summaries of quantization results."""

from zeropoint.report.tables import format_table

__all__ = ["format_table"]
