"""Learnable quantizers for QAT: LSQ, LSQ+ and PACT.

All three compute the same uniform quantizer as `zeropoint.functional.fake_quantize`,

    x̂ = S · (clamp(round(x/S) + Z, qmin, qmax) − Z),

but written with differentiable pieces so that S (and Z, or the clip α) receive gradients:

    round_ste(v) = v + (round(v) − v).detach()          rounding with a straight-through gradient
    grad_scale(s, g) = s·g + (s − s·g).detach()          value s, gradient scaled by g

* LSQ (Esser et al., ICLR 2020): learned step S, Z = 0; ∂x̂/∂S = round(x/S) − x/S inside the
  range and qmin or qmax outside; the step's gradient is scaled by g = 1/√(N·qmax) (N: elements
  of the tensor; per channel, elements per channel). Initialised to S = 2·mean|x|/√qmax.
* LSQ+ (Bhalgat et al., CVPRW 2020): learned S and learned offset Z (a float rounded with the STE
  in the forward pass, so the simulated quantizer stays integer-exact); initialised from the
  min-max range of the first batch, for signed or asymmetric activations such as Swish/GELU.
* PACT (Choi et al. 2018): learned clipping level α for non-negative activations,
  y = clamp(x, 0, α), quantized on [0, α] with S = α/(2^b − 1), Z = 0. ∂ŷ/∂α = 1 where x ≥ α
  (straight-through elsewhere). The regulariser λ·α² is added by `pact_regularizer`.

Each module exposes ``qparams()`` so that lowering, export and saving treat it like `FakeQuant`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from zeropoint.qparams import QParams, Scheme, to_slices


def round_ste(v: Tensor) -> Tensor:
    """round(v) in the forward pass, identity gradient in the backward pass."""
    return v + (torch.round(v) - v).detach()


def grad_scale(s: Tensor, g: float) -> Tensor:
    """s in the forward pass; its gradient multiplied by g in the backward pass."""
    return s * g + (s - s * g).detach()


class _Learnable(nn.Module):
    """Shared state: a scheme, parameters of a known size (one per slice: 1 per tensor, C per
    channel) whose values are set from the first batch, and the broadcast view."""

    def __init__(self, scheme: Scheme, num_scales: int = 1) -> None:
        super().__init__()
        if scheme.group_size is not None:
            raise ValueError("learnable quantizers support per-tensor and per-channel schemes")
        if (scheme.axis is None) != (num_scales == 1) and scheme.axis is None:
            raise ValueError(f"a per-tensor scheme has one scale, not {num_scales}")
        self.scheme = scheme
        self.num_scales = num_scales
        self.axis: int | None = None
        self.initialized: Tensor
        self.register_buffer("initialized", torch.tensor(False))

    def _view(self, p: Tensor, x: Tensor) -> Tensor:
        if self.scheme.axis is None:
            return p.reshape(())
        axis = self.scheme.resolve_axis(x.dim())
        assert axis is not None
        shape = [1] * x.dim()
        shape[axis] = -1
        return p.reshape(shape)

    def _rows(self, x: Tensor) -> Tensor:
        rows = to_slices(x.detach().float(), self.scheme)
        if rows.shape[0] != self.num_scales:
            raise ValueError(
                f"{type(self).__name__} was built for {self.num_scales} scales but the tensor of "
                f"shape {tuple(x.shape)} has {rows.shape[0]} slices under {self.scheme}"
            )
        self.axis = self.scheme.resolve_axis(x.dim())
        return rows

    def _elements_per_scale(self, x: Tensor) -> int:
        return max(1, x.numel() // self.num_scales)

    def _shaped(self, t: Tensor) -> Tensor:
        return t.reshape(()) if self.scheme.axis is None else t


class LSQ(_Learnable):
    """Learned Step Size Quantization: S learned, Z = 0 (signed or unsigned formats)."""

    def __init__(self, scheme: Scheme, num_scales: int = 1) -> None:
        super().__init__(scheme, num_scales)
        self.scale = nn.Parameter(torch.ones(num_scales))

    def forward(self, x: Tensor) -> Tensor:
        qmin, qmax = self.scheme.qrange
        if not bool(self.initialized):
            mean_abs = self._rows(x).abs().mean(1)
            with torch.no_grad():
                self.scale.copy_((2 * mean_abs / math.sqrt(qmax)).clamp(min=1e-8))
            self.initialized = torch.tensor(True)
        elif self.axis is None and self.scheme.axis is not None:
            self.axis = self.scheme.resolve_axis(x.dim())
        g = 1.0 / math.sqrt(self._elements_per_scale(x) * qmax)
        s = self._view(grad_scale(self.scale.abs() + 1e-12, g), x)
        return round_ste(torch.clamp(x / s, qmin, qmax)) * s

    def qparams(self) -> QParams:
        scale = self.scale.detach().abs() + 1e-12
        zero = torch.zeros_like(scale, dtype=torch.int32)
        return QParams(self._shaped(scale), self._shaped(zero), self.scheme, self.axis)

    def extra_repr(self) -> str:
        return f"LSQ {self.scheme}"


class LSQPlus(_Learnable):
    """LSQ+: learned step S and learned (rounded) zero point Z; asymmetric schemes."""

    def __init__(self, scheme: Scheme, num_scales: int = 1) -> None:
        super().__init__(scheme, num_scales)
        self.scale = nn.Parameter(torch.ones(num_scales))
        self.offset = nn.Parameter(torch.zeros(num_scales))  # Z as a float, rounded when used

    def forward(self, x: Tensor) -> Tensor:
        qmin, qmax = self.scheme.qrange
        if not bool(self.initialized):
            rows = self._rows(x)
            lo = rows.amin(1).clamp(max=0)
            hi = rows.amax(1).clamp(min=0)
            s = ((hi - lo) / (qmax - qmin)).clamp(min=1e-8)
            with torch.no_grad():
                self.scale.copy_(s)
                self.offset.copy_(qmin - lo / s)
            self.initialized = torch.tensor(True)
        elif self.axis is None and self.scheme.axis is not None:
            self.axis = self.scheme.resolve_axis(x.dim())
        g = 1.0 / math.sqrt(self._elements_per_scale(x) * (qmax - qmin))
        s = self._view(grad_scale(self.scale.abs() + 1e-12, g), x)
        z = self._view(round_ste(torch.clamp(grad_scale(self.offset, g), qmin, qmax)), x)
        q = round_ste(x / s) + z
        return (torch.clamp(q, qmin, qmax) - z) * s

    def qparams(self) -> QParams:
        qmin, qmax = self.scheme.qrange
        scale = self.scale.detach().abs() + 1e-12
        zero = torch.round(self.offset.detach()).clamp(qmin, qmax).to(torch.int32)
        return QParams(self._shaped(scale), self._shaped(zero), self.scheme, self.axis)

    def extra_repr(self) -> str:
        return f"LSQ+ {self.scheme}"


class PACT(nn.Module):
    """Parameterized clipping activation: y = clamp(x, 0, α), quantized on [0, α].

    α is a parameter from construction; its value is set from the first batch to
    2·mean|x|·√qmax (the clip LSQ's initial step implies), unless given explicitly."""

    def __init__(self, scheme: Scheme, alpha: float | None = None) -> None:
        super().__init__()
        if scheme.signed or scheme.axis is not None or scheme.group_size is not None:
            raise ValueError(f"PACT quantizes non-negative activations per tensor; got {scheme}")
        self.scheme = scheme
        self.alpha = nn.Parameter(torch.tensor(6.0 if alpha is None else float(alpha)))
        self.initialized: Tensor
        self.register_buffer("initialized", torch.tensor(alpha is not None))
        self.axis = None

    def forward(self, x: Tensor) -> Tensor:
        qmax = self.scheme.qmax
        if not bool(self.initialized):
            with torch.no_grad():
                init = 2 * x.detach().abs().mean() * math.sqrt(qmax)
                self.alpha.fill_(float(init.clamp(min=1e-3)))
            self.initialized = torch.tensor(True)
        alpha = self.alpha.abs() + 1e-8
        # clamp(x, 0, α) = x − relu(x − α): the gradient w.r.t. α is 1 where x ≥ α
        y = torch.relu(x) - torch.relu(x - alpha)
        s = alpha.detach() / qmax
        return y + (torch.round(y / s) * s - y).detach()

    def qparams(self) -> QParams:
        scale = (self.alpha.detach().abs() + 1e-8) / self.scheme.qmax
        return QParams(scale, torch.tensor(0, dtype=torch.int32), self.scheme, None)

    def extra_repr(self) -> str:
        return f"PACT {self.scheme}, alpha={self.alpha.item():.4g}"


def pact_regularizer(model: nn.Module, weight: float = 1e-4) -> Tensor:
    """λ·Σα² over the model's PACT quantizers (add it to the training loss)."""
    terms = [m.alpha**2 for m in model.modules() if isinstance(m, PACT)]
    if not terms:
        return torch.zeros(())
    return weight * torch.stack(terms).sum()


LEARNABLE = {"lsq": LSQ, "lsq+": LSQPlus, "pact": PACT}
