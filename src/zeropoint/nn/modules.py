"""Quantized-simulation layers: the float layer with a weight quantizer (and optionally input and
output quantizers) — what QAT trains and what lowering and export read.

Each class subclasses its float layer (`isinstance(QuantLinear(...), nn.Linear)` holds), so code
that inspects layer types keeps working after the swap. The float weight is kept (the "shadow"
that QAT updates); the forward pass uses the fake-quantized weight Q(W) and, once the layer's
input grid (S_x, Z_x) is frozen, the bias as the integer engine stores it (`zeropoint.bias`):

    y = output_quant( layer(input_quant(x); Q(W), S_b·round(b / S_b)) ),   S_b = S_x·S_w

so the simulation, the integer engine and the ONNX export compute the same function up to the
rounding of the requantization. While calibrating (the input grid not frozen yet) and while
training QAT the bias stays in float.

Weights are quantized per output channel: dimension 0, or dimension 1 for transposed
convolutions. Group-wise (sub-channel) weight schemes on conv weights quantize blocks of the
flattened (in · kernel) weights of each output channel. A batch norm that cannot be folded into
a neighbouring layer (e.g. one that follows a ReLU) becomes a `QuantChannelAffine`: y = w_c·x + b_c
per channel, with the same weight/bias treatment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zeropoint.bias import bias_qparams, bias_safe_weight_qparams, integer_bias
from zeropoint.fold import bn_scale_shift, output_channel_axis
from zeropoint.functional import dequantize_int, fake_quantize, quantize_int
from zeropoint.nn.quantizers import FakeQuant
from zeropoint.qparams import QParams

Quantizer = nn.Module  # FakeQuant or a learnable quantizer (LSQ, LSQ+, PACT)


@dataclass(eq=False)
class GridRef:
    """Where a layer's input grid lives: ``quantizers[key]``, looked up on every use so that a
    quantizer replaced later (QAT conversion, loading) is the one read. Not a module: it adds
    nothing to the state dict."""

    quantizers: nn.ModuleDict
    key: str

    def quantizer(self) -> nn.Module | None:
        return self.quantizers._modules.get(self.key)


def frozen_qparams(quantizer: nn.Module | None) -> QParams | None:
    """The (S, Z) of a FakeQuant that runs with frozen parameters (mode "quantize"), else None."""
    if isinstance(quantizer, FakeQuant) and quantizer.mode == "quantize" and quantizer.frozen:
        return quantizer.qparams()
    return None


def active_qparams(quantizer: nn.Module | None) -> QParams | None:
    """The (S, Z) a quantizer applies right now: frozen, tracked or learned (QAT), else None
    (observing, off, or not initialised yet)."""
    if isinstance(quantizer, FakeQuant):
        if quantizer.mode in ("quantize", "learn", "track") and quantizer.frozen:
            return quantizer.qparams()
        return None
    if quantizer is not None and bool(getattr(quantizer, "initialized", False)):
        return quantizer.qparams()  # type: ignore[operator,no-any-return]
    return None


def _deployable(x_qp: QParams, y_qp: QParams, w_qp: QParams) -> bool:
    """Grids the integer engine runs: ≤ 8-bit per-tensor activations, symmetric ≤ 8-bit
    per-tensor or per-channel weights, all integer (fp8 / fp4 grids have no integer kernel)."""
    if any(q.scheme.float_format is not None for q in (x_qp, y_qp, w_qp)):
        return False
    activations = all(q.scheme.bits <= 8 and q.scale.dim() == 0 for q in (x_qp, y_qp))
    w = w_qp.scheme
    return activations and w.bits <= 8 and w.symmetric and w.group_size is None


class QuantMixin(nn.Module):
    """Weight / input / output quantizers attached to a float layer."""

    weight_quant: Quantizer | None
    input_quant: Quantizer | None
    output_quant: Quantizer | None
    input_grid: GridRef | None

    def _init_quant(
        self,
        weight_quant: Quantizer | None,
        input_quant: Quantizer | None,
        output_quant: Quantizer | None,
    ) -> None:
        self.weight_quant = weight_quant
        self.input_quant = input_quant
        self.output_quant = output_quant
        self.__dict__.setdefault("input_grid", None)

    @property
    def float_weight(self) -> Tensor:
        """The float (shadow) weight W."""
        w = self._parameters["weight"]
        assert w is not None
        return w

    def _weight_view(self) -> Tensor:
        w = self.float_weight
        scheme = getattr(self.weight_quant, "scheme", None)
        if scheme is not None and scheme.group_size is not None and w.dim() > 2:
            axis = output_channel_axis(self)
            return w.movedim(axis, 0).reshape(w.shape[axis], -1)
        return w

    def input_qparams(self) -> QParams | None:
        """(S_x, Z_x) of this layer's input as its quantizer applies it now (None while
        calibrating)."""
        if self.input_quant is not None:
            return active_qparams(self.input_quant)
        grid = self.__dict__.get("input_grid")
        return active_qparams(grid.quantizer()) if grid is not None else None

    def _frozen_weight_qparams(self) -> QParams | None:
        """The weight's (S, Z) when its quantizer is frozen, raised where the bias needs it."""
        base = frozen_qparams(self.weight_quant)
        if base is None:
            return None
        return bias_safe_weight_qparams(
            base, self._parameters.get("bias"), self.input_qparams(), type(self).__name__
        )

    def quantized_weight(self) -> Tensor:
        """Q(W): the fake-quantized weight, in the weight's shape."""
        w = self.float_weight
        if self.weight_quant is None:
            return w
        view = self._weight_view()
        frozen = self._frozen_weight_qparams()
        q = self.weight_quant(view) if frozen is None else fake_quantize(view, frozen)
        if view is w:
            return q
        axis = output_channel_axis(self)
        moved = list(w.movedim(axis, 0).shape)
        return q.reshape(moved).movedim(0, axis)

    def quantized_bias(self, bias: Tensor | None = None) -> Tensor | None:
        """The bias as the engine stores it, S_b·round(b / S_b) with S_b = S_x·S_w, whenever the
        input and weight quantizers apply parameters (after convert, and while training QAT —
        so that QAT learns with the bias it will run with); the float bias while calibrating.
        ``bias``: another bias (e.g. folded with a batch norm) on the same grids."""
        bias = self._parameters.get("bias") if bias is None else bias
        if bias is None:
            return None
        x_qp = self.input_qparams()
        w_qp = self._frozen_weight_qparams() or active_qparams(self.weight_quant)
        if x_qp is None or w_qp is None or w_qp.scheme.group_size is not None:
            return bias
        if not integer_bias(x_qp, w_qp):  # fp8 / fp4 grids: the bias stays float
            return bias
        if w_qp.scale.dim() > 1 or x_qp.scale.dim() != 0:
            return bias
        return fake_quantize(bias, bias_qparams(x_qp, w_qp))

    def weight_qparams(self) -> QParams:
        """The weight's (S, Z) (calibrating them from the weight if not yet done); frozen weights
        have their scale raised where the int32 bias needs it (`zeropoint.bias`)."""
        if self.weight_quant is None:
            raise ValueError(f"{type(self).__name__} has no weight quantizer")
        if isinstance(self.weight_quant, FakeQuant) and not self.weight_quant.frozen:
            self.weight_quant.observer.update(self._weight_view().detach())
            self.weight_quant.freeze()
        frozen = self._frozen_weight_qparams()
        if frozen is not None:
            return frozen
        return self.weight_quant.qparams()  # type: ignore[operator,no-any-return]

    def _deployed(self, x: Tensor) -> Tensor | None:
        """At inference after convert (eval mode, no gradient), the layer runs the integer
        program's own kernel on its input codes: the converted simulation then computes what is
        deployed, code for code (`zeropoint.ops.layers.deployed_layer`). None where that does
        not apply (training, calibrating, module-boundary models)."""
        if self.training or torch.is_grad_enabled() or self.input_quant is not None:
            return None
        out: GridRef | None = self.__dict__.get("output_grid")
        grid: GridRef | None = self.__dict__.get("input_grid")
        if out is None or grid is None:
            return None
        x_qp, y_qp = frozen_qparams(grid.quantizer()), frozen_qparams(out.quantizer())
        w = self._parameters["weight"]
        w_qp = frozen_qparams(self.weight_quant)
        if x_qp is None or y_qp is None or w_qp is None or w is None:
            return None
        if not _deployable(x_qp, y_qp, w_qp):
            return None  # no integer kernel (to_integer says why): the float simulation runs
        b = self._parameters.get("bias")
        clip = self.__dict__.get("output_clip")
        rounding = str(self.__dict__.get("requantization", "float32"))
        wq: Any = self.weight_quant

        def version(t: Tensor | None) -> tuple[int, int] | None:
            return None if t is None else (id(t), t._version)

        key = (version(w), version(b), version(wq.scale), version(wq.zero_point),
               float(x_qp.scale), int(x_qp.zero_point), float(y_qp.scale),
               int(y_qp.zero_point), clip, rounding)  # fmt: skip
        cached = self.__dict__.get("_deployed_kernel")
        if cached is None or cached[0] != key:
            from zeropoint.ops.layers import deployed_layer

            cached = (key, deployed_layer(self, x_qp, y_qp, clip, rounding))
            self.__dict__["_deployed_kernel"] = cached
        codes = quantize_int(x.float(), x_qp).to(torch.int8 if x_qp.scheme.signed else torch.uint8)
        y = dequantize_int(cached[1]([codes]), y_qp)
        # the memory format torch's float layer would return (the kernels write channels-last)
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1:
            return y.contiguous(memory_format=torch.channels_last)
        return y.contiguous()

    def _in(self, x: Tensor) -> Tensor:
        return self.input_quant(x) if self.input_quant is not None else x

    def _out(self, y: Tensor) -> Tensor:
        return self.output_quant(y) if self.output_quant is not None else y

    @classmethod
    def from_float(
        cls,
        layer: nn.Module,
        weight_quant: Quantizer | None,
        input_quant: Quantizer | None = None,
        output_quant: Quantizer | None = None,
    ) -> Any:
        """A simulation layer with ``layer``'s hyper-parameters; parameters are shared."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        keep = {k: v for k, v in layer.__dict__.items() if not k.startswith("_")}
        if "_reversed_padding_repeated_twice" in layer.__dict__:  # conv padding modes need it
            keep["_reversed_padding_repeated_twice"] = layer._reversed_padding_repeated_twice
        new.__dict__.update(keep)
        new._parameters = layer._parameters.copy()
        new._buffers = layer._buffers.copy()
        new._modules = layer._modules.copy()
        new.training = layer.training
        new._init_quant(weight_quant, input_quant, output_quant)
        return new


class QuantLinear(QuantMixin, nn.Linear):
    def forward(self, x: Tensor) -> Tensor:
        deployed = self._deployed(x)
        if deployed is not None:
            return deployed
        return self._out(F.linear(self._in(x), self.quantized_weight(), self.quantized_bias()))


class QuantConv1d(QuantMixin, nn.Conv1d):
    def forward(self, x: Tensor) -> Tensor:
        deployed = self._deployed(x)
        if deployed is not None:
            return deployed
        w, b = self.quantized_weight(), self.quantized_bias()
        return self._out(self._conv_forward(self._in(x), w, b))


class QuantConv2d(QuantMixin, nn.Conv2d):
    def forward(self, x: Tensor) -> Tensor:
        deployed = self._deployed(x)
        if deployed is not None:
            return deployed
        w, b = self.quantized_weight(), self.quantized_bias()
        return self._out(self._conv_forward(self._in(x), w, b))


class _QuantConvTranspose(QuantMixin):
    """Shared forward of the transposed convolutions (1-D and 2-D)."""

    _dims: int
    _fn: Any

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        m: Any = self  # the float ConvTranspose's attributes (a mixin cannot declare them)
        deployed = self._deployed(x) if output_size is None else None
        if deployed is not None:
            return deployed
        x = self._in(x)
        padding = tuple(m.padding)
        output_padding = m._output_padding(
            x, output_size, list(m.stride), list(padding), list(m.kernel_size), self._dims,
            list(m.dilation),
        )  # fmt: skip
        y = type(self)._fn(
            x, self.quantized_weight(), self.quantized_bias(), m.stride, padding, output_padding,
            m.groups, m.dilation,
        )  # fmt: skip
        return self._out(y)


class QuantConvTranspose1d(_QuantConvTranspose, nn.ConvTranspose1d):  # type: ignore[misc]
    _dims = 1
    _fn = staticmethod(F.conv_transpose1d)


class QuantConvTranspose2d(_QuantConvTranspose, nn.ConvTranspose2d):  # type: ignore[misc]
    _dims = 2
    _fn = staticmethod(F.conv_transpose2d)


class QuantChannelAffine(QuantMixin):
    """y = w_c·x + b_c along dimension 1 (channels): a batch norm in inference form that could not
    be folded into a linear neighbour, with per-channel quantized w (exact: one value per channel
    is its scale times ±qmax) and the int32 bias of any quantized layer."""

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        super().__init__()
        if weight.dim() != 1 or weight.shape != bias.shape:
            raise ValueError(
                f"channel affine needs 1-D weight and bias of one shape, got "
                f"{tuple(weight.shape)} and {tuple(bias.shape)}"
            )
        self.weight = nn.Parameter(weight.detach().float().clone())
        self.bias = nn.Parameter(bias.detach().float().clone())
        self._init_quant(None, None, None)

    @classmethod
    def from_batchnorm(cls, bn: nn.modules.batchnorm._BatchNorm) -> QuantChannelAffine:
        """BN(x) = s·x + t with s = γ/√(σ² + ε), t = β − s·μ (running statistics)."""
        s, t = bn_scale_shift(bn)
        return cls(s.float(), t.float())

    @property
    def num_channels(self) -> int:
        return int(self.float_weight.shape[0])

    def forward(self, x: Tensor) -> Tensor:
        deployed = self._deployed(x)
        if deployed is not None:
            return deployed
        x = self._in(x)
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(
                f"channel affine of {self.num_channels} channels got input of shape {tuple(x.shape)}"
            )
        view = [1, -1] + [1] * (x.dim() - 2)
        w = self.quantized_weight().reshape(view)
        b = self.quantized_bias()
        assert b is not None
        return self._out(x * w + b.reshape(view))

    def extra_repr(self) -> str:
        return f"channels={self.num_channels}"


class QuantEmbedding(QuantMixin, nn.Embedding):
    def forward(self, idx: Tensor) -> Tensor:
        y = F.embedding(
            idx,
            self.quantized_weight(),
            self.padding_idx,
            self.max_norm,
            self.norm_type,
            self.scale_grad_by_freq,
            self.sparse,
        )
        return self._out(y)


#: float layer type → simulation type (module swap registry)
SIMULATION_MODULES: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: QuantLinear,
    nn.Conv1d: QuantConv1d,
    nn.Conv2d: QuantConv2d,
    nn.ConvTranspose1d: QuantConvTranspose1d,
    nn.ConvTranspose2d: QuantConvTranspose2d,
    nn.Embedding: QuantEmbedding,
}


def is_simulated(module: nn.Module) -> bool:
    return isinstance(module, QuantMixin)


def swap_in(module: nn.Module) -> type[nn.Module] | None:
    """The simulation class for ``module`` (exact type match), or None."""
    return SIMULATION_MODULES.get(type(module))


__all__ = [
    "SIMULATION_MODULES",
    "GridRef",
    "QuantChannelAffine",
    "QuantConv1d",
    "QuantConv2d",
    "QuantConvTranspose1d",
    "QuantConvTranspose2d",
    "QuantEmbedding",
    "QuantLinear",
    "QuantMixin",
    "active_qparams",
    "frozen_qparams",
    "is_simulated",
    "swap_in",
]
