"""An `IntegerProgram`'s operations as JSON (the non-tensor half of ``program.save``): QParams
and layer attributes as plain values, so a saved program needs no pickle."""

from __future__ import annotations

from typing import Any

import torch

from zeropoint.lowering import QOp
from zeropoint.qparams import QParams, Scheme


def _qp_json(qp: QParams | None) -> dict[str, Any] | None:
    if qp is None:
        return None
    return {
        "scheme": {
            k: getattr(qp.scheme, k)
            for k in ("bits", "symmetric", "narrow", "signed", "axis", "group_size", "rounding")
        },
        "axis": qp.axis,
        "shape": list(qp.scale.shape),
        "scale": qp.scale.flatten().tolist(),
        "zero_point": qp.zero_point.flatten().tolist(),
    }


def _qp_from(d: dict[str, Any] | None) -> QParams | None:
    if d is None:
        return None
    shape = tuple(d["shape"])
    return QParams(
        torch.tensor(d["scale"], dtype=torch.float32).reshape(shape),
        torch.tensor(d["zero_point"], dtype=torch.int32).reshape(shape),
        Scheme(**d["scheme"]),
        d["axis"],
    )


_LAYER_ATTRS = ("stride", "padding", "dilation", "groups", "output_padding")


def op_to_json(op: QOp) -> dict[str, Any]:
    """One operation as JSON: kind, edges, grids, activation, shape and its attributes."""
    attrs: dict[str, Any] = {}
    for k, v in op.attrs.items():
        if k == "weight_qparams":
            attrs[k] = _qp_json(v)
        elif isinstance(v, int | float | bool | str | type(None)):
            attrs[k] = v
        elif isinstance(v, tuple | list):
            attrs[k] = list(v)
    module: Any = op.module
    if op.kind in ("conv2d", "conv_transpose2d") and module is not None:
        for k in _LAYER_ATTRS:
            if hasattr(module, k):
                v = getattr(module, k)
                attrs[k] = list(v) if isinstance(v, tuple) else v
    return {
        "kind": op.kind,
        "inputs": op.inputs,
        "output": op.output,
        "out_qparams": _qp_json(op.out_qparams),
        "act": op.act,
        "shape": list(op.shape),
        "attrs": attrs,
    }


def op_from_json(e: dict[str, Any]) -> QOp:
    """The inverse of `op_to_json` (integer weights are attached by the caller)."""
    attrs = dict(e["attrs"])
    if "weight_qparams" in attrs:
        attrs["weight_qparams"] = _qp_from(attrs["weight_qparams"])
    for k in ("kernel_size", "stride", "padding", "dilation", "output_padding", "output_size"):
        if isinstance(attrs.get(k), list):
            attrs[k] = tuple(attrs[k])
    return QOp(
        e["kind"],
        e["inputs"],
        e["output"],
        _qp_from(e["out_qparams"]),
        e["act"],
        attrs,
        shape=tuple(e["shape"]),
    )
