"""Quantized-simulation layers: the float layer with a weight quantizer (and optionally input and
output quantizers) — what QAT trains and what lowering and export read.

Each class subclasses its float layer (`isinstance(QuantLinear(...), nn.Linear)` holds), so code
that inspects layer types keeps working after the swap. The float weight is kept (the "shadow"
that QAT updates); the forward pass uses the fake-quantized weight Q(W):

    y = output_quant( layer(input_quant(x); Q(W), b) )

Weights are quantized per output channel: dimension 0, or dimension 1 for transposed
convolutions. Group-wise (sub-channel) weight schemes on conv weights quantize blocks of the
flattened (in · kernel) weights of each output channel.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from zeropoint.fold import output_channel_axis
from zeropoint.nn.quantizers import FakeQuant
from zeropoint.qparams import QParams

Quantizer = nn.Module  # FakeQuant or a learnable quantizer (LSQ, LSQ+, PACT)


class QuantMixin(nn.Module):
    """Weight / input / output quantizers attached to a float layer."""

    weight_quant: Quantizer | None
    input_quant: Quantizer | None
    output_quant: Quantizer | None

    def _init_quant(
        self,
        weight_quant: Quantizer | None,
        input_quant: Quantizer | None,
        output_quant: Quantizer | None,
    ) -> None:
        self.weight_quant = weight_quant
        self.input_quant = input_quant
        self.output_quant = output_quant

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

    def quantized_weight(self) -> Tensor:
        """Q(W): the fake-quantized weight, in the weight's shape."""
        w = self.float_weight
        if self.weight_quant is None:
            return w
        view = self._weight_view()
        q = self.weight_quant(view)
        if view is w:
            return q
        axis = output_channel_axis(self)
        moved = list(w.movedim(axis, 0).shape)
        return q.reshape(moved).movedim(0, axis)

    def weight_qparams(self) -> QParams:
        """The weight's (S, Z) (calibrating them from the weight if not yet done)."""
        if self.weight_quant is None:
            raise ValueError(f"{type(self).__name__} has no weight quantizer")
        if isinstance(self.weight_quant, FakeQuant) and not self.weight_quant.frozen:
            self.weight_quant.observer.update(self._weight_view().detach())
            self.weight_quant.freeze()
        return self.weight_quant.qparams()  # type: ignore[operator,no-any-return]

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
        new.__dict__.update({k: v for k, v in layer.__dict__.items() if not k.startswith("_")})
        new._parameters = layer._parameters.copy()
        new._buffers = layer._buffers.copy()
        new._modules = layer._modules.copy()
        new.training = layer.training
        new._init_quant(weight_quant, input_quant, output_quant)
        return new


class QuantLinear(QuantMixin, nn.Linear):
    def forward(self, x: Tensor) -> Tensor:
        return self._out(F.linear(self._in(x), self.quantized_weight(), self.bias))


class QuantConv1d(QuantMixin, nn.Conv1d):
    def forward(self, x: Tensor) -> Tensor:
        return self._out(self._conv_forward(self._in(x), self.quantized_weight(), self.bias))


class QuantConv2d(QuantMixin, nn.Conv2d):
    def forward(self, x: Tensor) -> Tensor:
        return self._out(self._conv_forward(self._in(x), self.quantized_weight(), self.bias))


class QuantConvTranspose2d(QuantMixin, nn.ConvTranspose2d):
    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        x = self._in(x)
        padding: tuple[int, ...] = tuple(self.padding)  # type: ignore[arg-type]  # never "same"
        output_padding = self._output_padding(
            x, output_size, list(self.stride), list(padding), list(self.kernel_size), 2,
            list(self.dilation),
        )  # fmt: skip
        y = F.conv_transpose2d(
            x, self.quantized_weight(), self.bias, self.stride, padding, output_padding,
            self.groups, self.dilation,
        )  # fmt: skip
        return self._out(y)


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
    "QuantConv1d",
    "QuantConv2d",
    "QuantConvTranspose2d",
    "QuantEmbedding",
    "QuantLinear",
    "QuantMixin",
    "is_simulated",
    "swap_in",
]
