"""An `IntegerProgram`'s operations as safetensors + JSON (no pickle): QParams and attributes as
plain values, every tensor attribute (weight and bias codes, tables) in the safetensors file."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from zeropoint.lowering import QOp
from zeropoint.qparams import QParams, Scheme


def qparams_json(qp: QParams | None) -> dict[str, Any] | None:
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


def qparams_from_json(d: dict[str, Any] | None) -> QParams | None:
    if d is None:
        return None
    shape = tuple(d["shape"])
    return QParams(
        torch.tensor(d["scale"], dtype=torch.float32).reshape(shape),
        torch.tensor(d["zero_point"], dtype=torch.int32).reshape(shape),
        Scheme(**d["scheme"]),
        d["axis"],
    )


def op_to_json(op: QOp, index: int, tensors: dict[str, Tensor]) -> dict[str, Any]:
    """One operation as JSON; its tensor attributes go into ``tensors`` (keys "i.name[.j]")."""
    attrs: dict[str, Any] = {}
    for key, value in op.attrs.items():
        if isinstance(value, Tensor):
            tensors[f"{index}.{key}"] = value.contiguous()
            attrs[key] = {"tensor": f"{index}.{key}"}
        elif isinstance(value, list) and value and all(isinstance(v, Tensor) for v in value):
            for j, v in enumerate(value):
                tensors[f"{index}.{key}.{j}"] = v.contiguous()
            attrs[key] = {"tensors": [f"{index}.{key}.{j}" for j in range(len(value))]}
        else:
            attrs[key] = value
    return {
        "kind": op.kind,
        "inputs": op.inputs,
        "output": op.output,
        "out_qparams": qparams_json(op.out_qparams),
        "clip": None if op.clip is None else [float(op.clip[0]), float(op.clip[1])],
        "where": op.where,
        "shape": list(op.shape),
        "attrs": attrs,
    }


def op_from_json(e: dict[str, Any], tensors: dict[str, Tensor]) -> QOp:
    """The inverse of `op_to_json`."""
    attrs: dict[str, Any] = {}
    for key, value in e["attrs"].items():
        if isinstance(value, dict) and "tensor" in value:
            attrs[key] = tensors[value["tensor"]]
        elif isinstance(value, dict) and "tensors" in value:
            attrs[key] = [tensors[k] for k in value["tensors"]]
        else:
            attrs[key] = value
    clip = e.get("clip")
    return QOp(
        e["kind"],
        list(e["inputs"]),
        e["output"],
        qparams_from_json(e["out_qparams"]),
        None if clip is None else (float(clip[0]), float(clip[1])),
        attrs,
        e.get("where", ""),
        tuple(e["shape"]),
    )
