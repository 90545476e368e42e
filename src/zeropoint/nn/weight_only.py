"""Weight-only quantized layers: integer weight codes (packed when ≤ 4 bits), float activations.

`WeightOnlyLinear` multiplies with its packed codes directly (`zeropoint.kernels`: the codes are
decoded in registers, so a call reads c/32 of the float weight's bytes), optionally after an
per-input-channel scaling of x (AWQ: y = (x ⊘ s)·Q(W·diag(s))ᵀ + b). `WeightOnlyEmbedding`
stores a table per row (or per group within a row) and dequantizes only the rows a lookup
gathers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zeropoint.functional import dequantize_int, quantize_int
from zeropoint.kernels import packed as kernels
from zeropoint.observers.registry import calibrate
from zeropoint.qparams import QParams, Scheme
from zeropoint.qtensor import QTensor


class WeightOnlyLinear(nn.Linear):
    """Integer weight codes (packed when ≤ 4 bits) with float activations.

    Buffers (all in the state dict, so a checkpoint of the state dict round-trips the layer):
    ``weight_data`` — the codes as `QTensor` stores them; ``input_scale`` — s per input channel
    (ones unless AWQ-style scaling was applied: the layer computes (x ⊘ s)·Ŵᵀ + b, Ŵ the
    dequantized codes); ``weight_offset`` — empty, or a float O per (S, Z) added to S·(q − Z)
    (HQQ's fractional zero points z: O = S·(Z − z)). The (S, Z) are ``weight_qparams`` (the
    checkpoint stores them)."""

    def __init__(self, layer: nn.Linear, weight_scheme: Scheme) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = layer.in_features, layer.out_features
        w = layer.weight.detach().float()
        qp = calibrate(w, weight_scheme)
        qt = QTensor.from_int(quantize_int(w, qp), qp)
        self.weight_qparams: QParams = qp
        self.weight_data: Tensor
        self.register_buffer("weight_data", qt.data)
        self.input_scale: Tensor
        self.register_buffer("input_scale", torch.ones(self.in_features))
        self.weight_offset: Tensor
        self.register_buffer("weight_offset", torch.empty(0))
        self.weight_shape = qt.shape
        self.packed = qt.packed
        self.bias = (
            None
            if layer.bias is None
            else nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
        )
        self.register_parameter("weight", None)
        self._repack()

    @classmethod
    def from_codes(
        cls,
        layer: nn.Linear,
        codes: Tensor,
        qparams: QParams,
        input_scale: Tensor | None = None,
        bias: Tensor | None = None,
        offset: Tensor | None = None,
    ) -> WeightOnlyLinear:
        """A layer with given integer codes (N, K) and their (S, Z) — from GPTQ, AWQ or HQQ —
        and optionally an input scale s (x ⊘ s feeds the codes), a replacement bias and float
        offsets O shaped like the scale (Ŵ = S·(q − Z) + O)."""
        new = cls(layer, qparams.scheme)
        qt = QTensor.from_int(codes, qparams)
        new.set_codes(qt.data, qparams, qt.packed)
        with torch.no_grad():
            if input_scale is not None:
                new.input_scale.copy_(input_scale)
            if bias is not None and new.bias is not None:
                new.bias.copy_(bias)
        if offset is not None:
            qparams.check_shape((new.out_features, new.in_features))
            if offset.shape != qparams.scale.shape:
                raise ValueError(
                    f"offsets of shape {tuple(offset.shape)} do not fit scales of shape {tuple(qparams.scale.shape)}"
                )
            new.weight_offset = offset.detach().float().clone()
        new._repack()
        return new

    def set_codes(self, data: Tensor, qparams: QParams, packed: bool) -> None:
        """Replace the stored codes (packed as `QTensor` packs them) and their (S, Z)."""
        qt = QTensor(data, qparams, self.weight_shape, packed)
        codes = qt.int_repr()  # validates the size of the packed data
        qparams.check_shape(codes.shape)
        self.weight_qparams, self.weight_data, self.packed = qparams, data.clone(), packed
        self._repack()

    def _repack(self) -> None:
        """The kernels' view of the stored codes (the same bytes, no copy), where they fit."""
        try:
            self._kernel_weight: kernels.PackedWeight | None = kernels.affine(
                self.weight_data,
                self.weight_qparams,
                (self.out_features, self.in_features),
                self.packed,
                self._offset_rows(),
            )
        except ValueError:  # a granularity or width the kernels do not take: dequantize
            self._kernel_weight = None
        self._scaled_input = bool((self.input_scale != 1).any())
        self._inv_input_scale = (1.0 / self.input_scale).contiguous()

    def _offset_rows(self) -> Tensor | None:
        """The offsets as (N, groups) rows, or None."""
        if not self.weight_offset.numel():
            return None
        return self.weight_offset.reshape(self.out_features, -1)

    def _load_from_state_dict(  # type: ignore[no-untyped-def]
        self, state_dict, prefix, *args, **kwargs
    ) -> None:
        key = prefix + "weight_offset"
        if key in state_dict:  # empty unless HQQ: take the saved shape
            self.weight_offset = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._repack()

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        out = super()._apply(fn, recurse)
        self._repack()  # .to(), .float(), ...: the kernel view follows the moved buffers
        return out

    def quantized_weight(self) -> Tensor:
        """Ŵ = S·(q − Z): the dequantized codes (of W·diag(s) when an input scale is set)."""
        qt = QTensor(self.weight_data, self.weight_qparams, self.weight_shape, self.packed)
        w = qt.dequantize()
        offset = self._offset_rows()
        if offset is None:
            return w
        groups = offset.shape[1]
        return (w.reshape(self.out_features, groups, -1) + offset.unsqueeze(-1)).reshape(w.shape)

    def dequantized_weight(self) -> Tensor:
        """The weight this layer applies to its input: Ŵ·diag(1/s)."""
        return self.quantized_weight() * self._inv_input_scale

    def forward(self, x: Tensor) -> Tensor:
        if self._scaled_input:
            x = x * self._inv_input_scale.to(x.dtype)
        if self._kernel_weight is not None:
            return kernels.linear(x, self._kernel_weight, self.bias)
        return F.linear(x, self.quantized_weight().to(x.dtype), self.bias)

    def extra_repr(self) -> str:
        scaled = ", input scaled" if self._scaled_input else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"weight={self.weight_qparams.scheme} (packed={self.packed}{scaled}), "
            "activations=float"
        )

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        state["_kernel_weight"] = None  # a view of weight_data: rebuilt on load
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._repack()


def _codes_per_byte(bits: int) -> int:
    from zeropoint.qtensor import container_bits

    return 8 // container_bits(bits)


class WeightOnlyEmbedding(nn.Embedding):
    """An embedding table stored as integer codes per row (or per group within a row), packed
    when ≤ 4 bits; a lookup gathers the rows' codes and dequantizes only those rows."""

    def __init__(self, layer: nn.Embedding, weight_scheme: Scheme) -> None:
        nn.Module.__init__(self)
        self.num_embeddings, self.embedding_dim = layer.num_embeddings, layer.embedding_dim
        self.padding_idx = layer.padding_idx
        self.max_norm, self.norm_type = None, layer.norm_type
        self.scale_grad_by_freq, self.sparse = layer.scale_grad_by_freq, layer.sparse
        if layer.max_norm is not None:
            raise ValueError("embeddings with max_norm renormalise their rows: not quantizable")
        # per row (axis 0), or groups within each row (group_size along the last axis)
        scheme = weight_scheme.with_(axis=-1 if weight_scheme.group_size else 0)
        w = layer.weight.detach().float()
        qp = calibrate(w, scheme)
        qt = QTensor.from_int(quantize_int(w, qp), qp)
        if qt.packed and w.shape[1] % _codes_per_byte(scheme.bits):
            raise ValueError(
                f"rows of {w.shape[1]} packed {scheme.bits}-bit codes do not end on a byte"
            )
        self.weight_qparams: QParams = qp
        self.weight_data: Tensor
        self.register_buffer("weight_data", qt.data.reshape(w.shape[0], -1))
        self.packed = qt.packed
        self.register_parameter("weight", None)

    def set_codes(self, data: Tensor, qparams: QParams, packed: bool) -> None:
        """Replace the stored codes (rows of packed bytes when ``packed``) and their (S, Z)."""
        shape = torch.Size((self.num_embeddings, self.embedding_dim))
        QTensor(data.reshape(-1), qparams, shape, packed).int_repr()  # validates the sizes
        qparams.check_shape(shape)
        self.weight_qparams, self.packed = qparams, packed
        self.weight_data = data.reshape(self.num_embeddings, -1).clone()

    def dequantized_weight(self) -> Tensor:
        return self._rows(torch.arange(self.num_embeddings))

    def _rows(self, idx: Tensor) -> Tensor:
        flat = idx.reshape(-1)
        qp = self.weight_qparams
        shape = torch.Size((flat.numel(), self.embedding_dim))
        rows_qp = QParams(qp.scale[flat], qp.zero_point[flat], qp.scheme, qp.axis)
        data = self.weight_data[flat]
        codes = QTensor(
            data.reshape(-1) if self.packed else data, rows_qp, shape, self.packed
        ).int_repr()
        return dequantize_int(codes, rows_qp).reshape(*idx.shape, self.embedding_dim)

    def forward(self, idx: Tensor) -> Tensor:
        if bool((idx < 0).any()) or bool((idx >= self.num_embeddings).any()):
            raise IndexError(f"embedding index out of range [0, {self.num_embeddings})")
        return self._rows(idx)

    def extra_repr(self) -> str:
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, weight={self.weight_qparams.scheme} "
            f"(packed={self.packed})"
        )
