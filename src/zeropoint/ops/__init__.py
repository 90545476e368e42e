"""The operator table (`zeropoint.ops.table.OPS`): one entry per operation kind, read by graph
instrumentation, lowering, the integer engine and the ONNX exporter."""

from zeropoint.ops.spec import OpSpec
from zeropoint.ops.table import OPS, find_op, spec_for, table_rows

__all__ = ["OPS", "OpSpec", "find_op", "spec_for", "table_rows"]
