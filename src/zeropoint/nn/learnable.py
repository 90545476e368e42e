"""Learnable quantizers for QAT: LSQ, LSQ+ and PACT.

All three ARE `zeropoint.functional`'s uniform quantizer — their forward pass is
`fake_quantize_learnable`, the function `fake_quantize` itself runs —

    x̂ = S · clamp(round(x/S), qmin − Z, qmax − Z),

with S (and Z) as parameters that receive gradients:

* LSQ (Esser et al., ICLR 2020): learned step S, Z = 0; ∂x̂/∂S = round(x/S) − x/S inside the
  range and qmin or qmax outside; the step's gradient is scaled by g = 1/√(N·qmax) (N: elements
  of the tensor; per channel, elements per channel). Initialised to S = 2·mean|x|/√qmax.
* LSQ+ (Bhalgat et al., CVPRW 2020): learned step S and learned offset Z (a float rounded with
  the straight-through estimator, so the simulated quantizer stays integer-exact); initialised
  to the (S, Z) of least squared error on the first batch (the MSE observer; the paper's
  §3.3 initialises by minimising the same error).
* PACT (Choi et al. 2018): learned clipping level α, S = α/qmax, Z = 0: y = clamp(x, 0, α)
  (unsigned) or clamp(x, −α, α) (signed, the narrow range [−qmax, qmax]), quantized.
  ∂ŷ/∂α = 1 where x was clipped at α (−1 at −α), straight-through elsewhere. The regulariser
  λ·α² is added by `pact_regularizer`.

**Signs.** An activation quantizer (``signed=None``, the default) decides from the first batch it
sees: signed if that batch holds a negative value, unsigned otherwise — so model inputs, logits
and pre-activations keep their negative values while post-ReLU tensors use every level on
[0, max). Its ``scheme`` (and repr, and ``qparams().scheme``) then says which: LSQ signed is
``Scheme(bits, signed=True, symmetric=True)`` (Z = 0, the LSQ paper's [−2^(b−1), 2^(b−1) − 1]),
unsigned ``Scheme(bits, signed=False)`` with Z = 0; LSQ+ keeps its zero point either way; PACT
signed is the narrow symmetric range. ``signed=True/False`` fixes the choice (weights: the weight
scheme's own).

**Scale floor.** A step that collapses (under weight decay, or on a nearly dead channel) turns
every value into a clipped one and the int32 bias of the next integer layer into nonsense. The
effective step is therefore S = max(|s|, floor), with the floor relative to the tensor quantized:

    floor_c = max|x_c| / (256 · m),   m = max(|qmin|, qmax)

i.e. the clipping level m·S may not fall below 1/256 of the largest magnitude in the slice.
For weights (``weight=True``) x_c is channel c of the current weights, recomputed every step;
for activations it is the first batch (fixed at initialisation). An all-zero slice keeps the
smallest normal float32 as floor. Below the floor the step gets no gradient. (The int32-bias
representability of S_x·S_w is enforced at conversion, for every workflow.)

Each module exposes ``qparams()`` so that lowering, export and saving treat it like `FakeQuant`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from zeropoint.functional import as_generator, fake_quantize_learnable
from zeropoint.observers.registry import calibrate
from zeropoint.qparams import MIN_SCALE, QParams, Scheme, to_slices

#: The clipping level m·S may not fall below this fraction of the slice's largest magnitude.
FLOOR_FRACTION = 1.0 / 256.0


def round_ste(v: Tensor) -> Tensor:
    """round(v) in the forward pass, identity gradient in the backward pass."""
    return v + (torch.round(v) - v).detach()


def grad_scale(s: Tensor, g: float) -> Tensor:
    """s in the forward pass; its gradient multiplied by g in the backward pass."""
    return s * g + (s - s * g).detach()


def scale_floor(rows: Tensor, scheme: Scheme) -> Tensor:
    """max|x_c| / (256 · max(|qmin|, qmax)) per row of `to_slices` (≥ the smallest normal
    float32): the floor of a learnable step (see the module docstring)."""
    m = max(abs(scheme.qmin), scheme.qmax)
    peak = rows.detach().abs().amax(1).to(torch.float32)
    return (peak * (FLOOR_FRACTION / m)).clamp(min=MIN_SCALE)


_SIGN_UNKNOWN, _UNSIGNED, _SIGNED = -1, 0, 1


class _Learnable(nn.Module):
    """Shared state: the configured and the resolved scheme, parameters of a known size (one
    per slice: 1 per tensor, C per channel) whose values are set from the first batch, the
    scale floor, and the broadcast view."""

    def __init__(
        self,
        scheme: Scheme,
        num_scales: int = 1,
        *,
        signed: bool | None = None,
        weight: bool = False,
        generator: torch.Generator | int | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if not isinstance(scheme, Scheme):
            raise TypeError(f"{name} needs a Scheme, got {type(scheme).__name__}")
        if scheme.group_size is not None:
            raise ValueError(
                f"{name}: learnable quantizers support per-tensor and per-channel schemes, not "
                f"{scheme}"
            )
        if scheme.float_format is not None:
            raise ValueError(
                f"{name} learns the step of an integer grid; {scheme} is a float format: for "
                "fp8 / fp4 QAT use learnable=None (the scale follows the amax, S = amax / max)"
            )
        if isinstance(num_scales, bool) or not isinstance(num_scales, int) or num_scales < 1:
            raise ValueError(f"{name}: num_scales={num_scales!r} must be a positive int")
        if scheme.axis is None and num_scales != 1:
            raise ValueError(f"{name}: a per-tensor scheme has one scale, not {num_scales}")
        if signed is not None and not isinstance(signed, bool):
            raise TypeError(f"{name}: signed must be True, False or None, got {signed!r}")
        self.configured = scheme
        self.scheme = scheme if signed is None else self._scheme_for(signed)
        self.signed = signed
        self.weight = bool(weight)
        self.generator = as_generator(generator, scheme)
        self.num_scales = num_scales
        self.axis: int | None = (
            scheme.axis if scheme.axis is not None and scheme.axis >= 0 else None
        )
        self.initialized: Tensor
        self.sign_state: Tensor
        self.floor: Tensor
        self.register_buffer("initialized", torch.tensor(False))
        self._ready = False  # a Python mirror of `initialized`: no tensor read per forward
        state = _SIGN_UNKNOWN if signed is None else (_SIGNED if signed else _UNSIGNED)
        self.register_buffer("sign_state", torch.tensor(state, dtype=torch.int8))
        self.register_buffer("floor", torch.full((num_scales,), MIN_SCALE))

    # ------------------------------------------------------------------ subclass hooks
    def _scheme_for(self, signed: bool) -> Scheme:
        raise NotImplementedError

    def _initialize(self, rows: Tensor) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ shared machinery
    def _prepare(self, x: Tensor) -> None:
        """First batch: resolve the sign, the axis and the parameters; weights: the floor."""
        if not self._ready and not bool(self.initialized):
            if self.signed is None:
                negative = bool((x.detach() < 0).any())
                self._set_sign(negative)
            rows = self._rows(x)
            with torch.no_grad():
                self.floor.copy_(scale_floor(rows, self.scheme))
                self._initialize(rows)
            self.initialized.fill_(True)
            self._ready = True
        else:
            self._ready = True
            if self.axis is None and self.scheme.axis is not None:
                self.axis = self.scheme.resolve_axis(x.dim())
            if self.weight:
                with torch.no_grad():
                    self.floor.copy_(scale_floor(self._rows(x), self.scheme))

    def _set_sign(self, signed: bool) -> None:
        self.scheme = self._scheme_for(signed)
        self.sign_state.fill_(_SIGNED if signed else _UNSIGNED)

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

    def _step(self, s: Tensor) -> Tensor:
        """The effective step max(|s|, floor) (no gradient below the floor)."""
        return torch.maximum(s.abs(), self.floor)

    def _check_initialized(self) -> None:
        if not bool(self.initialized):
            raise ValueError(
                f"{type(self).__name__} ({self.configured}) has seen no data: run the model "
                "once (e.g. prepare_qat(..., example_inputs=x)) before asking for its qparams"
            )

    def _rounding(self) -> tuple[Scheme, torch.Generator | None]:
        """The scheme and generator of this forward: stochastic rounding only while training,
        to nearest in eval mode (as deployed; see `zeropoint.nn.quantizers`)."""
        if self.scheme.rounding == "stochastic" and not self.training:
            return self.scheme.with_(rounding="half_even"), None
        return self.scheme, self.generator

    def _resolved_axis(self) -> int | None:
        return self.axis if self.axis is not None else self.scheme.axis

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args)
        self._ready = bool(self.initialized)
        state = int(self.sign_state)
        if state != _SIGN_UNKNOWN:
            self.scheme = self._scheme_for(state == _SIGNED)

    def _describe(self, kind: str) -> str:
        if int(self.sign_state) == _SIGN_UNKNOWN:
            return f"{kind} {self.configured} (signed or unsigned: from the first batch)"
        how = "from data" if self.signed is None else "fixed"
        return f"{kind} {self.scheme} ({'signed' if self.scheme.signed else 'unsigned'}, {how})"


class LSQ(_Learnable):
    """Learned Step Size Quantization: S learned, Z = 0 (signed or unsigned, see the module
    docstring). ``weight=True``: a weight quantizer (the floor follows the weights)."""

    def __init__(
        self,
        scheme: Scheme,
        num_scales: int = 1,
        *,
        signed: bool | None = None,
        weight: bool = False,
        generator: torch.Generator | int | None = None,
    ) -> None:
        super().__init__(scheme, num_scales, signed=signed, weight=weight, generator=generator)
        self.scale = nn.Parameter(torch.ones(num_scales))

    def _scheme_for(self, signed: bool) -> Scheme:
        if signed:
            return self.configured.with_(signed=True, symmetric=True)
        return self.configured.with_(signed=False, symmetric=False)

    def _initialize(self, rows: Tensor) -> None:
        mean_abs = rows.abs().mean(1)
        self.scale.copy_(torch.maximum(2 * mean_abs / math.sqrt(self.scheme.qmax), self.floor))

    def forward(self, x: Tensor) -> Tensor:
        self._prepare(x)
        g = 1.0 / math.sqrt(self._elements_per_scale(x) * self.scheme.qmax)
        s = self._view(self._step(self.scale), x)
        return fake_quantize_learnable(x, s, 0.0, *self._rounding(), grad_factor=g)

    def qparams(self) -> QParams:
        self._check_initialized()
        scale = self._step(self.scale.detach())
        zero = torch.zeros_like(scale, dtype=torch.int32)
        return QParams(self._shaped(scale), self._shaped(zero), self.scheme, self._resolved_axis())

    def extra_repr(self) -> str:
        return self._describe("LSQ")


class LSQPlus(_Learnable):
    """LSQ+: learned step S and learned (rounded) zero point Z, affine; signed or unsigned
    integer range by the data (see the module docstring)."""

    def __init__(
        self,
        scheme: Scheme,
        num_scales: int = 1,
        *,
        signed: bool | None = None,
        weight: bool = False,
        generator: torch.Generator | int | None = None,
    ) -> None:
        super().__init__(scheme, num_scales, signed=signed, weight=weight, generator=generator)
        self.scale = nn.Parameter(torch.ones(num_scales))
        self.offset = nn.Parameter(torch.zeros(num_scales))  # Z as a float, rounded when used

    def _scheme_for(self, signed: bool) -> Scheme:
        return self.configured.with_(signed=signed, symmetric=False)

    def _initialize(self, rows: Tensor) -> None:
        # the (S, Z) of least squared error on the first batch (Bhalgat et al. §3.3 initialise
        # LSQ+ by minimising that error; min-max would waste levels on the extremes at 2 bits)
        qp = calibrate(rows, self.scheme.with_(axis=0, rounding="half_even"), "mse")
        self.scale.copy_(torch.maximum(qp.scale, self.floor))
        self.offset.copy_(qp.zero_point.to(self.offset.dtype))

    def forward(self, x: Tensor) -> Tensor:
        self._prepare(x)
        qmin, qmax = self.scheme.qrange
        g = 1.0 / math.sqrt(self._elements_per_scale(x) * (qmax - qmin))
        s = self._view(self._step(self.scale), x)
        z = self._view(round_ste(torch.clamp(self.offset, qmin, qmax)), x)
        return fake_quantize_learnable(x, s, z, *self._rounding(), grad_factor=g)

    def qparams(self) -> QParams:
        self._check_initialized()
        qmin, qmax = self.scheme.qrange
        scale = self._step(self.scale.detach())
        zero = torch.round(self.offset.detach()).clamp(qmin, qmax).to(torch.int32)
        return QParams(self._shaped(scale), self._shaped(zero), self.scheme, self._resolved_axis())

    def extra_repr(self) -> str:
        return self._describe("LSQ+")


class PACT(_Learnable):
    """Parameterized clipping activation: y = clamp(x, 0, α) (unsigned) or clamp(x, −α, α)
    (signed), quantized with S = α/qmax, Z = 0, per tensor.

    α is a parameter from construction; its value is set from the first batch to
    2·mean|x|·√qmax (the clip LSQ's initial step implies), unless ``alpha`` is given."""

    def __init__(
        self,
        scheme: Scheme,
        alpha: float | None = None,
        *,
        signed: bool | None = None,
        generator: torch.Generator | int | None = None,
    ) -> None:
        if isinstance(scheme, Scheme) and scheme.axis is not None:
            raise ValueError(f"PACT learns one clipping level per tensor; got {scheme}")
        super().__init__(scheme, 1, signed=signed, generator=generator)
        if alpha is not None and (
            isinstance(alpha, bool)
            or not isinstance(alpha, int | float)
            or not (math.isfinite(alpha) and alpha > 0)
        ):
            raise ValueError(f"PACT alpha={alpha!r} must be a finite number > 0")
        self.alpha = nn.Parameter(torch.tensor(6.0 if alpha is None else float(alpha)))
        self.alpha_given = alpha is not None

    def _scheme_for(self, signed: bool) -> Scheme:
        if signed:
            return self.configured.with_(signed=True, symmetric=True, narrow=True)
        return self.configured.with_(signed=False, symmetric=False)

    def _initialize(self, rows: Tensor) -> None:
        self.floor.mul_(self.scheme.qmax)  # the floor of α = qmax · (the floor of S)
        if not self.alpha_given:
            init = 2 * rows.abs().mean() * math.sqrt(self.scheme.qmax)
            self.alpha.fill_(float(torch.maximum(init, self.floor[0])))

    def _clip(self, alpha: Tensor) -> Tensor:
        return torch.maximum(alpha.abs(), self.floor[0])

    def forward(self, x: Tensor) -> Tensor:
        self._prepare(x)
        s = self._clip(self.alpha) / self.scheme.qmax
        return fake_quantize_learnable(
            x, s.reshape(()), 0.0, *self._rounding(), step_gradient=False
        )

    def qparams(self) -> QParams:
        self._check_initialized()
        scale = self._clip(self.alpha.detach()) / self.scheme.qmax
        return QParams(scale, torch.tensor(0, dtype=torch.int32), self.scheme, None)

    def extra_repr(self) -> str:
        return f"{self._describe('PACT')}, alpha={self.alpha.item():.4g}"


def pact_regularizer(model: nn.Module, weight: float = 1e-4) -> Tensor:
    """λ·Σα² over the model's PACT quantizers (add it to the training loss)."""
    terms = [m.alpha**2 for m in model.modules() if isinstance(m, PACT)]
    if not terms:
        return torch.zeros(())
    return weight * torch.stack(terms).sum()


def quantizer_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of every learnable quantizer in ``model`` (steps, offsets, clip levels)."""
    seen: set[int] = set()
    params: list[nn.Parameter] = []
    for m in model.modules():
        if isinstance(m, _Learnable):
            for p in m.parameters(recurse=False):
                if id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
    return params


LEARNABLE = {"lsq": LSQ, "lsq+": LSQPlus, "pact": PACT}
