"""Quantizer modules: observe a tensor stream, then fake-quantize it with frozen QParams.

`FakeQuant` is the module form of `zeropoint.functional.fake_quantize` with an observer attached.
Its mode says what forward does:

    "observe"   record statistics with the observer and pass x through unchanged (calibration)
    "quantize"  x ↦ fake_quantize(x, qparams) with the frozen (S, Z) (simulation, export, QAT)
    "dynamic"   choose (S, Z) from this very x (min-max, per tensor or per token), then quantize
    "learn"     QAT activations: update the observer (e.g. a moving average), then quantize with
                the range it holds now (torch.ao's FakeQuantize with its observer enabled)
    "off"       pass x through

For QAT the weight quantizer runs in mode "track": it re-derives (S, Z) from the current float
weights on every forward (weights re-quantized from the float shadow after every update).

Stochastic rounding (``Scheme(rounding="stochastic")``, with a ``generator``) is a training-time
estimator: it applies while the module is in training mode; in eval mode the quantizer rounds to
nearest (half to even), as the deployed model does — ONNX QuantizeLinear and the integer engine
round to nearest, so an evaluation before `zp.convert` measures what will be deployed, and
`to_nearest` (called by conversion) makes it permanent.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from zeropoint.functional import as_generator, fake_quantize
from zeropoint.observers.registry import calibrate, make_observer
from zeropoint.qparams import QParams, Scheme


def nearest(scheme: Scheme) -> Scheme:
    """``scheme`` rounding to nearest (half to even) where it rounds stochastically."""
    return scheme.with_(rounding="half_even") if scheme.rounding == "stochastic" else scheme


MODES = ("observe", "quantize", "dynamic", "track", "learn", "off")


class FakeQuant(nn.Module):
    """An observer plus frozen quantization parameters for one tensor (a weight or an edge)."""

    def __init__(
        self,
        scheme: Scheme,
        observer: str = "minmax",
        observer_options: dict[str, Any] | None = None,
        mode: str = "observe",
        generator: torch.Generator | int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(scheme, Scheme):
            raise TypeError(f"FakeQuant needs a Scheme, got {type(scheme).__name__}")
        # stochastic rounding draws from this generator (never from the global RNG)
        self.generator = as_generator(generator, scheme)
        self.scheme = scheme
        self.observer_name = observer
        self.observer_options = dict(observer_options or {})
        self.observer = make_observer(observer, scheme, **self.observer_options)
        self.register_buffer("scale", torch.empty(0))
        self.register_buffer("zero_point", torch.empty(0, dtype=torch.int32))
        self.axis: int | None = None
        self.mode = mode

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"FakeQuant mode {value!r} is unknown: expected one of {MODES}")
        self._mode = value

    @property
    def frozen(self) -> bool:
        return self.scale.numel() > 0

    def forward(self, x: Tensor) -> Tensor:
        mode = self._mode
        if mode == "off":
            return x
        if mode == "observe":
            self.observer.update(x)
            return x
        if mode == "learn":
            self.observer.update(x)
            qp = self.observer.qparams()
            self.set_qparams(qp)
            return self._fake_quantize(x, qp)
        if mode in ("dynamic", "track"):
            qp = calibrate(x.detach(), self.scheme, self.observer_name, **self.observer_options)
            if mode == "track":
                self.set_qparams(qp)
            return self._fake_quantize(x, qp)
        return self._fake_quantize(x, self.qparams())

    def _fake_quantize(self, x: Tensor, qp: QParams) -> Tensor:
        """Stochastic rounding while training, to nearest in eval mode (module docstring)."""
        if qp.scheme.rounding == "stochastic" and not self.training:
            qp = QParams(qp.scale, qp.zero_point, nearest(qp.scheme), qp.axis)
        return fake_quantize(x, qp, self.generator)

    def to_nearest(self) -> FakeQuant:
        """Round to nearest from now on, in every mode (conversion calls it): the scheme's
        stochastic rounding becomes half to even and the generator is dropped."""
        if self.scheme.rounding == "stochastic":
            self.scheme = nearest(self.scheme)
            self.observer.scheme = self.scheme
            self.generator = None
        return self

    def freeze(self) -> QParams:
        """Take (S, Z) from the observer and switch to mode "quantize"."""
        qp = self.observer.qparams()
        self.set_qparams(qp)
        self.mode = "quantize"
        return qp

    def set_qparams(self, qp: QParams) -> None:
        if qp.scheme != self.scheme:
            raise ValueError(
                f"QParams scheme {qp.scheme} differs from this quantizer's {self.scheme}"
            )
        self.scale = qp.scale.detach().clone()
        self.zero_point = qp.zero_point.detach().clone()
        self.axis = qp.axis

    def qparams(self) -> QParams:
        """The frozen (S, Z); raises if the quantizer was never calibrated."""
        if not self.frozen:
            raise ValueError(
                f"quantizer ({self.scheme}) has no quantization parameters: calibrate the model "
                "(feed data in observe mode, then freeze/convert) before quantizing"
            )
        return QParams(self.scale, self.zero_point, self.scheme, self.axis)

    def extra_repr(self) -> str:
        text = f"{self.scheme}, observer={self.observer_name}, mode={self._mode}"
        if self.frozen and self.scale.numel() == 1:
            text += f", scale={self.scale.item():.4g}, zero_point={int(self.zero_point)}"
        elif self.frozen:
            text += f", scales={tuple(self.scale.shape)}"
        return text

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # scale/zero_point change shape when frozen: adopt the stored shapes before loading
        for name in ("scale", "zero_point"):
            key = prefix + name
            if key in state_dict:
                setattr(self, name, torch.empty_like(state_dict[key]))
        super()._load_from_state_dict(state_dict, prefix, *args)
