"""Non-uniform and floating-point weights at model level: a layer's weight stored as packed b-bit
codes plus the few numbers that give them values, decoded on the fly.

    model_q = quantize_weights(model, WeightSpec("kmeans", bits=3))           # 8-level codebooks
    model_q = quantize_weights(model, WeightSpec("fp8_e4m3fn", per_channel=True))

Kinds (per output channel, or per tensor with ``per_channel=False``; rows of the weight viewed as
(output channels, everything else)):

  int         uniform b-bit, min-max (S, Z) — the baseline at the same width
  kmeans      2^b levels minimising Σ(Q(r) − r)² by Lloyd's algorithm (1-D k-means); per tensor
              `zeropoint.nonuniform.KMeansCodebook` (k-means++ restarts), per channel the same
              iteration batched over rows from quantile starts (`fit_rows_kmeans`)
  log2        {0, ±α·2^−k} with a power-of-two α (`zeropoint.nonuniform.LogQuantizer`, sign bit
              + exponent, "linear" rounding: the nearest level)
  binary      r ≈ Σ_i α_i·b_i, b_i ∈ {−1, +1}, m = ``bits`` bases
              (`zeropoint.nonuniform.BinaryCodeQuantizer`, alternating least squares)
  fp4_e2m1    S·fp4(r / S), S = max|r| / 6        (OCP MX fp4; `zeropoint.formats.FP4_E2M1`)
  fp8_e4m3fn  S·fp8(r / S), S = max|r| / 448      (the scaled-fp8 weights of serving stacks;
  fp8_e5m2    S = max|r| / 57344                   `zeropoint.formats`, bit-exact with torch)

Storage (the layer's state dict, so a generic safetensors checkpoint of it round-trips the layer
given the spec): ``weight_codes`` — uint8, each row's codes packed c bits each (c the container
of b bits: 1, 2, 4 or 8; 3-bit codes take 4 bits), first code in the low bits; ``weight_params``
— float32 (rows or 1, P): (S, Z) for int, α for log2, the m α's for binary, the 2^b levels for
kmeans, S for fp4/fp8. A Linear multiplies with the codes directly (`zeropoint.kernels`: a table
of 2^b values per row, or the fp8 decoder); convolutions dequantize their weight, then convolve.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zeropoint.fold import output_channel_axis
from zeropoint.formats import FP4_E2M1, FP8_E4M3, FP8_E5M2
from zeropoint.kernels import packed as kernels
from zeropoint.nonuniform import BinaryCodeQuantizer, KMeansCodebook, LogQuantizer
from zeropoint.nonuniform.binary import sign_table
from zeropoint.observers.registry import calibrate
from zeropoint.qparams import Scheme
from zeropoint.qtensor import container_bits
from zeropoint.workflows.config import name_matches

KINDS = ("int", "kmeans", "log2", "binary", "fp4_e2m1", "fp8_e4m3fn", "fp8_e5m2")
_BITS = {"int": (2, 8), "kmeans": (1, 8), "log2": (2, 8), "binary": (1, 4)}
_FLOATS = {"fp4_e2m1": FP4_E2M1, "fp8_e4m3fn": FP8_E4M3, "fp8_e5m2": FP8_E5M2}
CODED_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d)


@dataclass(frozen=True)
class WeightSpec:
    """How to code a layer's weight: ``kind`` (module docstring), ``bits`` (fixed for the float
    kinds: 4 for fp4, 8 for fp8), ``per_channel`` (per output channel, else per tensor),
    ``symmetric`` (int only: Z = 0), ``seed`` (k-means++ restarts of per-tensor kmeans),
    ``iters`` (Lloyd iterations at most, per-channel kmeans)."""

    kind: str
    bits: int = 4
    per_channel: bool = True
    symmetric: bool = False
    seed: int = 0
    iters: int = 100

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"WeightSpec.kind={self.kind!r} is unknown: expected one of {KINDS}")
        if self.kind in _FLOATS:
            object.__setattr__(self, "bits", _FLOATS[self.kind].bits)
            return
        lo, hi = _BITS[self.kind]
        if not isinstance(self.bits, int) or not lo <= self.bits <= hi:
            raise ValueError(f"WeightSpec({self.kind!r}) bits={self.bits!r}: expected {lo}..{hi}")

    @property
    def container(self) -> int:
        return container_bits(self.bits)

    @property
    def label(self) -> str:
        where = "ch" if self.per_channel else "tensor"
        return (
            f"{self.kind} {self.bits}b {where}"
            if self.kind not in _FLOATS
            else f"{self.kind} {where}"
        )


# --------------------------------------------------------------------------- fitting


def fit_rows_kmeans(rows: Tensor, bits: int, iters: int = 100) -> tuple[Tensor, Tensor]:
    """Lloyd's algorithm on every row at once: levels (C, 2^b) and codes (C, K).

    Per row, from the (i + ½)/2^b quantiles (KMeansCodebook's "quantile" start): cells are the
    runs of the sorted row between level midpoints (a value on a midpoint goes to the lower
    level), each level moves to its cell's mean (an empty cell keeps its level), until no cell
    changes or ``iters`` updates. Prefix sums of the sorted rows make an update
    O(C·2^b·log K)."""
    c_rows, k = rows.shape
    n_levels = 1 << bits
    r = torch.sort(rows.double(), dim=1).values
    s1 = F.pad(torch.cumsum(r, 1), (1, 0))
    at = ((torch.arange(n_levels, dtype=torch.float64) + 0.5) * k / n_levels).long()
    c = r[:, at.clamp(max=k - 1)]
    zeros = torch.zeros(c_rows, 1, dtype=torch.long)
    full = torch.full((c_rows, 1), k, dtype=torch.long)

    def edges(levels: Tensor) -> Tensor:
        mid = ((levels[:, 1:] + levels[:, :-1]) / 2).contiguous()
        return torch.cat([zeros, torch.searchsorted(r, mid, right=True), full], dim=1)

    e = edges(c)
    for _ in range(iters):
        lo, hi = e[:, :-1], e[:, 1:]
        count = (hi - lo).double()
        total = s1.gather(1, hi) - s1.gather(1, lo)
        c = torch.where(count > 0, total / count.clamp(min=1), c)
        new = edges(c)
        if torch.equal(new, e):
            break
        e = new
    mid = ((c[:, 1:] + c[:, :-1]) / 2).contiguous()
    codes = torch.searchsorted(mid, rows.double().contiguous(), right=False)
    return c.float(), codes


def _weight_rows(weight: Tensor, axis: int) -> Tensor:
    return weight.detach().float().movedim(axis, 0).reshape(weight.shape[axis], -1)


def encode_rows(rows: Tensor, spec: WeightSpec) -> tuple[Tensor, Tensor]:
    """(codes (C, K) in [0, 2^c), params (C or 1, P)) for weight rows under ``spec``."""
    per_channel = spec.per_channel
    if spec.kind == "int":
        scheme = Scheme(
            bits=spec.bits, symmetric=spec.symmetric, signed=False, axis=0 if per_channel else None
        )
        qp = calibrate(rows, scheme)
        from zeropoint.functional import quantize_int

        codes = quantize_int(rows, qp).long()
        params = torch.stack([qp.scale.reshape(-1), qp.zero_point.reshape(-1).float()], dim=1)
        return codes, params
    if spec.kind == "kmeans":
        if per_channel:
            levels, codes = fit_rows_kmeans(rows, spec.bits, spec.iters)
            return codes, levels
        book = KMeansCodebook.fit(rows, spec.bits, generator=spec.seed)
        levels = F.pad(
            book.table, (0, (1 << spec.bits) - book.table.numel()), value=float(book.table[-1])
        )
        return book.encode(rows).long(), levels.reshape(1, -1)
    if spec.kind == "log2":
        if per_channel:
            alpha = torch.tensor(
                [LogQuantizer.fit(row, spec.bits, rounding="linear").alpha for row in rows]
            )
        else:
            alpha = torch.tensor([LogQuantizer.fit(rows, spec.bits, rounding="linear").alpha])
        # power-of-two α: r/α is exact, and every threshold scales with α
        unit = LogQuantizer(1.0, spec.bits, rounding="linear")
        codes = unit.encode(rows / alpha.reshape(-1, 1)).long()
        return codes, alpha.reshape(-1, 1)
    if spec.kind == "binary":
        q = BinaryCodeQuantizer.fit(rows, spec.bits, axis=0 if per_channel else None)
        return q.encode(rows).long(), q.alphas.reshape(-1, spec.bits)
    fmt = _FLOATS[spec.kind]
    top = rows.abs().amax(1, keepdim=True) if per_channel else rows.abs().amax().reshape(1, 1)
    scale = torch.where(top > 0, top / fmt.max, torch.ones_like(top))
    bits = fmt.encode(rows / scale, saturate=True)
    return (bits & ((1 << fmt.bits) - 1)).long(), scale


def code_table(params: Tensor, spec: WeightSpec) -> Tensor:
    """The value of every code, (C or 1, 2^c), for the table kinds."""
    n = 1 << spec.container
    codes = torch.arange(n)
    if spec.kind == "int":
        return params[:, :1] * (codes.float().unsqueeze(0) - params[:, 1:2])
    if spec.kind == "kmeans":
        return F.pad(params, (0, n - params.shape[1]))
    if spec.kind == "log2":
        unit = LogQuantizer(1.0, spec.bits, rounding="linear")
        values = unit.decode(codes.clamp(max=(1 << spec.bits) - 1)).unsqueeze(0)
        return params * values
    if spec.kind == "binary":
        values = (params.double() @ sign_table(spec.bits).T).float()
        return F.pad(values, (0, n - values.shape[1]))
    fmt = _FLOATS[spec.kind]
    return params * fmt.decode(codes).unsqueeze(0)


# --------------------------------------------------------------------------- layers


class CodedWeight:
    """The coded weight of a layer (mixin): buffers ``weight_codes`` and ``weight_params``."""

    spec: WeightSpec
    weight_codes: Tensor
    weight_params: Tensor
    weight_shape: tuple[int, ...]
    weight_axis: int

    def _init_coded(self, layer: nn.Module, spec: WeightSpec, fit: bool = True) -> None:
        weight = layer.weight
        assert isinstance(weight, Tensor)
        self.spec = spec
        self.weight_shape = tuple(weight.shape)
        self.weight_axis = output_channel_axis(layer)
        rows = _weight_rows(weight, self.weight_axis)
        if fit:
            codes, params = encode_rows(rows, spec)
        else:  # a skeleton to load a state dict into
            codes = torch.zeros(rows.shape, dtype=torch.long)
            params = torch.zeros(rows.shape[0] if spec.per_channel else 1, _n_params(spec))
        module = self  # type: ignore[assignment]
        assert isinstance(module, nn.Module)
        module.register_parameter("weight", None)
        module.register_buffer("weight_codes", kernels.pack_codes(codes, spec.container))
        module.register_buffer("weight_params", params.float().contiguous())
        self._refresh()

    @property
    def rows_shape(self) -> tuple[int, int]:
        c = self.weight_shape[self.weight_axis]
        return c, math.prod(self.weight_shape) // c

    def _refresh(self) -> None:
        n, k = self.rows_shape
        codes = self.weight_codes
        if self.spec.kind in ("fp8_e4m3fn", "fp8_e5m2"):
            self._packed = kernels.fp8(
                codes, self.weight_params.reshape(-1).expand(n), self.spec.kind
            )
        else:  # the stored bytes as they are, with the table of every code's value
            self._packed = kernels.PackedWeight(
                codes=codes,
                kind="table",
                container=self.spec.container,
                shape=(n, k),
                group_size=k,
                scale=torch.empty(0),
                zero=torch.empty(0, dtype=torch.int32),
                table=code_table(self.weight_params, self.spec).float().contiguous(),
            )

    def dequantized_weight(self) -> Tensor:
        """The decoded weight in the layer's weight shape (float32)."""
        w = kernels.dequantize(self._packed)
        moved = (
            self.weight_shape[self.weight_axis],
            *[d for i, d in enumerate(self.weight_shape) if i != self.weight_axis],
        )
        return w.reshape(moved).movedim(0, self.weight_axis)

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        out = super()._apply(fn, recurse)  # type: ignore[misc]
        self._refresh()
        return out

    def coded_nbytes(self) -> int:
        """Bytes of the stored codes and parameters."""
        return self.weight_codes.numel() + 4 * self.weight_params.numel()


def _n_params(spec: WeightSpec) -> int:
    return {"int": 2, "kmeans": 1 << spec.bits, "log2": 1, "binary": spec.bits}.get(spec.kind, 1)


def _load_hook(module: Any, *args: Any, **kwargs: Any) -> None:
    module._refresh()


class CodedLinear(CodedWeight, nn.Linear):
    """A Linear whose weight is coded (module docstring); y = x·Ŵᵀ + b by the packed kernels."""

    def __init__(self, layer: nn.Linear, spec: WeightSpec, fit: bool = True) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.bias = (
            None
            if layer.bias is None
            else nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
        )
        self._init_coded(layer, spec, fit)
        self.register_load_state_dict_post_hook(_load_hook)

    def forward(self, x: Tensor) -> Tensor:
        return kernels.linear(x, self._packed, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weight={self.spec.label}"


class CodedConv(CodedWeight, nn.Module):
    """Conv1d / Conv2d / ConvTranspose2d with a coded weight: dequantize, then convolve."""

    def __init__(self, layer: nn.Module, spec: WeightSpec, fit: bool = True) -> None:
        nn.Module.__init__(self)
        self.conv = copy.deepcopy(layer)
        self._init_coded(layer, spec, fit)
        del self.conv.weight
        self.register_load_state_dict_post_hook(_load_hook)

    def forward(self, x: Tensor) -> Tensor:
        conv = self.conv
        w = self.dequantized_weight().to(x.dtype)
        if isinstance(conv, nn.ConvTranspose2d):
            padding: tuple[int, ...] = tuple(conv.padding)  # type: ignore[arg-type]  # not "same"
            return F.conv_transpose2d(
                x,
                w,
                conv.bias,
                conv.stride,
                padding,
                conv.output_padding,
                conv.groups,
                conv.dilation,
            )
        return conv._conv_forward(x, w, conv.bias)  # type: ignore[operator,no-any-return]

    def extra_repr(self) -> str:
        return f"{type(self.conv).__name__}, weight={self.spec.label}"


def coded_linear(layer: nn.Linear, spec: WeightSpec) -> CodedLinear:
    return CodedLinear(layer, spec)


def coded_layer(layer: nn.Module, spec: WeightSpec, fit: bool = True) -> nn.Module:
    """The coded form of a Linear, Conv1d, Conv2d or ConvTranspose2d."""
    if type(layer) is nn.Linear:
        return CodedLinear(layer, spec, fit)
    if type(layer) in (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d):
        return CodedConv(layer, spec, fit)
    raise TypeError(f"cannot code the weight of a {type(layer).__name__}")


def quantize_weights(
    model: nn.Module,
    spec: WeightSpec,
    *,
    rules: tuple[tuple[str, WeightSpec | None], ...] = (),
    types: tuple[type[nn.Module], ...] = CODED_TYPES,
    inplace: bool = False,
    fit: bool = True,
) -> nn.Module:
    """Code the weights of every layer of ``types`` (exact type) under ``spec``; ``rules`` —
    (name pattern, spec or None to keep float), first match wins — override it per layer.
    ``fit=False`` builds the layers' shapes only, to `load_state_dict` a saved coded model into."""
    model = model if inplace else copy.deepcopy(model)
    done = 0
    for name, module in list(model.named_modules()):
        if type(module) not in types or type(module) not in CODED_TYPES:
            continue
        chosen: WeightSpec | None = spec
        for pattern, rule_spec in rules:
            if name_matches(pattern, name):
                chosen = rule_spec
                break
        if chosen is None:
            continue
        model.set_submodule(name, coded_layer(module, chosen, fit))
        done += 1
    if not done:
        raise ValueError(
            f"{type(model).__name__} has no layer of the types {[t.__name__ for t in types]} to code"
        )
    return model


def model_nbytes(model: nn.Module) -> int:
    """Bytes of the model's state dict: codes, their parameters and every float tensor."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


__all__ = [
    "KINDS",
    "CodedConv",
    "CodedLinear",
    "WeightSpec",
    "code_table",
    "coded_layer",
    "coded_linear",
    "encode_rows",
    "fit_rows_kmeans",
    "model_nbytes",
    "quantize_weights",
]
