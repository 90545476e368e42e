"""Checkpoints without pickle: safetensors for the tensors, JSON for every quantizer's encodings,
written as one atomic, verified unit.

    zp.save(model_q, "ckpt/")                  # a model returned by a zeropoint workflow
    model_q = zp.load("ckpt/", ModelClass())   # rebuilt from the float architecture

A checkpoint is a directory (layout and write protocol: `zeropoint.export.checkpoint_store`)::

    encodings.json               format version, workflow, the QuantConfig; per quantized weight
                                 and per frozen quantizer its scheme, axis, scales and zero points;
                                 every tensor's dtype, shape and SHA-256; SHA-256 digests of the
                                 document's own entries
    model-<16 hex>.safetensors   integer weight codes (int8; 4 bits and below packed), long
                                 scale lists, and every other tensor of ``model.state_dict()``
                                 (biases, unquantized layers, buffers) as it is

A save is all-or-nothing: killed at any instant, or failing on a full disk, it leaves the
directory holding the complete previous checkpoint (if there was one) or the complete new one —
never a mix — and the next successful save removes whatever a killed one left behind. Saving
into a directory that holds a version 1 checkpoint replaces it the same way.

`load(path, model)` rebuilds the quantized model from the float architecture ``model`` (code,
as with any state dict; ``model`` itself is not modified): it re-applies the saved config to a
copy and sets the weights and encodings. Loading is strict. It refuses, with an error naming the
key or field: a checkpoint that is missing, incomplete or of another format or version; a
document field of the wrong type or value; a document entry or tensor that changed after saving
(SHA-256); a weight entry, quantizer encoding or tensor that the template lacks, or that the
checkpoint lacks; a tensor of another shape or dtype; codes outside their scheme's range.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from zeropoint.export.checkpoint_format import (
    FORMAT,
    VERSION,
    Document,
    QuantizerEntry,
    WeightEntry,
    decode_qparams,
    encode_qparams,
    referenced_tensors,
)
from zeropoint.export.checkpoint_store import read_checkpoint, tensor_table, write_checkpoint
from zeropoint.export.json_codec import resolver_for
from zeropoint.fold import output_channel_axis
from zeropoint.functional import dequantize_int, quantize_int
from zeropoint.nn.dynamic import DynamicQuantLinear
from zeropoint.nn.modules import QuantMixin
from zeropoint.nn.quantizers import FakeQuant
from zeropoint.nn.weight_only import WeightOnlyEmbedding, WeightOnlyLinear
from zeropoint.qparams import QParams
from zeropoint.qtensor import QTensor
from zeropoint.workflows.graph import state_of

CodedLayer = DynamicQuantLinear | WeightOnlyLinear | WeightOnlyEmbedding
#: dtypes a safetensors file holds
STORABLE = {
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
    torch.int16, torch.int8, torch.uint8, torch.bool,
    torch.float8_e4m3fn, torch.float8_e5m2,
}  # fmt: skip


# --------------------------------------------------------------------------- the model's parts


def _quantized_parts(model: nn.Module) -> tuple[dict[str, nn.Module], dict[str, FakeQuant]]:
    """(layers whose weight is stored as codes, by module name; every other FakeQuant)."""
    layers: dict[str, nn.Module] = {}
    weight_quants: set[int] = set()
    for name, m in model.named_modules():
        if isinstance(m, CodedLayer) or (isinstance(m, QuantMixin) and m.weight_quant is not None):
            layers[name] = m
            weight_quants.add(id(getattr(m, "weight_quant", None)))
    quantizers = {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, FakeQuant) and id(m) not in weight_quants
    }
    return layers, quantizers


def _covered_keys(
    state: dict[str, Tensor], layers: dict[str, nn.Module], quantizers: dict[str, FakeQuant]
) -> set[str]:
    """State-dict keys stored as codes and encodings rather than as tensors: a coded layer's
    weight (its codes buffer; its weight quantizer's S and Z), every quantizer's S and Z. Any
    other buffer — one a quantizer gains later, say — is saved and loaded as a tensor."""
    covered: set[str] = set()
    for name in layers:
        covered |= {f"{name}.weight", f"{name}.weight_codes", f"{name}.weight_data"}
        covered |= {f"{name}.weight_quant.scale", f"{name}.weight_quant.zero_point"}
    for name in quantizers:
        covered |= {f"{name}.scale", f"{name}.zero_point"}
    return covered & state.keys()


# --------------------------------------------------------------------------- save


def save(model: nn.Module, path: str | Path) -> Path:
    """Write a converted model to the directory ``path`` (see the module docstring); returns
    the directory. The model is not modified."""
    state = state_of(model)
    layers, quantizers = _quantized_parts(model)
    for name, m in model.named_modules():
        if callable(getattr(m, "qparams", None)) and not isinstance(m, FakeQuant):
            raise ValueError(
                f"{name!r} is a learnable quantizer ({type(m).__name__}): convert the model "
                "(zp.convert) before saving"
            )
    side: dict[str, Tensor] = {}
    weights = {f"{n}.weight": _weight_entry(n, m, side) for n, m in layers.items()}
    encodings = {n: _quantizer_entry(n, q, side) for n, q in quantizers.items()}
    values = model.state_dict()
    covered = _covered_keys(values, layers, quantizers)
    tensors = {k: _storable(k, v) for k, v in values.items() if k not in covered}
    for key in side:
        if key in tensors:
            raise ValueError(f"the model has a tensor named {key!r}, a name the checkpoint uses")
    tensors = _unshared({**tensors, **side})
    doc = Document(
        format=FORMAT,
        version=VERSION,
        model=type(model).__name__,
        workflow=state.workflow,
        capture=state.capture,
        reduce_range=any(
            bool(getattr(m, "reduce_range", False))
            for m in layers.values()
            if isinstance(m, DynamicQuantLinear)
        ),
        config=state.config,
        weights=weights,
        activations=encodings,
        tensors=tensor_table(tensors),
        sha256={},
    )
    return write_checkpoint(Path(path), doc, tensors)


def _weight_entry(name: str, layer: nn.Module, side: dict[str, Tensor]) -> WeightEntry:
    key = f"{name}.weight"
    per_token: bool | None = None
    if isinstance(layer, DynamicQuantLinear):
        qp, data, packed, per_token = (
            layer.weight_qparams,
            layer.weight_codes,
            False,
            layer.per_token,
        )
        shape = (layer.out_features, layer.in_features)
    elif isinstance(layer, WeightOnlyLinear | WeightOnlyEmbedding):
        qp, data, packed = layer.weight_qparams, layer.weight_data, layer.packed
        shape = (
            (layer.num_embeddings, layer.embedding_dim)
            if isinstance(layer, WeightOnlyEmbedding)
            else (layer.out_features, layer.in_features)
        )
    else:
        assert isinstance(layer, QuantMixin)
        wq = layer.weight_quant
        if not isinstance(wq, FakeQuant) or wq.mode != "quantize" or not wq.frozen:
            mode = wq.mode if isinstance(wq, FakeQuant) else "learnable"
            raise ValueError(
                f"the weight quantizer of {name!r} is not frozen ({type(wq).__name__}, mode "
                f"{mode!r}): convert the model (zp.convert) before saving"
            )
        qp = wq.qparams()
        qt = QTensor.from_int(quantize_int(layer._weight_view().detach(), qp), qp)
        side[f"{key}.codes"] = qt.data.contiguous()
        return WeightEntry(
            encode_qparams(qp, key, side),
            f"{key}.codes",
            qt.packed,
            tuple(qt.shape),
            tuple(layer.float_weight.shape),
            None,
        )
    side[f"{key}.codes"] = data.detach().contiguous()
    return WeightEntry(
        encode_qparams(qp, key, side), f"{key}.codes", packed, shape, shape, per_token
    )


def _quantizer_entry(name: str, q: FakeQuant, side: dict[str, Tensor]) -> QuantizerEntry:
    if q.mode not in ("quantize", "off") or not q.frozen:
        raise ValueError(
            f"quantizer {name!r} is not frozen (mode {q.mode!r}"
            f"{'' if q.frozen else ', no scale yet'}): convert the model (zp.convert) before saving"
        )
    return QuantizerEntry(encode_qparams(q.qparams(), name, side), q.mode)


def _storable(key: str, value: Tensor) -> Tensor:
    t = value.detach()
    if t.is_quantized or t.dtype not in STORABLE:
        raise ValueError(
            f"state-dict entry {key!r} has dtype {t.dtype}, which a safetensors checkpoint "
            "cannot hold"
        )
    return t.cpu().contiguous()


def _unshared(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """safetensors refuses tensors that share memory (tied weights, views): copy those."""
    seen: set[int] = set()
    out = {}
    for k, t in tensors.items():
        storage = t.untyped_storage()
        if storage.data_ptr() in seen or storage.nbytes() != t.numel() * t.element_size():
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[k] = t
    return out


# --------------------------------------------------------------------------- load


def load(path: str | Path, model: nn.Module) -> nn.Module:
    """Rebuild the quantized model saved in ``path`` from its float architecture ``model``
    (not modified). Strict: see the module docstring."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"the template must be an nn.Module, got {type(model).__name__}")
    if "_zeropoint" in model.__dict__:
        raise ValueError(
            f"the template {type(model).__name__} was already quantized by zeropoint: pass the "
            "float model (a fresh instance of its class)"
        )
    doc, tensors = read_checkpoint(Path(path), resolver_for(model))
    rebuilt = _rebuild(model, doc)
    layers, quantizers = _quantized_parts(rebuilt)
    where = f"the checkpoint in {path} (saved from a {doc.model})"
    template = f"the template {type(model).__name__}"
    _same_keys("weight entry", doc.weights.keys(), {f"{n}.weight" for n in layers}, where, template)
    _same_keys("quantizer encoding", doc.activations.keys(), quantizers.keys(), where, template)
    values = rebuilt.state_dict()
    plain = values.keys() - _covered_keys(values, layers, quantizers)
    referenced = {e.codes for e in doc.weights.values()}
    encodings = [e.encoding for e in doc.weights.values()]
    for encoding in encodings + [e.encoding for e in doc.activations.values()]:
        referenced.update(referenced_tensors(encoding))
    for key in sorted(referenced - tensors.keys()):
        raise ValueError(f"{where} lacks the tensor {key!r} that its encodings name")
    _same_keys("tensor", tensors.keys() - referenced, plain, where, template)
    for key in sorted(plain):
        if tensors[key].dtype != values[key].dtype:
            raise ValueError(
                f"tensor {key!r} is {tensors[key].dtype} in {where} but {values[key].dtype} in "
                f"{template}"
            )
    for key, weight in doc.weights.items():
        _restore_weight(layers[key.removesuffix(".weight")], key, weight, tensors)
    for name, entry in doc.activations.items():
        _restore_quantizer(rebuilt, name, quantizers[name], entry, tensors)
    try:
        rebuilt.load_state_dict({k: tensors[k] for k in plain}, strict=False)
    except RuntimeError as exc:
        raise ValueError(f"the tensors of {where} do not fit {template}: {exc}") from exc
    if doc.workflow in ("static", "qat"):
        from zeropoint.workflows.static import convert

        convert(rebuilt)
    state_of(rebuilt).workflow = doc.workflow
    return rebuilt.eval()


def _rebuild(model: nn.Module, doc: Document) -> nn.Module:
    """A copy of ``model`` with the saved config applied (layers swapped, quantizers placed)."""
    if doc.workflow in ("dynamic", "weight_only"):
        from zeropoint.workflows.dynamic import quantize_dynamic

        rebuilt = quantize_dynamic(model, doc.config, reduce_range=doc.reduce_range)
    else:
        from zeropoint.workflows.static import prepare

        template = copy.deepcopy(model).eval()
        with warnings.catch_warnings():  # the capture is compared below
            warnings.filterwarnings("ignore", message="torch.fx could not capture")
            # a QAT model was converted to frozen quantizers: the same structure static
            # preparation builds (learnable quantizers and stochastic rounding are a
            # training-time matter; converted quantizers round to nearest)
            config = doc.config.with_(learnable=None).deterministic()
            rebuilt = prepare(template, config, inplace=True)
        state_of(rebuilt).config = doc.config
    capture = state_of(rebuilt).capture
    if capture != doc.capture:
        raise ValueError(
            f"the checkpoint's model was captured as {doc.capture!r}, the template "
            f"{type(model).__name__} as {capture!r}: it is not the architecture that was saved "
            f"(a {doc.model})"
        )
    return rebuilt


def _same_keys(what: str, stored: object, expected: object, where: str, template: str) -> None:
    stored_keys, expected_keys = set(stored), set(expected)  # type: ignore[call-overload]
    missing, extra = sorted(expected_keys - stored_keys), sorted(stored_keys - expected_keys)
    if missing:
        raise ValueError(
            f"{where} lacks the {what} {missing[0]!r} that {template} has "
            f"({len(missing)} missing: {missing[:5]})"
        )
    if extra:
        raise ValueError(
            f"{where} has a {what} {extra[0]!r} that {template} does not have "
            f"({len(extra)} extra: {extra[:5]}); is the template the architecture that was saved?"
        )


def _restore_weight(
    layer: nn.Module, key: str, entry: WeightEntry, tensors: dict[str, Tensor]
) -> None:
    qp = decode_qparams(entry.encoding, tensors, key)
    data = tensors[entry.codes]
    try:
        if data.is_floating_point():
            raise ValueError(f"they are {data.dtype}, not integers")
        view_shape = torch.Size(entry.view_shape)
        codes = QTensor(data.reshape(-1) if entry.packed else data, qp, view_shape, entry.packed)
        ints = codes.int_repr()
        if ints.shape != view_shape:
            raise ValueError(f"shape {list(ints.shape)} is not the view shape {list(view_shape)}")
        qp.check_shape(view_shape)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"the codes of {key} do not fit their encoding: {exc}") from exc
    lo, hi = qp.scheme.qrange
    if ints.numel() and (int(ints.min()) < lo or int(ints.max()) > hi):
        raise ValueError(
            f"the codes of {key} span [{int(ints.min())}, {int(ints.max())}], outside the "
            f"range [{lo}, {hi}] of their scheme ({qp.scheme})"
        )
    try:
        if isinstance(layer, DynamicQuantLinear):
            if entry.per_token is None:
                raise ValueError("per_token is null; a dynamic int8 Linear needs true or false")
            layer.per_token = entry.per_token
            layer.set_codes(data, qp)
        elif isinstance(layer, WeightOnlyLinear | WeightOnlyEmbedding):
            layer.set_codes(data, qp, entry.packed)
        else:
            assert isinstance(layer, QuantMixin)
            weight = _from_view(layer, dequantize_int(ints, qp), entry.shape)
            if weight.shape != layer.float_weight.shape:
                raise ValueError(
                    f"shape {list(weight.shape)} is not the template's "
                    f"{list(layer.float_weight.shape)}"
                )
            with torch.no_grad():
                layer.float_weight.copy_(weight)
            layer.weight_quant = _frozen_like(layer.weight_quant, qp, "quantize")
    except (RuntimeError, ValueError) as exc:
        raise ValueError(
            f"the weight {key} of the checkpoint does not fit the template: {exc}"
        ) from exc


def _from_view(layer: nn.Module, view: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Undo `QuantMixin._weight_view` (group-wise conv weights: output channels first)."""
    if tuple(view.shape) == shape:
        return view
    axis = output_channel_axis(layer)
    moved = [shape[axis], *shape[:axis], *shape[axis + 1 :]]
    return view.reshape(moved).movedim(0, axis)


def _frozen_like(old: nn.Module | None, qp: QParams, mode: str) -> FakeQuant:
    """A FakeQuant frozen at ``qp``: ``old`` itself when its scheme matches (it keeps its
    observer settings), else a new one (the saved scheme is the truth)."""
    if isinstance(old, FakeQuant) and old.scheme == qp.scheme:
        fq = old
    elif isinstance(old, FakeQuant):
        fq = FakeQuant(qp.scheme, old.observer_name, old.observer_options)
    else:
        fq = FakeQuant(qp.scheme)
    fq.set_qparams(qp)
    fq.mode = mode
    return fq


def _restore_quantizer(
    model: nn.Module, name: str, old: FakeQuant, entry: QuantizerEntry, tensors: dict[str, Tensor]
) -> None:
    fq = _frozen_like(old, decode_qparams(entry.encoding, tensors, name), entry.mode)
    if fq is not old:
        model.set_submodule(name, fq)
