"""Weight-only quantized layers: integer weight codes (packed when ≤ 4 bits), float activations.

`WeightOnlyLinear` dequantizes its weight on the fly (e.g. int4 in groups of 32 along the input
dimension); `WeightOnlyEmbedding` stores a table per row (or per group within a row) and
dequantizes only the rows a lookup gathers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zeropoint.functional import dequantize_int, quantize_int
from zeropoint.observers.registry import calibrate
from zeropoint.qparams import QParams, Scheme
from zeropoint.qtensor import QTensor


class WeightOnlyLinear(nn.Linear):
    """Integer weight codes (packed when ≤ 4 bits) with float activations; W dequantized per call."""

    def __init__(self, layer: nn.Linear, weight_scheme: Scheme) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = layer.in_features, layer.out_features
        w = layer.weight.detach().float()
        qp = calibrate(w, weight_scheme)
        qt = QTensor.from_int(quantize_int(w, qp), qp)
        self.weight_qparams: QParams = qp
        self.weight_data: Tensor
        self.register_buffer("weight_data", qt.data)
        self.weight_shape = qt.shape
        self.packed = qt.packed
        self.bias = (
            None
            if layer.bias is None
            else nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
        )
        self.register_parameter("weight", None)

    def set_codes(self, data: Tensor, qparams: QParams, packed: bool) -> None:
        """Replace the stored codes (packed as `QTensor` packs them) and their (S, Z)."""
        qt = QTensor(data, qparams, self.weight_shape, packed)
        codes = qt.int_repr()  # validates the size of the packed data
        qparams.check_shape(codes.shape)
        self.weight_qparams, self.weight_data, self.packed = qparams, data.clone(), packed

    def dequantized_weight(self) -> Tensor:
        qt = QTensor(self.weight_data, self.weight_qparams, self.weight_shape, self.packed)
        return qt.dequantize()

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.dequantized_weight().to(x.dtype), self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"weight={self.weight_qparams.scheme} (packed={self.packed}), activations=float"
        )


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
