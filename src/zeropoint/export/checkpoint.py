"""Checkpoints without pickle: safetensors for the tensors, JSON for every quantizer's encodings.

A checkpoint is a directory:

    model.safetensors   integer weight codes (int8; int4 and below packed two per byte), their
                        scales and zero points, and every other tensor of the model (biases,
                        unquantized layers) as float
    encodings.json      format version, workflow, the QuantConfig, and per quantizer its scheme,
                        axis, scales and zero points; which tensors are integer codes

`zp.load(path, model)` rebuilds the quantized model from the float architecture (code, as with
any state dict): it re-applies the saved config to ``model`` and loads the weights and encodings,
refusing files that are missing, malformed or do not fit the model with a clear error. Both files
are written atomically.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from zeropoint.functional import dequantize_int, quantize_int
from zeropoint.nn.dynamic import DynamicQuantLinear
from zeropoint.nn.modules import QuantMixin
from zeropoint.nn.quantizers import FakeQuant
from zeropoint.nn.weight_only import WeightOnlyEmbedding, WeightOnlyLinear
from zeropoint.qparams import QParams, Scheme
from zeropoint.qtensor import QTensor
from zeropoint.report.files import atomic_path, atomic_write_text, check_writable_dir
from zeropoint.workflows.config import LayerRule, QuantConfig
from zeropoint.workflows.graph import state_of

FORMAT = "zeropoint-checkpoint"
VERSION = 1
WEIGHTS = "model.safetensors"
ENCODINGS = "encodings.json"


def _scheme_json(s: Scheme | None) -> dict[str, Any] | None:
    return None if s is None else asdict(s)


def _scheme_from(d: dict[str, Any] | None) -> Scheme | None:
    return None if d is None else Scheme(**d)


def _type_name(t: type) -> str:
    return f"{t.__module__}.{t.__qualname__}"


def _resolve_type(name: str) -> type[nn.Module]:
    module, _, qualname = name.rpartition(".")
    if not module.startswith("torch.nn") and not module.startswith("zeropoint"):
        raise ValueError(f"checkpoint names layer type {name!r}, which is not a torch.nn type")
    import importlib

    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[no-any-return]


def config_to_json(c: QuantConfig) -> dict[str, Any]:
    return {
        "weight": _scheme_json(c.weight),
        "activation": _scheme_json(c.activation),
        "weight_observer": c.weight_observer,
        "activation_observer": c.activation_observer,
        "activation_observer_options": [list(kv) for kv in c.activation_observer_options],
        "module_types": [_type_name(t) for t in c.module_types],
        "rules": [
            {
                "name": r.name,
                "types": [_type_name(t) for t in r.types],
                "weight": _scheme_json(r.weight),
                "activation": _scheme_json(r.activation),
                "skip": r.skip,
            }
            for r in c.rules
        ],
        "skip": list(c.skip),
        "dynamic": c.dynamic,
        "per_token": c.per_token,
        "first_last_bits": c.first_last_bits,
        "fold_bn": c.fold_bn,
        "learnable": c.learnable,
    }


def config_from_json(d: dict[str, Any]) -> QuantConfig:
    return QuantConfig(
        weight=_scheme_from(d["weight"]),
        activation=_scheme_from(d["activation"]),
        weight_observer=d["weight_observer"],
        activation_observer=d["activation_observer"],
        activation_observer_options=tuple(tuple(kv) for kv in d["activation_observer_options"]),
        module_types=tuple(_resolve_type(t) for t in d["module_types"]),
        rules=tuple(
            LayerRule(
                name=r["name"],
                types=tuple(_resolve_type(t) for t in r["types"]),
                weight=_scheme_from(r["weight"]),
                activation=_scheme_from(r["activation"]),
                skip=r["skip"],
            )
            for r in d["rules"]
        ),
        skip=tuple(d["skip"]),
        dynamic=d["dynamic"],
        per_token=d["per_token"],
        first_last_bits=d["first_last_bits"],
        fold_bn=d["fold_bn"],
        learnable=d.get("learnable"),
    )


#: encodings with more scales than this keep them in the safetensors file (JSON names them)
INLINE_SCALES = 64
_SIDE_TENSORS = (".codes", ".qscale", ".qzero")


def _encoding(
    qp: QParams, tensors: dict[str, Tensor] | None = None, key: str = ""
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "scheme": asdict(qp.scheme),
        "axis": qp.axis,
        "shape": list(qp.scale.shape),
    }
    if tensors is not None and qp.scale.numel() > INLINE_SCALES:
        tensors[f"{key}.qscale"] = qp.scale.contiguous()
        tensors[f"{key}.qzero"] = qp.zero_point.contiguous()
        doc["scale"], doc["zero_point"] = {"tensor": f"{key}.qscale"}, {"tensor": f"{key}.qzero"}
    else:
        doc["scale"], doc["zero_point"] = (
            qp.scale.flatten().tolist(),
            qp.zero_point.flatten().tolist(),
        )
    return doc


def _qparams_from(
    e: dict[str, Any], what: str, tensors: dict[str, Tensor] | None = None
) -> QParams:
    def values(field: str, dtype: torch.dtype) -> Tensor:
        v = e[field]
        if isinstance(v, dict):
            if tensors is None or v.get("tensor") not in tensors:
                raise ValueError(f"checkpoint lacks the tensor {v.get('tensor')!r}")
            return tensors[v["tensor"]].to(dtype)
        return torch.tensor(v, dtype=dtype)

    try:
        shape = tuple(e["shape"])
        scale = values("scale", torch.float32).reshape(shape)
        zero = values("zero_point", torch.int32).reshape(shape)
        return QParams(scale, zero, Scheme(**e["scheme"]), e["axis"])
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:
        raise ValueError(f"checkpoint encoding of {what} is malformed: {exc}") from exc


def save(model: nn.Module, path: str | Path) -> Path:
    """Write a converted model to the directory ``path`` (see the module docstring)."""
    state = state_of(model)
    directory = check_writable_dir(Path(path))
    tensors: dict[str, Tensor] = {}
    encodings: dict[str, Any] = {}
    quantized: dict[str, dict[str, Any]] = {}
    skip_keys: set[str] = set()
    for name, module in model.named_modules():
        if isinstance(module, DynamicQuantLinear | WeightOnlyLinear | WeightOnlyEmbedding):
            key = f"{name}.weight"
            data = (
                module.weight_codes
                if isinstance(module, DynamicQuantLinear)
                else module.weight_data
            )
            packed = not isinstance(module, DynamicQuantLinear) and module.packed
            tensors[f"{key}.codes"] = data.contiguous()
            shape = (
                [module.num_embeddings, module.embedding_dim]
                if isinstance(module, WeightOnlyEmbedding)
                else [module.out_features, module.in_features]
            )
            quantized[key] = {
                "encoding": _encoding(module.weight_qparams, tensors, key),
                "packed": packed,
                "view_shape": shape,
                "shape": shape,
            }
            if isinstance(module, DynamicQuantLinear):
                quantized[key]["per_token"] = module.per_token
            skip_keys.update({key, f"{name}.weight_codes", f"{name}.weight_data"})
        elif isinstance(module, QuantMixin) and module.weight_quant is not None:
            qp = module.weight_qparams()
            qt = QTensor.from_int(quantize_int(module._weight_view().detach(), qp), qp)
            key = f"{name}.weight"
            tensors[f"{key}.codes"] = qt.data.contiguous()
            quantized[key] = {
                "encoding": _encoding(qp, tensors, key),
                "packed": qt.packed,
                "view_shape": list(qt.shape),
                "shape": list(module.float_weight.shape),
            }
            skip_keys.add(key)
        elif isinstance(module, FakeQuant) and module.frozen:
            encodings[name] = _encoding(module.qparams())
    for key, value in model.state_dict().items():
        if (
            key in skip_keys
            or key.endswith(".weight_quant.scale")
            or key.endswith(".weight_quant.zero_point")
        ):
            continue
        if value.is_floating_point() or value.dtype in (torch.int32, torch.int64, torch.bool):
            tensors[key] = value.detach().contiguous()
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "model": type(model).__name__,
        "workflow": state.workflow,
        "capture": state.capture,
        "config": config_to_json(state.config),
        "weights": quantized,
        "activations": encodings,
        "reduce_range": any(
            getattr(m, "reduce_range", False)
            for m in model.modules()
            if isinstance(m, DynamicQuantLinear)
        ),
    }
    with atomic_path(directory / WEIGHTS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "version": str(VERSION)})
    atomic_write_text(directory / ENCODINGS, json.dumps(doc, indent=1))
    return directory


def _read(directory: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    if not directory.is_dir():
        raise FileNotFoundError(f"no checkpoint directory at {directory}")
    enc_path, w_path = directory / ENCODINGS, directory / WEIGHTS
    for p in (enc_path, w_path):
        if not p.is_file():
            raise FileNotFoundError(f"checkpoint {directory} lacks {p.name}")
    try:
        doc = json.loads(enc_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{enc_path} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{enc_path} is not a zeropoint checkpoint (format {doc.get('format')!r})")
    if doc.get("version") != VERSION:
        raise ValueError(
            f"{enc_path} has version {doc.get('version')}; this zeropoint reads {VERSION}"
        )
    for key in ("config", "weights", "activations", "workflow"):
        if key not in doc:
            raise ValueError(f"{enc_path} lacks the {key!r} section")
    try:
        tensors = load_file(str(w_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{w_path} is not a readable safetensors file: {exc}") from exc
    return doc, tensors


def load(path: str | Path, model: nn.Module) -> nn.Module:
    """Rebuild a saved quantized model from its float architecture ``model`` (not modified)."""
    from zeropoint.workflows.static import convert, prepare

    doc, tensors = _read(Path(path))
    config = config_from_json(doc["config"])
    if doc["workflow"] in ("dynamic", "weight_only"):
        return _load_module_swapped(doc, tensors, model, config)
    prepared = prepare(model.eval(), config)
    for name, module in prepared.named_modules():
        if isinstance(module, FakeQuant) and name in doc["activations"]:
            module.set_qparams(_qparams_from(doc["activations"][name], name))
            module.mode = "quantize"
    missing = [
        n for n, m in prepared.named_modules() if isinstance(m, FakeQuant) and m.mode == "observe"
    ]
    if missing:
        raise ValueError(f"checkpoint has no encodings for activation quantizers {missing[:5]}")
    for key, info in doc["weights"].items():
        layer_name = key.rsplit(".", 1)[0]
        layer = prepared.get_submodule(layer_name)
        if not isinstance(layer, QuantMixin) or layer.weight_quant is None:
            raise ValueError(
                f"checkpoint quantizes {key}, but the model's {layer_name} is not a quantized layer"
            )
        qp = _qparams_from(info["encoding"], key, tensors)
        codes = tensors.get(f"{key}.codes")
        if codes is None:
            raise ValueError(f"checkpoint lacks the codes of {key}")
        view_shape = torch.Size(info["view_shape"])
        qt = QTensor(codes, qp, view_shape, bool(info["packed"]))
        try:
            weight = dequantize_int(qt.int_repr(), qp).reshape(info["shape"])
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"codes of {key} do not fit their encoding: {exc}") from exc
        if tuple(weight.shape) != tuple(layer.float_weight.shape):
            raise ValueError(
                f"{key} has shape {tuple(weight.shape)} in the checkpoint but "
                f"{tuple(layer.float_weight.shape)} in the model"
            )
        with torch.no_grad():
            layer.float_weight.copy_(weight)
        assert isinstance(layer.weight_quant, FakeQuant)
        layer.weight_quant.set_qparams(qp)
        layer.weight_quant.mode = "quantize"
    rest = {k: v for k, v in tensors.items() if not k.endswith(_SIDE_TENSORS)}
    result = prepared.load_state_dict(rest, strict=False)
    unexpected = [k for k in result.unexpected_keys]
    if unexpected:
        raise ValueError(f"checkpoint tensors the model does not have: {unexpected[:5]}")
    convert(prepared)
    return prepared


def _codes_for(tensors: dict[str, Tensor], key: str) -> Tensor:
    codes = tensors.get(f"{key}.codes")
    if codes is None:
        raise ValueError(f"checkpoint lacks the codes of {key}")
    return codes


def _load_module_swapped(
    doc: dict[str, Any], tensors: dict[str, Tensor], model: nn.Module, config: QuantConfig
) -> nn.Module:
    """Dynamic / weight-only checkpoints: swap the layers again, then load codes and tensors."""
    from zeropoint.workflows.dynamic import quantize_dynamic

    swapped = quantize_dynamic(model, config, reduce_range=bool(doc.get("reduce_range", False)))
    for key, info in doc["weights"].items():
        layer = swapped.get_submodule(key.rsplit(".", 1)[0])
        qp = _qparams_from(info["encoding"], key, tensors)
        codes = _codes_for(tensors, key)
        try:
            if isinstance(layer, DynamicQuantLinear):
                layer.per_token = bool(info.get("per_token", True))
                layer.set_codes(codes, qp)
            elif isinstance(layer, WeightOnlyLinear | WeightOnlyEmbedding):
                layer.set_codes(codes, qp, bool(info["packed"]))
            else:
                raise ValueError(f"the model's {key} is not a dynamic or weight-only layer")
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"checkpoint codes of {key} do not fit the model: {exc}") from exc
    rest = {k: v for k, v in tensors.items() if not k.endswith(_SIDE_TENSORS)}
    result = swapped.load_state_dict(rest, strict=False)
    if result.unexpected_keys:
        raise ValueError(
            f"checkpoint tensors the model does not have: {result.unexpected_keys[:5]}"
        )
    return swapped
