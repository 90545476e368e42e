"""Linear layers for dynamic and weight-only quantization (transformers' Linear-bound workloads).

`DynamicQuantLinear`: int8 weights, symmetric per output channel (Z = 0, [−127, 127]); the
activations are quantized at run time from each input — per token (one scale per row of the
flattened input) or per tensor. Per-token quantization is done through fbgemm's fast dynamic int8
GEMM, which quantizes its input per tensor, by normalising each row first:

    x̃_i = x_i / m_i,  m_i = max_k |x_ik|        (every row of x̃ spans [−1, 1])
    y_i = m_i · (W x̃_i) + b                     (exact: W is linear)

so fbgemm's per-tensor quantization of x̃ is a per-token quantization of x with scale
m_i·(2/255), and the int8×int8→int32 GEMM runs at fbgemm's speed. Where fbgemm is not available
the same arithmetic runs as an exact float simulation.

`WeightOnlyLinear`: weights stored as integer codes (e.g. int4 in groups of 32 along the input
dimension, packed two per byte), activations in float; the weight is dequantized on the fly.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zeropoint.functional import dequantize_int, fake_quantize, quantize_int
from zeropoint.observers.registry import calibrate
from zeropoint.qparams import QParams, Scheme
from zeropoint.qtensor import QTensor

INT8_CHANNEL = Scheme(bits=8, symmetric=True, narrow=True, axis=0)


def fbgemm_available() -> bool:
    """True when torch's x86/fbgemm quantized engine (dynamic int8 Linear) can run here."""
    return torch.backends.quantized.engine in ("x86", "fbgemm") and hasattr(
        torch.ops.quantized, "linear_dynamic"
    )


class DynamicQuantLinear(nn.Linear):
    """int8 per-channel weights; activations quantized per token (or per tensor) at run time."""

    def __init__(
        self,
        layer: nn.Linear,
        weight_scheme: Scheme = INT8_CHANNEL,
        per_token: bool = True,
        reduce_range: bool = False,
        use_fbgemm: bool | None = None,
    ) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = layer.in_features, layer.out_features
        if weight_scheme.bits != 8 or not weight_scheme.symmetric or weight_scheme.group_size:
            raise ValueError(
                f"dynamic int8 Linear needs int8 symmetric weights, got {weight_scheme}"
            )
        w = layer.weight.detach().float()
        self.weight_qparams = calibrate(w, weight_scheme)
        codes = quantize_int(w, self.weight_qparams)
        # the dequantized weight is what this layer computes with: keep it as `weight`
        self.weight = nn.Parameter(dequantize_int(codes, self.weight_qparams), requires_grad=False)
        self.bias = (
            None
            if layer.bias is None
            else nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
        )
        self.weight_codes: Tensor
        self.register_buffer("weight_codes", codes)
        self.per_token = per_token
        self.reduce_range = reduce_range
        self.use_fbgemm = fbgemm_available() if use_fbgemm is None else use_fbgemm
        self._packed = self._pack() if self.use_fbgemm else None

    def set_codes(self, codes: Tensor, qparams: QParams) -> None:
        """Replace the int8 weight codes and their (S, Z) (loading a checkpoint)."""
        if tuple(codes.shape) != (self.out_features, self.in_features) or codes.dtype != torch.int8:
            raise ValueError(
                f"weight codes of shape {tuple(codes.shape)} ({codes.dtype}) do not fit "
                f"an int8 ({self.out_features}, {self.in_features}) layer"
            )
        qparams.check_shape(codes.shape)
        self.weight_qparams = qparams
        self.weight_codes = codes.clone()
        with torch.no_grad():
            self.weight.copy_(dequantize_int(codes, qparams))
        self._packed = self._pack() if self.use_fbgemm else None

    def _pack(self) -> object:
        qp = self.weight_qparams
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if qp.scale.dim() == 0:
                qw = torch._make_per_tensor_quantized_tensor(
                    self.weight_codes, float(qp.scale), int(qp.zero_point)
                )
            else:
                qw = torch._make_per_channel_quantized_tensor(
                    self.weight_codes, qp.scale.double(), qp.zero_point.long(), 0
                )
            return torch.ops.quantized.linear_prepack(qw, None)

    def _activation_scale(self, x2d: Tensor) -> Tensor:
        if self.per_token:
            return x2d.abs().amax(dim=1, keepdim=True).clamp_(min=1e-30)
        return x2d.abs().amax().clamp(min=1e-30).reshape(1, 1)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x2d = x.reshape(-1, self.in_features).float()
        m = self._activation_scale(x2d)
        xn = x2d / m
        if self._packed is not None:
            y = torch.ops.quantized.linear_dynamic(xn, self._packed, self.reduce_range)
        else:
            y = F.linear(self.simulate_activation(xn), self.weight)
        y = y * m
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)

    def simulate_activation(self, xn: Tensor) -> Tensor:
        """The quantization fbgemm applies to the normalised input, in float: uint8 affine over
        [min(x̃), max(x̃)] ∪ {0} (7-bit [0, 127] with reduce_range)."""
        scheme = Scheme(bits=7 if self.reduce_range else 8, signed=False)
        return fake_quantize(xn, calibrate(xn, scheme))

    def extra_repr(self) -> str:
        kernel = "fbgemm" if self._packed is not None else "simulated"
        act = "per-token" if self.per_token else "per-tensor"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"weight={self.weight_qparams.scheme}, activations=uint8 {act} dynamic, kernel={kernel}"
        )

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        state["_packed"] = None  # re-packed on load
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        if self.use_fbgemm:
            self._packed = self._pack()


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
