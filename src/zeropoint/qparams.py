"""Quantization schemes (what to do) and quantization parameters (the numbers).

Convention used everywhere in zeropoint (gemmlowp / TFLite / ONNX):

    r = S · (q − Z)          real value r, integer q in [qmin, qmax], scale S > 0, zero point Z

Other conventions in the literature map onto it directly:
  * Jacob et al. 2018 and ONNX:   q = round(r / S) + Z            (the same thing)
  * Gholami et al. 2021 survey:   Q(r) = Int(r / S) − Z           (their Z is our −Z)
  * Nagel et al. 2021 white paper: x_int = clamp(round(x / s) + z)  (s = S, z = Z)

Float formats (``Scheme(float_format="e4m3fn")``: fp8 e4m3fn / e5m2, fp4 e2m1) use the same
convention with Z = 0 and the format's own values in place of the integers — the scaled fp8 of
serving stacks, r̂ = S·fp8(r / S) with S = amax / max_f — and their codes are the format's bit
patterns (unsigned b-bit integers: what a torch float8 tensor stores).

Granularity is described by two fields of `Scheme`:
  * per-tensor:  axis=None, group_size=None — one (S, Z) for the whole tensor;
  * per-channel: axis=k — one (S, Z) per index along axis k (k=0: output channels of a weight);
  * group-wise / sub-channel: group_size=g — blocks of g consecutive elements along `axis`
    (default: the last axis) each get their own (S, Z). This is ONNX blocked quantization: the
    scale has the input's shape with dimension `axis` divided by g. For a Linear weight (out, in)
    blocked along axis 1, every block lies inside one output channel (sub-channel quantization).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import Tensor

from zeropoint.formats import FP4_E2M1, FP8_E4M3, FP8_E5M2, FloatFormat, IntFormat
from zeropoint.validation import check_finite

Rounding = Literal["half_even", "half_away", "floor", "stochastic"]
ROUNDING_MODES: tuple[str, ...] = ("half_even", "half_away", "floor", "stochastic")

#: Float formats a Scheme can quantize to (``Scheme.float_format``), by name.
FLOAT_SCHEME_FORMATS: dict[str, FloatFormat] = {
    "e4m3fn": FP8_E4M3,
    "e5m2": FP8_E5M2,
    "e2m1": FP4_E2M1,
}

#: Bit widths a Scheme accepts: 1..16 for data, 32 for int32 biases and accumulators.
MAX_DATA_BITS = 16
ACCUMULATOR_BITS = 32


@dataclass(frozen=True)
class Scheme:
    """How to quantize a tensor: bit width, signedness, symmetry, range, granularity, rounding.

    * ``symmetric=True``: the scale transform, Z = 0 for signed formats (Z at the midpoint for
      unsigned ones, as torch does); ``symmetric=False``: the affine transform with a zero point.
    * ``narrow=True``: restricted range, e.g. int8 [−127, 127] instead of [−128, 127].
    * ``axis`` / ``group_size``: granularity (see the module docstring).
    * ``rounding``: ``half_even`` (default; torch and ONNX), ``half_away`` (from zero), ``floor``,
      ``stochastic`` (unbiased: ⌊r⌋ + 1 with probability r − ⌊r⌋).
    * ``float_format``: None (integers), or "e4m3fn" / "e5m2" (fp8, ``bits=8``) / "e2m1" (fp4,
      ``bits=4``): r/S is rounded to the float format (nearest, ties to even, saturating at
      ±max) instead of to an integer, with Z = 0 — a float scheme is symmetric by nature
      (``symmetric`` is set to True), signed, full range, and rounds half to even.
    """

    bits: int = 8
    symmetric: bool = False
    narrow: bool = False
    signed: bool = True
    axis: int | None = None
    group_size: int | None = None
    rounding: str = "half_even"
    float_format: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or isinstance(self.bits, bool):
            raise TypeError(f"Scheme.bits must be an int, got {type(self.bits).__name__}")
        if not (1 <= self.bits <= MAX_DATA_BITS or self.bits == ACCUMULATOR_BITS):
            raise ValueError(
                f"Scheme.bits={self.bits} is out of range: expected 1..{MAX_DATA_BITS} "
                f"(or {ACCUMULATOR_BITS} for int32 biases)"
            )
        for name in ("symmetric", "narrow", "signed"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"Scheme.{name} must be a bool, got {getattr(self, name)!r}")
        if self.bits == ACCUMULATOR_BITS and not self.signed:
            raise ValueError(
                f"Scheme(bits={ACCUMULATOR_BITS}, signed=False): 32-bit schemes are for int32 "
                "biases and accumulators, which are signed (a uint32 zero point would not fit "
                "the int32 zero-point tensor)"
            )
        if self.bits == 1 and (self.signed or self.symmetric):
            raise ValueError(
                f"Scheme(bits=1, signed={self.signed}, symmetric={self.symmetric}) has no useful "
                "uniform meaning (its two levels {-S, 0} cannot hold positive values): use "
                "Scheme(bits=1, signed=False) for the levels {0, S} of one-sided data, or "
                "zeropoint.nonuniform.BinaryCodeQuantizer.fit(x, m=1) for sign quantization "
                "{-a, +a} with a = mean|x| (Rastegari et al. 2016)"
            )
        if self.rounding not in ROUNDING_MODES:
            raise ValueError(
                f"Scheme.rounding={self.rounding!r} is unknown: expected one of {ROUNDING_MODES}"
            )
        if self.axis is not None and (
            not isinstance(self.axis, int) or isinstance(self.axis, bool)
        ):
            raise TypeError(f"Scheme.axis must be an int or None, got {self.axis!r}")
        if self.group_size is not None and (
            not isinstance(self.group_size, int)
            or isinstance(self.group_size, bool)
            or self.group_size < 1
        ):
            raise ValueError(f"Scheme.group_size={self.group_size!r} must be a positive int")
        if self.float_format is not None:
            self._check_float()
        lo, hi = self.qrange
        if lo >= hi:
            raise ValueError(
                f"Scheme(bits={self.bits}, signed={self.signed}, narrow={self.narrow}) "
                f"leaves fewer than two levels [{lo}, {hi}]"
            )

    def _check_float(self) -> None:
        name = self.float_format
        if name not in FLOAT_SCHEME_FORMATS:
            raise ValueError(
                f"Scheme.float_format={name!r} is unknown: expected None (integers) or one of "
                f"{tuple(FLOAT_SCHEME_FORMATS)}"
            )
        fmt = FLOAT_SCHEME_FORMATS[name]
        what = f"Scheme(float_format={name!r})"
        if self.bits != fmt.bits:
            raise ValueError(
                f"{what} has {fmt.bits}-bit codes: pass bits={fmt.bits}, not {self.bits}"
            )
        if not self.signed or self.narrow:
            raise ValueError(
                f"{what}: a float format is signed and has no narrow range; got "
                f"signed={self.signed}, narrow={self.narrow}"
            )
        if self.rounding != "half_even":
            raise ValueError(
                f"{what} rounds to the nearest value of the format, ties to even (IEEE, torch's "
                f"float8 casts, ONNX QuantizeLinear); rounding={self.rounding!r} is not offered"
            )
        object.__setattr__(self, "symmetric", True)  # Z = 0: the only float grid

    @property
    def floating(self) -> FloatFormat | None:
        """The float format of a float scheme (``float_format``), None for integers."""
        return None if self.float_format is None else FLOAT_SCHEME_FORMATS[self.float_format]

    @property
    def format(self) -> IntFormat:
        """The integer format of the codes: b-bit signed or unsigned integers; for a float
        scheme the format's bit patterns, unsigned b-bit."""
        return IntFormat(self.bits, self.signed and self.float_format is None)

    @property
    def level_range(self) -> tuple[int, int]:
        """(lo, hi) that round(r/S) + Z is clamped to: (qmin, qmax) for integers, (−max, max)
        for a float format (its largest finite value: 448, 57344 or 6, all integers)."""
        fmt = self.floating
        if fmt is None:
            return self.qrange
        return -int(fmt.max), int(fmt.max)

    @property
    def qrange(self) -> tuple[int, int]:
        """(qmin, qmax): the integer range after the narrow/full choice."""
        return self.format.qrange(narrow=self.narrow)

    @property
    def qmin(self) -> int:
        return self.qrange[0]

    @property
    def qmax(self) -> int:
        return self.qrange[1]

    @property
    def granularity(self) -> str:
        """'per_tensor', 'per_channel' or 'per_group'."""
        if self.group_size is not None:
            return "per_group"
        return "per_tensor" if self.axis is None else "per_channel"

    def with_(self, **changes: object) -> Scheme:
        """A copy with some fields changed (``scheme.with_(bits=4)``)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def resolve_axis(self, ndim: int) -> int | None:
        """The non-negative axis this scheme works along for a tensor of ``ndim`` dimensions."""
        if self.axis is None and self.group_size is None:
            return None
        axis = -1 if self.axis is None else self.axis
        if ndim == 0:
            raise ValueError(
                f"{self} works along axis {axis}, but a 0-d tensor has no axes: use a per-tensor "
                "scheme (axis=None, group_size=None) for a scalar"
            )
        if not -ndim <= axis < ndim:
            raise ValueError(
                f"axis {axis} is out of range for a tensor with {ndim} dimensions "
                f"(expected {-ndim}..{ndim - 1})"
            )
        return axis % ndim

    def __str__(self) -> str:
        kind = "sym" if self.symmetric else "asym"
        sign = "int" if self.signed else "uint"
        gran = {
            "per_tensor": "per-tensor",
            "per_channel": f"per-channel(axis={self.axis})",
            "per_group": f"group({self.group_size}, axis={-1 if self.axis is None else self.axis})",
        }[self.granularity]
        narrow = ",narrow" if self.narrow else ""
        if self.float_format is not None:
            return f"fp{self.bits} {self.float_format} {gran}"
        return f"{sign}{self.bits} {kind}{narrow} {gran}"


def _as_tensor(value: float | int | Tensor, dtype: torch.dtype) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach().to(dtype)
    return torch.tensor(value, dtype=dtype)


@dataclass(frozen=True, eq=False)
class QParams:
    """The numbers of a quantizer: scale S (float32) and zero point Z (int32) per slice.

    Shapes: per-tensor ``()``; per-channel ``(C,)``; per-group the input's shape with
    dimension ``axis`` divided by ``group_size`` (ONNX blocked quantization). ``axis`` is the
    resolved, non-negative axis (``None`` per tensor).
    """

    scale: Tensor
    zero_point: Tensor
    scheme: Scheme = field(default_factory=Scheme)
    axis: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.scheme, Scheme):
            raise TypeError(f"QParams.scheme must be a Scheme, got {type(self.scheme).__name__}")
        if self.axis is not None and (
            not isinstance(self.axis, int) or isinstance(self.axis, bool)
        ):
            raise TypeError(f"QParams.axis must be an int or None, got {self.axis!r}")
        for name in ("scale", "zero_point"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, float | int | Tensor):
                raise TypeError(
                    f"QParams.{name} must be a tensor or a number, got {type(value).__name__}"
                )
        scale = _as_tensor(self.scale, torch.float32)
        zero_point = _as_tensor(self.zero_point, torch.float64)
        if scale.shape != zero_point.shape:
            raise ValueError(
                f"scale shape {tuple(scale.shape)} and zero_point shape "
                f"{tuple(zero_point.shape)} differ"
            )
        bad = ~torch.isfinite(scale) | (scale <= 0)
        if bool(bad.any()):
            raise ValueError(
                f"scale must be finite and > 0; {int(bad.sum())} of {scale.numel()} values are "
                f"not (first: {scale.flatten()[bad.flatten()][0].item()})"
            )
        fractional = zero_point != torch.round(zero_point)
        if bool(fractional.any()):
            raise ValueError(
                f"zero_point must hold integers, got {zero_point.flatten()[fractional.flatten()][0].item()}"
            )
        if self.scheme.float_format is not None and bool((zero_point != 0).any()):
            raise ValueError(
                f"a float format has no zero point ({self.scheme}): Z must be 0, got "
                f"{int(zero_point.flatten()[(zero_point != 0).flatten()][0].item())}"
            )
        qmin, qmax = self.scheme.qrange
        out = (zero_point < qmin) | (zero_point > qmax)
        if bool(out.any()):
            raise ValueError(
                f"zero point {int(zero_point.flatten()[out.flatten()][0].item())} is outside "
                f"the format's range [{qmin}, {qmax}] ({self.scheme})"
            )
        if self.scheme.granularity == "per_tensor" and scale.dim() != 0:
            if scale.numel() != 1:
                raise ValueError(
                    f"a per-tensor scheme needs one scale, got shape {tuple(scale.shape)}"
                )
            scale, zero_point = scale.reshape(()), zero_point.reshape(())
        if self.scheme.granularity == "per_channel" and scale.dim() != 1:
            raise ValueError(
                f"a per-channel scheme needs a 1-D scale, got shape {tuple(scale.shape)}"
            )
        axis = self.axis
        if self.scheme.granularity != "per_tensor" and axis is None:
            raise ValueError(f"{self.scheme} needs the resolved axis in QParams.axis")
        if self.scheme.granularity == "per_group" and axis is not None:
            # group-wise scales have the tensor's rank, so a negative axis resolves here
            if not -scale.dim() <= axis < scale.dim():
                raise ValueError(
                    f"QParams.axis={axis} is out of range for group-wise scales of shape "
                    f"{tuple(scale.shape)}"
                )
            axis = axis % scale.dim()
        if self.scheme.granularity == "per_tensor":
            axis = None
        object.__setattr__(self, "axis", axis)
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "zero_point", zero_point.to(torch.int32))

    @property
    def qmin(self) -> int:
        return self.scheme.qmin

    @property
    def qmax(self) -> int:
        return self.scheme.qmax

    def check_shape(self, shape: tuple[int, ...] | torch.Size) -> None:
        """Raise ValueError unless these parameters fit a tensor of ``shape``."""
        shape = tuple(shape)
        gran = self.scheme.granularity
        if gran == "per_tensor":
            return
        assert self.axis is not None  # guaranteed by __post_init__
        if not -len(shape) <= self.axis < len(shape):
            raise ValueError(
                f"axis {self.axis} is out of range for a tensor of shape {shape} ({self.scheme})"
            )
        if gran == "per_channel":
            if self.scale.numel() != shape[self.axis]:
                raise ValueError(
                    f"{self.scale.numel()} per-channel scales do not match size "
                    f"{shape[self.axis]} of axis {self.axis} in shape {shape}"
                )
            return
        g = self.scheme.group_size
        assert g is not None
        expected = list(shape)
        expected[self.axis] = shape[self.axis] // g
        if shape[self.axis] % g or tuple(self.scale.shape) != tuple(expected):
            raise ValueError(
                f"group-wise scales of shape {tuple(self.scale.shape)} do not fit a tensor of "
                f"shape {shape} with group_size={g} along axis {self.axis}"
            )

    def broadcast(
        self, x_shape: tuple[int, ...] | torch.Size
    ) -> tuple[Tensor, Tensor, tuple[int, ...]]:
        """(scale, zero_point, view_shape): S and Z shaped to broadcast against ``x`` viewed as
        ``view_shape`` (for group-wise, the blocked axis is split into (n_groups, group_size))."""
        x_shape = tuple(x_shape)
        self.check_shape(x_shape)
        gran = self.scheme.granularity
        if gran == "per_tensor":
            return self.scale, self.zero_point, x_shape
        assert self.axis is not None
        a = self.axis
        if gran == "per_channel":
            view = [1] * len(x_shape)
            view[a] = x_shape[a]
            return self.scale.reshape(view), self.zero_point.reshape(view), x_shape
        g = self.scheme.group_size
        assert g is not None
        view_shape = (*x_shape[:a], x_shape[a] // g, g, *x_shape[a + 1 :])
        return self.scale.unsqueeze(a + 1), self.zero_point.unsqueeze(a + 1), view_shape

    def __repr__(self) -> str:
        if self.scale.dim() == 0:
            return (
                f"QParams({self.scheme}, scale={self.scale.item():.6g}, "
                f"zero_point={int(self.zero_point)})"
            )
        return (
            f"QParams({self.scheme}, axis={self.axis}, scale shape={tuple(self.scale.shape)}, "
            f"scale range=[{self.scale.min().item():.4g}, {self.scale.max().item():.4g}])"
        )


# --------------------------------------------------------------------------- slices


def to_slices(x: Tensor, scheme: Scheme) -> Tensor:
    """View ``x`` as (n_slices, n) where each row gets its own (S, Z) under ``scheme``.

    Per-tensor: one row. Per-channel: one row per index along the axis. Group-wise: one row per
    block of ``group_size`` elements along the axis, in the order of the blocked scale tensor.
    """
    axis = scheme.resolve_axis(x.dim())
    if axis is None:
        return x.reshape(1, -1)
    if scheme.group_size is None:
        return x.movedim(axis, 0).reshape(x.shape[axis], -1)
    g = scheme.group_size
    if x.shape[axis] % g:
        raise ValueError(
            f"group_size={g} does not divide size {x.shape[axis]} of axis {axis} "
            f"(shape {tuple(x.shape)})"
        )
    return x.movedim(axis, -1).reshape(-1, g)


def slices_shape(x_shape: tuple[int, ...] | torch.Size, scheme: Scheme) -> tuple[int, ...]:
    """The shape of the scale tensor for a tensor of ``x_shape`` under ``scheme``."""
    x_shape = tuple(x_shape)
    axis = scheme.resolve_axis(len(x_shape))
    if axis is None:
        return ()
    if scheme.group_size is None:
        return (x_shape[axis],)
    shape = list(x_shape)
    shape[axis] = x_shape[axis] // scheme.group_size
    return tuple(shape)


def from_slices(values: Tensor, x_shape: tuple[int, ...] | torch.Size, scheme: Scheme) -> Tensor:
    """Inverse of the row order of `to_slices`: one value per row -> the scale tensor shape."""
    x_shape = tuple(x_shape)
    axis = scheme.resolve_axis(len(x_shape))
    if axis is None:
        return values.reshape(())
    if scheme.group_size is None:
        return values.reshape(x_shape[axis])
    moved = [*x_shape[:axis], *x_shape[axis + 1 :], x_shape[axis] // scheme.group_size]
    return values.reshape(moved).movedim(-1, axis)


# --------------------------------------------------------------------------- the formula

#: Smallest scale we hand out: the smallest normal float32, so that 1/S stays finite.
MIN_SCALE = float(torch.finfo(torch.float32).tiny)


def qparams_from_range(
    lo: float | Tensor,
    hi: float | Tensor,
    scheme: Scheme,
    x_shape: tuple[int, ...] | torch.Size | None = None,
) -> QParams:
    """Scale and zero point that map the real range [lo, hi] onto [qmin, qmax].

    The range is first widened to contain 0 (α = min(lo, 0), β = max(hi, 0)) so that the real
    value 0.0 is exactly representable (it maps to the integer Z).

    Asymmetric (affine):  S = (β − α) / (qmax − qmin),  Z = clamp(qmin − round(α / S), qmin, qmax)
    Symmetric (scale), m = max(|α|, |β|):
        restricted range [−(2^(b−1)−1), 2^(b−1)−1]:  S = m / (2^(b−1) − 1),  Z = 0
        full range [−2^(b−1), 2^(b−1)−1]:             S = 2m / (2^b − 1),     Z = 0
        unsigned formats (torch's convention):        S = 2m / (qmax − qmin), Z = ⌈(qmin+qmax)/2⌉
        float formats (scaled fp8 / fp4):               S = m / max_f,          Z = 0
    (max_f the format's largest value, 448 for e4m3fn: the amax scaling of serving stacks,
    r̂ = S·fp8(r/S), which maps ±m onto ±max_f).
    Degenerate ranges (α = β = 0, e.g. an all-zero tensor) get S = 1: any S represents 0 exactly.

    ``lo``/``hi`` are scalars (per-tensor) or tensors shaped like the scale (per-channel ``(C,)``,
    group-wise as `from_slices` returns); ``x_shape`` is needed to resolve a negative axis.
    """
    lo_t = torch.as_tensor(lo, dtype=torch.float64)
    hi_t = torch.as_tensor(hi, dtype=torch.float64)
    if lo_t.shape != hi_t.shape:
        raise ValueError(f"lo shape {tuple(lo_t.shape)} and hi shape {tuple(hi_t.shape)} differ")
    check_finite(lo_t, "range lower bound")
    check_finite(hi_t, "range upper bound")
    if bool((lo_t > hi_t).any()):
        raise ValueError(f"range lower bound exceeds upper bound: [{lo_t.min()}, {hi_t.max()}]")
    alpha = torch.clamp(lo_t, max=0.0)
    beta = torch.clamp(hi_t, min=0.0)
    qmin, qmax = scheme.qrange
    if scheme.symmetric:
        m = torch.maximum(alpha.abs(), beta)
        floating = scheme.floating
        if floating is not None:
            scale = m / floating.max
            zero_point = torch.zeros_like(scale)
        elif scheme.signed:
            half = qmax if scheme.narrow else (qmax - qmin) / 2.0
            scale = m / half
            zero_point = torch.zeros_like(scale)
        else:
            scale = 2.0 * m / (qmax - qmin)
            zero_point = torch.full_like(scale, math.ceil((qmin + qmax) / 2))
    else:
        scale = (beta - alpha) / (qmax - qmin)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero_point = torch.clamp(qmin - torch.round(alpha / safe), qmin, qmax)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    scale = torch.clamp(scale, min=MIN_SCALE).to(torch.float32)
    if not scheme.symmetric:
        # Z from the float32 scale that will be used, so that α maps exactly onto qmin when it can.
        zero_point = torch.clamp(qmin - torch.round(alpha / scale.double()), qmin, qmax)
    axis = None
    if scheme.granularity != "per_tensor":
        if x_shape is not None:
            axis = scheme.resolve_axis(len(x_shape))
        elif scheme.axis is not None and scheme.axis >= 0:
            axis = scheme.axis
        else:
            raise ValueError(
                f"{scheme} has a negative or implicit axis: pass x_shape to resolve it"
            )
    return QParams(scale, zero_point, scheme, axis)


def qparams_for(x: Tensor, lo: Tensor, hi: Tensor, scheme: Scheme) -> QParams:
    """`qparams_from_range` for per-slice bounds of ``x`` (rows of `to_slices`)."""
    return qparams_from_range(
        from_slices(lo, x.shape, scheme), from_slices(hi, x.shape, scheme), scheme, x.shape
    )
