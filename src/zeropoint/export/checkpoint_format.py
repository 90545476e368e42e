"""The JSON document of a checkpoint (``encodings.json``): its schema, the (S, Z) encodings, and
the SHA-256 digests that make any later change to it detectable.

The schema is written as frozen dataclasses (`Document` and the entries below it);
`zeropoint.export.json_codec` turns them into JSON and back strictly — also the `QuantConfig`,
`LayerRule` and `Scheme` inside — with errors that name the field by its path.

Every entry of ``weights`` and ``activations``, and every other top-level section, has its
SHA-256 recorded in the ``sha256`` section (over its canonical JSON: sorted keys, no spaces;
floats written by `repr`, which round-trips exactly). The digests catch corruption and edits
(a doubled scale, a changed bit width), naming the entry; they do not authenticate the file.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

# imported at run time, not only for type checkers: the codec reads the annotations below
from zeropoint.qparams import QParams, Scheme
from zeropoint.workflows.config import QuantConfig

FORMAT = "zeropoint-checkpoint"
VERSION = 2
WORKFLOWS = ("static", "qat", "dynamic", "weight_only")
CAPTURES = ("fx", "module-boundary", "module")
QUANTIZER_MODES = ("quantize", "off")
TENSOR_FILE = re.compile(r"model-[0-9a-f]{16}\.safetensors")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _check_shape(shape: tuple[int, ...], what: str) -> None:
    if any(d < 0 for d in shape):
        raise ValueError(f"{what} {list(shape)} has a negative dimension")


@dataclass(frozen=True)
class TensorRef:
    """Values kept in the safetensors file under the key ``tensor`` (long lists of scales)."""

    tensor: str


@dataclass(frozen=True)
class Encoding:
    """One quantizer's (S, Z): r = S·(q − Z). Scales and zero points are listed in row-major
    order of ``shape`` (the shape of the scale tensor), or kept in the tensor file."""

    scheme: Scheme
    axis: int | None
    shape: tuple[int, ...]
    scale: tuple[float, ...] | TensorRef
    zero_point: tuple[int, ...] | TensorRef

    def __post_init__(self) -> None:
        _check_shape(self.shape, "shape")
        n = math.prod(self.shape)
        for name in ("scale", "zero_point"):
            values = getattr(self, name)
            if isinstance(values, tuple) and len(values) != n:
                raise ValueError(
                    f"{name} lists {len(values)} values; shape {list(self.shape)} needs {n}"
                )


@dataclass(frozen=True)
class WeightEntry:
    """A quantized weight: its integer codes (tensor ``codes``, packed two or more per byte when
    ``packed``) in ``view_shape`` (the layout the scales index), the weight's ``shape``, and
    its encoding. ``per_token``: the activation mode of a dynamic int8 Linear (else null)."""

    encoding: Encoding
    codes: str
    packed: bool
    view_shape: tuple[int, ...]
    shape: tuple[int, ...]
    per_token: bool | None

    def __post_init__(self) -> None:
        _check_shape(self.view_shape, "view_shape")
        _check_shape(self.shape, "shape")
        if math.prod(self.view_shape) != math.prod(self.shape):
            raise ValueError(
                f"view_shape {list(self.view_shape)} and shape {list(self.shape)} differ in size"
            )


@dataclass(frozen=True)
class QuantizerEntry:
    """A frozen activation (or other non-weight) quantizer: its encoding and mode."""

    encoding: Encoding
    mode: str

    def __post_init__(self) -> None:
        if self.mode not in QUANTIZER_MODES:
            raise ValueError(f"mode {self.mode!r} is not one of {QUANTIZER_MODES}")


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]
    sha256: str

    def __post_init__(self) -> None:
        _check_shape(self.shape, "shape")
        if not _SHA256.fullmatch(self.sha256):
            raise ValueError(f"sha256 {self.sha256!r} is not 64 lowercase hex digits")


@dataclass(frozen=True)
class TensorTable:
    """The tensor file's name and, per tensor, its dtype, shape and SHA-256 (of its bytes)."""

    file: str
    entries: dict[str, TensorEntry]

    def __post_init__(self) -> None:
        if not TENSOR_FILE.fullmatch(self.file):
            raise ValueError(
                f"file {self.file!r} is not a tensor file name of the form model-<16 hex>.safetensors"
            )


@dataclass(frozen=True)
class Document:
    """The whole of ``encodings.json``."""

    format: str
    version: int
    model: str
    workflow: str
    capture: str
    reduce_range: bool
    config: QuantConfig
    weights: dict[str, WeightEntry]
    activations: dict[str, QuantizerEntry]
    tensors: TensorTable
    sha256: dict[str, str]

    def __post_init__(self) -> None:
        if self.workflow not in WORKFLOWS:
            raise ValueError(f"workflow {self.workflow!r} is not one of {WORKFLOWS}")
        if self.capture not in CAPTURES:
            raise ValueError(f"capture {self.capture!r} is not one of {CAPTURES}")


# --------------------------------------------------------------------------- encodings


#: encodings with more scales than this keep them in the tensor file (the JSON names them)
INLINE_SCALES = 64


def encode_qparams(qp: QParams, key: str, side: dict[str, Tensor]) -> Encoding:
    """The Encoding of ``qp``; long scale lists go to ``side`` as ``<key>.qscale/.qzero``."""
    shape = tuple(qp.scale.shape)
    if qp.scale.numel() > INLINE_SCALES:
        side[f"{key}.qscale"] = qp.scale.detach().float().contiguous()
        side[f"{key}.qzero"] = qp.zero_point.detach().to(torch.int32).contiguous()
        return Encoding(
            qp.scheme, qp.axis, shape, TensorRef(f"{key}.qscale"), TensorRef(f"{key}.qzero")
        )
    scale = tuple(float(v) for v in qp.scale.detach().flatten().tolist())
    zero = tuple(int(v) for v in qp.zero_point.detach().flatten().tolist())
    return Encoding(qp.scheme, qp.axis, shape, scale, zero)


def referenced_tensors(e: Encoding) -> list[str]:
    return [v.tensor for v in (e.scale, e.zero_point) if isinstance(v, TensorRef)]


def decode_qparams(e: Encoding, tensors: dict[str, Tensor], what: str) -> QParams:
    """QParams from an Encoding (ValueError naming ``what`` when they are not valid)."""

    def values(v: tuple[float, ...] | tuple[int, ...] | TensorRef, dtype: torch.dtype) -> Tensor:
        if isinstance(v, TensorRef):
            t = tensors[v.tensor]
            if t.numel() != math.prod(e.shape):
                raise ValueError(
                    f"tensor {v.tensor!r} holds {t.numel()} values; shape {list(e.shape)} "
                    f"needs {math.prod(e.shape)}"
                )
            return t.to(dtype).reshape(e.shape)
        return torch.tensor(v, dtype=dtype).reshape(e.shape)

    try:
        return QParams(
            values(e.scale, torch.float32), values(e.zero_point, torch.int32), e.scheme, e.axis
        )
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"the encoding of {what} is not valid: {exc}") from exc


# --------------------------------------------------------------------------- digests


def digest(value: Any) -> str:
    """SHA-256 of the canonical JSON of ``value`` (sorted keys, no whitespace)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


ENTRY_SECTIONS = ("weights", "activations")


def digests(raw: dict[str, Any]) -> dict[str, str]:
    """The digest of every entry of ``weights``/``activations`` ("weights/<key>") and of every
    other top-level section except ``sha256`` itself."""
    out: dict[str, str] = {}
    for section, value in raw.items():
        if section == "sha256":
            continue
        if section in ENTRY_SECTIONS and isinstance(value, dict):
            out.update({f"{section}/{k}": digest(v) for k, v in value.items()})
        else:
            out[section] = digest(value)
    return out


def _what(key: str) -> str:
    section, _, name = key.partition("/")
    if section == "weights":
        return f"the weight entry {name!r} (its encoding, scheme or layout)"
    if section == "activations":
        return f"the encoding of quantizer {name!r}"
    return f"the {section!r} section"


def verify_digests(raw: dict[str, Any], recorded: dict[str, str]) -> None:
    """Raise ValueError naming the first entry or section whose digest differs, is missing, or
    was recorded for an entry that is no longer there."""
    computed = digests(raw)
    for key in sorted(recorded.keys() - computed.keys()):
        raise ValueError(f"{_what(key)} is missing: its SHA-256 is recorded, the entry is not")
    for key in sorted(computed.keys() - recorded.keys()):
        raise ValueError(f"{_what(key)} has no recorded SHA-256: it was added after saving")
    for key in sorted(computed):
        if computed[key] != recorded[key]:
            raise ValueError(
                f"{_what(key)} does not match its recorded SHA-256: it was changed or "
                "corrupted after saving"
            )
