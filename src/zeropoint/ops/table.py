"""THE operator table: every operation kind zeropoint quantizes, in one ordered list.

Graph instrumentation (`workflows.graph`), lowering (`lowering`), the integer program
(`engine.program`) and the ONNX exporter (`export.onnx`) all look operations up here; none keeps
a list of its own. The first entry that matches a node wins. To add an operation, write one
`OpSpec` (its matching, role, lowering, integer kernel and ONNX emission) in the module of its
family and list it here, then test it: its kernel bit-exact against an independent reference,
its export against ONNX Runtime, and a zoo network that uses it.
"""

from __future__ import annotations

from typing import Any

from torch import fx, nn

from zeropoint.ops import layers, movement, pooling, tables
from zeropoint.ops.spec import OpSpec
from zeropoint.ops.tables import clip_bounds

#: node-matching entries, in lookup order
OPS: tuple[OpSpec, ...] = (
    *layers.SPECS,
    movement.IDENTITY,
    *tables.SPECS,
    *pooling.SPECS,
    *movement.SPECS,
)
#: entries only lowering creates (never matched against a node directly)
_INTERNAL: tuple[OpSpec, ...] = (tables.CLIP_TABLE, movement.RELU_CODES)

_BY_KIND: dict[str, OpSpec] = {s.kind: s for s in (*OPS, *_INTERNAL)}


def find_op(node: fx.Node, module: nn.Module | None) -> OpSpec | None:
    """The table entry describing ``node``, or None (then it runs in float everywhere)."""
    for spec in OPS:
        if spec.matches(node, module):
            return spec
    return None


def spec_for(kind: str) -> OpSpec:
    """The entry of an operation kind (as stored in a `QOp`)."""
    try:
        return _BY_KIND[kind]
    except KeyError:
        raise ValueError(f"operation kind {kind!r} is not in the operator table") from None


def table_rows() -> list[dict[str, Any]]:
    """One row per entry: kind, role, what it matches — for docs and reports."""
    rows = []
    for s in OPS:
        names = [t.__name__ for t in s.modules]
        names += [getattr(f, "__name__", str(f)) for f in s.functions]
        names += [f".{m}()" for m in s.methods]
        rows.append({"kind": s.kind, "role": s.role, "matches": ", ".join(names), "what": s.doc})
    return rows


__all__ = ["OPS", "clip_bounds", "find_op", "spec_for", "table_rows"]
