"""The output stage: q_y = clamp(Z_y + MBQM(acc, M0, shift), qmin, qmax), cast to int8/uint8.

MBQM is `fixedpoint`'s integer arithmetic (gemmlowp's double rounding, or TFLite's single
rounding). `Requantizer` evaluates it in one of two ways, bit for bit the same:

* the integer path (`fixedpoint._mbqm_`): five to seven int64 ops, by blocks of rows;
* the float64 path: w = acc·M' + c (one ``addcmul``), clamp, cast — plus one op for the sign
  term of double rounding.

The float64 path. `fixedpoint._mbqm_` writes Z + MBQM(acc) (when no left shift saturates, i.e.
ls = 0 for double rounding) as one floor,

    y = ⌊(acc·M0 + A − [acc < 0]·W) / 2^s⌋ (+ Z when not folded into A)

with integers M0 ≥ 0, s = total shift ≤ 62, A = the rounding addend (with Z·2^s folded in), W = 0
("single") or 2^31 ("double", rs ≥ 1). Dividing by 2^s, y = ⌊x⌋ with the real

    x = acc·M' + c − [acc < 0]·δ,   M' = M0·2^−s,   c = A·2^−s (+ Z),   δ = W·2^−s.

M', c and δ are exact in float64 (M0 < 2^31; A/2^(s−1) or A/2^30 has at most ~48 bits). The
computed value is w = fl(fl(P) + c) (− δ where acc < 0, a third rounding), P = acc·M'.
"single" is ⌊x⌋ = ⌊acc·M + 1/2⌋ (+ Z): ties go up (toward +∞), not to even — so ⌊w⌋, never
``torch.round``. Let X = max(|qmin|, |qmax + 1|). Then clamp(⌊w⌋) = clamp(⌊x⌋) for every
accumulator when

    (X + |Z| + 1)·2^s < 2^53     (window), or   |acc|·M0 + (|Z| + 1)·2^s < 2^53     (bound).

Bound: acc·M0 is an integer below 2^53, so P is exact (the 2^−s scaling adds no bits), and x
and x + δ are n·2^−s with |n| < 2^53, representable: every step is exact, w = x. Window: the
results that survive the clamp have qmin ≤ x < qmax + 1, hence |x| ≤ X, |x + δ| ≤ X + 1 and
|P| ≤ X + |Z| + 1; for those, |acc·M0| = |P|·2^s and the numerators of x, x + δ are below 2^53,
so again w = x. Every other accumulator is clamped, and stays clamped: each step rounds
monotonically and the thresholds P = qmax + 1 − c (+ δ) and P = qmin − c (+ δ) are
representable, so P at or beyond them gives w at or beyond qmax + 1 (or below qmin). Whether a
kernel fuses acc·M' + c into one FMA does not matter: that only drops the rounding of P.

With 8-bit outputs the window condition reads s ≤ 43 (M ≳ 1.2·10^−4), for any int32
accumulator; below that the kernels pass the accumulator bound they know (max|q − Z|·Σ|w| +
|bias|). Otherwise (int32 outputs, left shifts, tiny M with a large bound) the integer path
runs. ⌊·⌋ commutes with a clamp to integers, and after the clamp the cast's truncation is ⌊·⌋
when qmin ≥ 0: uint8 outputs skip the floor.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from zeropoint.engine.fixedpoint import (
    BLOCK_ELEMENTS,
    INT32_MAX,
    INT32_MIN,
    Rounding,
    _as_int_tensor,
    _check_int32_range,
    _check_m0_shift,
    _Fixed,
    _fixed,
    _fixed_map,
    _mbqm_,
    quantize_multiplier,
    quantize_multipliers,
)

_DTYPE_RANGE: dict[torch.dtype, tuple[int, int]] = {
    torch.uint8: (0, 255),
    torch.int8: (-128, 127),
    torch.int16: (-(1 << 15), (1 << 15) - 1),
    torch.int32: (INT32_MIN, INT32_MAX),
}
#: Integers of magnitude below this are exact in float64.
_F64_EXACT = 1 << 53


def dtype_range(dtype: torch.dtype) -> tuple[int, int]:
    """(min, max) of an integer container dtype the engine accepts."""
    if dtype not in _DTYPE_RANGE:
        raise TypeError(f"expected one of {sorted(map(str, _DTYPE_RANGE))}, got dtype {dtype}")
    return _DTYPE_RANGE[dtype]


def activation_range(
    activation: str | None, scale: float, zero_point: int, dtype: torch.dtype = torch.uint8
) -> tuple[int, int]:
    """(qmin, qmax) of an output clamp that fuses ``activation`` (TFLite's activation range).

    None: the dtype's range; "relu": [max(Z, min), max]; "relu6": [max(Z, min),
    min(Z + round(6/S), max)], round half away from zero. A fused ReLU is only a narrower clamp.
    """
    lo, hi = dtype_range(dtype)
    if activation is None:
        return lo, hi
    if activation not in ("relu", "relu6"):
        raise ValueError(f"activation must be None, 'relu' or 'relu6', got {activation!r}")
    lo = max(lo, int(zero_point))
    if activation == "relu6":
        hi = min(hi, int(zero_point) + math.floor(6.0 / float(scale) + 0.5))
    return lo, hi


@dataclass(frozen=True)
class _FloatPath:
    """Constants of the float64 path (module docstring), shapes () or (C,), float64."""

    mult: Tensor  # M' = M0·2^−s
    addend: Tensor  # c for acc ≥ 0
    delta: Tensor | None  # W·2^−s, subtracted where acc < 0 (double rounding); None if 0
    any_acc: bool  # the window condition: exact for every int32 accumulator
    max_bound: int  # else exact for |acc| ≤ max_bound (the bound condition)


def _float_path(f: _Fixed, zero_point: int, qmin: int, qmax: int) -> _FloatPath | None:
    """The float64 constants of ``f``, or None where only the integer path is exact."""
    if f.has_left:  # x·2^ls saturates to int32 first: not one floor of a product
        return None
    m0 = torch.as_tensor(f.m0, dtype=torch.int64)
    total, addend, sign_weight = torch.broadcast_tensors(
        *(torch.as_tensor(v, dtype=torch.int64) for v in (f.total, f.addend, f.sign_weight))
    )
    total, addend, sign_weight = (t.expand(m0.shape) for t in (total, addend, sign_weight))
    if not torch.equal(addend.to(torch.float64).to(torch.int64), addend):
        return None  # A not exact in float64 (cannot happen for the shifts _fixed produces)
    nonzero = m0 != 0  # M0 = 0 channels give x = c exactly: no condition on their shift
    s_max = int(total[nonzero].max()) if bool(nonzero.any()) else 0
    m0_max = int(m0.max()) if m0.numel() else 0
    z_abs = abs(zero_point)
    x_abs = max(abs(qmin), abs(qmax + 1))
    any_acc = (x_abs + z_abs + 1) << s_max < _F64_EXACT
    room = _F64_EXACT - 1 - ((z_abs + 1) << s_max)
    max_bound = (1 << 62) if m0_max == 0 else max(room // m0_max, -1)
    c = torch.ldexp(addend.to(torch.float64), -total) + float(f.zero_point)
    delta = torch.ldexp(sign_weight.to(torch.float64), -total)
    used = delta if bool((sign_weight != 0).any()) else None
    return _FloatPath(torch.ldexp(m0.to(torch.float64), -total), c, used, any_acc, max_bound)


def _float_block_elements() -> int:
    """Elements per block of the float64 path: one ATen grain (32768) per intra-op thread."""
    return (BLOCK_ELEMENTS + 1) * torch.get_num_threads()


def _row_slice(x: Tensor, start: int, stop: int) -> Tensor:
    return x[start:stop]


@dataclass(frozen=True, eq=False)
class Requantizer:
    """The output stage: q_y = clamp(Z_y + MBQM(acc, M0, shift), qmin, qmax), cast to ``dtype``.

    ``m0``/``shift`` are int64 tensors of shape () (per tensor) or (C,) (per output channel);
    ``qmin``/``qmax`` default to the range of ``dtype`` and narrow it for a fused ReLU/ReLU6
    (see `activation_range`); ``rounding`` as in `multiply_by_quantized_multiplier` ("double":
    gemmlowp, the default; "single": one rounding, as ONNX Runtime's float requantization
    except at exact ties). Build it with `from_multiplier` or `from_scales`; call it on int32
    accumulators. Evaluated in float64 where that is exact (module docstring), else in int64.
    """

    m0: Tensor
    shift: Tensor
    zero_point: int = 0
    dtype: torch.dtype = torch.uint8
    qmin: int | None = None
    qmax: int | None = None
    rounding: Rounding = "double"
    _fixed: _Fixed = field(init=False, repr=False)
    _float: _FloatPath | None = field(init=False, repr=False)
    _consts: tuple[Tensor, ...] = field(init=False, repr=False)  # float path, as (1, C, 1)
    _tiles: dict[int, tuple[Tensor, ...]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        m0 = _as_int_tensor(self.m0, "m0").to(torch.int64)
        shift = _as_int_tensor(self.shift, "shift").to(torch.int64)
        if m0.shape != shift.shape or m0.dim() > 1:
            raise ValueError(
                f"m0 and shift must share a shape () or (C,), got {tuple(m0.shape)} and "
                f"{tuple(shift.shape)}"
            )
        _check_m0_shift(m0, shift)
        lo, hi = dtype_range(self.dtype)
        qmin = lo if self.qmin is None else int(self.qmin)
        qmax = hi if self.qmax is None else int(self.qmax)
        if not lo <= qmin <= qmax <= hi:
            raise ValueError(f"clamp [{qmin}, {qmax}] must lie inside {self.dtype}'s [{lo}, {hi}]")
        if not lo <= int(self.zero_point) <= hi:
            raise ValueError(f"zero point {self.zero_point} is outside {self.dtype}'s [{lo}, {hi}]")
        for name, value in (("m0", m0), ("shift", shift), ("qmin", qmin), ("qmax", qmax)):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "zero_point", int(self.zero_point))
        fixed = _fixed(m0, shift, self.rounding, int(self.zero_point))
        object.__setattr__(self, "_fixed", fixed)
        fp = _float_path(fixed, self.zero_point, qmin, qmax)
        object.__setattr__(self, "_float", fp)
        consts = (
            () if fp is None else (fp.mult, fp.addend) + (() if fp.delta is None else (fp.delta,))
        )
        object.__setattr__(self, "_consts", tuple(t.view(1, -1, 1) for t in consts))

    @classmethod
    def from_multiplier(
        cls,
        multiplier: float | Tensor,
        zero_point: int = 0,
        dtype: torch.dtype = torch.uint8,
        qmin: int | None = None,
        qmax: int | None = None,
        rounding: Rounding = "double",
    ) -> Requantizer:
        """From the real multiplier(s) M: a float (per tensor) or a 1-D tensor (per channel)."""
        if isinstance(multiplier, Tensor):
            m0, shift = quantize_multipliers(
                multiplier.reshape(-1) if multiplier.dim() else multiplier
            )
        else:
            m0_i, shift_i = quantize_multiplier(multiplier)
            m0, shift = torch.tensor(m0_i), torch.tensor(shift_i)
        return cls(m0, shift, zero_point, dtype, qmin, qmax, rounding)

    @classmethod
    def from_scales(
        cls,
        input_scale: float,
        weight_scale: float | Tensor,
        output_scale: float,
        zero_point: int = 0,
        dtype: torch.dtype = torch.uint8,
        activation: str | None = None,
        rounding: Rounding = "double",
    ) -> Requantizer:
        """M = S_x·S_w / S_y computed in float64 (S_w per channel if a 1-D tensor)."""
        for name, s in (("input_scale", input_scale), ("output_scale", output_scale)):
            if not float(s) > 0 or not math.isfinite(float(s)):
                raise ValueError(f"{name} must be finite and > 0, got {s!r}")
        if isinstance(weight_scale, Tensor):
            m: float | Tensor = (
                weight_scale.to(torch.float64) * float(input_scale) / float(output_scale)
            )
        else:
            m = float(input_scale) * float(weight_scale) / float(output_scale)
        lo, hi = activation_range(activation, float(output_scale), zero_point, dtype)
        return cls.from_multiplier(m, zero_point, dtype, lo, hi, rounding)

    @property
    def channels(self) -> int | None:
        """Number of per-channel multipliers, None per tensor."""
        return None if self.m0.dim() == 0 else self.m0.numel()

    def clamped(self, qmin: int, qmax: int) -> Requantizer:
        """The same multipliers with the clamp narrowed to [qmin, qmax] (e.g. a fused ReLU)."""
        return Requantizer(
            self.m0, self.shift, self.zero_point, self.dtype, qmin, qmax, self.rounding
        )

    def float_exact(self, bound: int | None = None) -> bool:
        """Whether `apply` runs the float64 path for accumulators with |acc| ≤ ``bound``
        (None: any int32)."""
        fp = self._float
        return fp is not None and (fp.any_acc or (bound is not None and bound <= fp.max_bound))

    def __call__(self, acc: Tensor, channel_axis: int = -1) -> Tensor:
        """Requantize int32 accumulators; per-channel multipliers run along ``channel_axis``."""
        if not isinstance(acc, Tensor) or acc.dtype not in (torch.int32, torch.int64):
            got = acc.dtype if isinstance(acc, Tensor) else type(acc).__name__
            raise TypeError(f"accumulator must be an int32 (or int64) tensor, got {got}")
        _check_int32_range(acc, "accumulator")
        return self.apply(acc, channel_axis, 1 << 31)

    def apply(self, acc: Tensor, channel_axis: int = -1, bound: int | None = None) -> Tensor:
        """`__call__` for trusted input (no range check): an int64 tensor, or a float tensor from
        an exact GEMM, holding integers in the int32 range, with |acc| ≤ ``bound`` when given
        (a static bound lets the float64 path run for small multipliers). The output keeps
        ``acc``'s strides when ``acc`` is dense.

        The integer path works through blocks of < 32768 elements: each op on a block runs
        inline in the calling thread (below ATen's parallel grain) on cache-resident data,
        instead of a fork/join of the thread pool per op over the whole tensor.
        """
        per_channel = self.m0.dim() == 1
        axis = channel_axis % acc.dim() if acc.dim() else 0
        if per_channel and (acc.dim() == 0 or acc.shape[axis] != self.m0.numel()):
            raise ValueError(
                f"{self.m0.numel()} per-channel multipliers do not match axis {channel_axis} "
                f"of the accumulator shape {tuple(acc.shape)}"
            )
        if acc.dim() == 0:
            return self.apply(acc.reshape(1), 0, bound).reshape(())
        if self.float_exact(bound):
            return self._apply_float(acc, axis)
        out = torch.empty_like(acc, dtype=self.dtype)  # same strides as acc (dense input)
        if acc.numel() == 0:
            return out
        moved, moved_out = acc.movedim(axis, -1), out.movedim(axis, -1)
        if moved.is_contiguous():  # channels innermost in memory: rows of C
            c = moved.shape[-1]
            f = _fixed_map(self._fixed, lambda x: x.reshape(1, c))
            self._blocks(moved.reshape(-1, c), moved_out.reshape(-1, c), f)
        elif acc.is_contiguous():  # channels outer: rows of prod(shape[axis+1:]), one channel each
            inner = math.prod(acc.shape[axis + 1 :])
            outer = math.prod(acc.shape[:axis])
            f = _fixed_map(self._fixed, lambda x: x.reshape(-1, 1).repeat(outer, 1))
            self._blocks(acc.reshape(-1, inner), out.reshape(-1, inner), f)
        else:
            return self.apply(acc.contiguous(), channel_axis, bound)
        return out

    def _apply_float(self, acc: Tensor, axis: int) -> Tensor:
        """clamp(⌊acc·M' + c⌋) (module docstring), by blocks of ≤ 32768 elements per intra-op
        thread, walking ``acc`` in memory order.

        Blocks keep the float64 temporaries small and cache-resident (a whole-tensor float64
        temporary is 8 bytes an element: freed and re-allocated every call, it makes the heap
        shrink and grow, and fresh pages cost a page fault each) while each op still splits
        into one ATen grain per thread. In memory order (dims sorted by stride) a dense tensor
        is a contiguous (outer, C, inner) array, C the per-channel axis, whatever its layout
        (NCHW, channels-last, a permuted GEMM output); the constants broadcast as (1, C, 1) —
        with dimensions, since a 0-d float64 tensor would not promote a float32 ``acc``.
        """
        order = sorted(range(acc.dim()), key=acc.stride, reverse=True)
        am = acc.permute(order)
        if not am.is_contiguous():  # not dense: copy
            acc, order = acc.contiguous(), list(range(acc.dim()))
            am = acc
        out = torch.empty_like(acc, dtype=self.dtype)  # acc's strides
        numel, block = out.numel(), _float_block_elements()
        if numel == 0:
            return out
        if self.m0.dim() == 1:
            p, shape = order.index(axis), am.shape
            dims = (math.prod(shape[:p]), shape[p], math.prod(shape[p + 1 :]))
            consts = self._consts
        else:  # constants tiled along a row: a broadcast stride-0 operand is not vectorized
            tile = next(
                (t for t in (am.shape[-1], 1024, 256, 64) if 1 < t <= 4096 and numel % t == 0), 1
            )
            dims, consts = (numel // tile, 1, tile), self._tiled(tile)
        a3, o3 = am.view(dims), out.permute(order).view(dims)
        row = dims[1] * dims[2]
        if row <= block:  # blocks of whole (C, inner) rows
            rows = max(1, block // row)
            for r0 in range(0, dims[0], rows):
                self._float_block(a3[r0 : r0 + rows], consts, o3[r0 : r0 + rows])
        else:  # rows longer than a block: split inner
            step = max(1, block // dims[1])
            for r in range(dims[0]):
                for i0 in range(0, dims[2], step):
                    part = (slice(r, r + 1), slice(None), slice(i0, i0 + step))
                    self._float_block(a3[part], consts, o3[part])
        return out

    def _tiled(self, n: int) -> tuple[Tensor, ...]:
        """The per-tensor constants repeated along a row of n, shape (1, 1, n), cached."""
        if n not in self._tiles:
            self._tiles[n] = tuple(t.expand(1, 1, n).contiguous() for t in self._consts)
        return self._tiles[n]

    def _float_block(self, acc: Tensor, k: tuple[Tensor, ...], out: Tensor) -> None:
        if len(k) == 2:
            w = torch.addcmul(k[1], acc, k[0])
        else:  # double rounding: − W·2^−s where acc < 0, as −[acc < 0] = clamp(acc, −1, 0) for
            # integers (a `where` is ~3x slower); acc converted once, not inside each mixed op
            a = acc.to(torch.float64, copy=True)
            w = torch.addcmul(k[1], a, k[0]).addcmul_(a.clamp_(-1, 0), k[2])
        w.clamp_(self.qmin, self.qmax)
        if self.dtype != torch.uint8:  # after the clamp, the cast truncates: ⌊·⌋ only for w ≥ 0
            w.floor_()
        # float64 → int32 → uint8 is ~2x faster than float64 → uint8 on large blocks
        out.copy_(w if w.numel() < 4096 else w.to(torch.int32))

    def _blocks(self, src: Tensor, dst: Tensor, f: _Fixed) -> None:
        """dst = clamp(Z + MBQM(src)) by blocks of rows; per-row constants of ``f`` (shape
        (rows, 1)) are sliced along, per-column ones ((1, C)) and scalars broadcast."""
        rows = max(1, BLOCK_ELEMENTS // src.shape[1])
        per_row = isinstance(f.m0, Tensor) and f.m0.shape[0] > 1
        for r0 in range(0, src.shape[0], rows):
            r1 = r0 + rows
            fb = _fixed_map(f, functools.partial(_row_slice, start=r0, stop=r1)) if per_row else f
            t = src[r0:r1].to(torch.int64, copy=True)
            dst[r0:r1].copy_(_mbqm_(t, fb).clamp_(self.qmin, self.qmax))


@dataclass(frozen=True, eq=False)
class Float32Requantizer:
    """ONNX Runtime's output stage, bit for bit: q_y = clamp(rne(fl32(acc)·M32), qmin − Z,
    qmax − Z) + Z with the float32 multiplier M32 = fl32(fl32(S_x·S_w) / S_y) (per channel), the
    product rounded to float32 and then to the nearest integer, ties to even — what MLAS's
    ``MlasRequantizeOutput`` computes for QLinearConv, QGemm and QLinearMatMul. The same
    interface as `Requantizer` (``apply``, ``channels``), so a layer runs either arithmetic."""

    scale: Tensor  # float32, () or (C,)
    zero_point: int = 0
    dtype: torch.dtype = torch.uint8
    qmin: int | None = None
    qmax: int | None = None

    def __post_init__(self) -> None:
        lo, hi = dtype_range(self.dtype)
        qmin = lo if self.qmin is None else int(self.qmin)
        qmax = hi if self.qmax is None else int(self.qmax)
        if not lo <= qmin <= qmax <= hi:
            raise ValueError(f"clamp [{qmin}, {qmax}] must lie inside {self.dtype}'s [{lo}, {hi}]")
        object.__setattr__(self, "qmin", qmin)
        object.__setattr__(self, "qmax", qmax)
        object.__setattr__(self, "scale", self.scale.to(torch.float32))

    @classmethod
    def from_scales(
        cls, input_scale: float, weight_scale: float | Tensor, output_scale: float,
        zero_point: int = 0, dtype: torch.dtype = torch.uint8, qmin: int | None = None,
        qmax: int | None = None,
    ) -> Float32Requantizer:  # fmt: skip
        """M32 = fl32(fl32(S_x·S_w) / S_y), in ONNX Runtime's order of operations."""
        s_y = torch.tensor(float(output_scale), dtype=torch.float32)
        return cls(accumulator_scale(input_scale, weight_scale) / s_y, int(zero_point), dtype,
                   qmin, qmax)  # fmt: skip

    @property
    def channels(self) -> int | None:
        return None if self.scale.dim() == 0 else self.scale.numel()

    def apply(self, acc: Tensor, channel_axis: int = -1, bound: int | None = None) -> Tensor:
        """Requantize accumulators (integer-valued float32 / float64 or int32 / int64)."""
        assert self.qmin is not None and self.qmax is not None
        y = acc.to(torch.float32) * _broadcast_scale(self.scale, acc, channel_axis)
        z = self.zero_point
        y = y.clamp_(self.qmin - z, self.qmax - z).round_().add_(z)
        return y.to(self.dtype)

    def __call__(self, acc: Tensor, channel_axis: int = -1) -> Tensor:
        if not isinstance(acc, Tensor) or acc.dtype not in (torch.int32, torch.int64):
            got = acc.dtype if isinstance(acc, Tensor) else type(acc).__name__
            raise TypeError(f"accumulator must be an int32 (or int64) tensor, got {got}")
        _check_int32_range(acc, "accumulator")
        return self.apply(acc, channel_axis)


@dataclass(frozen=True, eq=False)
class Dequantizer:
    """The output stage of a layer whose output stays float (``QuantConfig(quantize_outputs=
    False)``): y = clamp(fl32(acc)·fl32(S_x·S_w), lo, hi) per channel — the int32 accumulator
    (bias included, at S_x·S_w) scaled back to real units, a fused clip applied in real units.
    The same interface as `Requantizer` (``apply``, ``channels``), so every layer kernel runs
    it; ONNX Runtime computes the same layer in float on dequantized weights (QDQ with no
    QuantizeLinear after it), equal up to float32 rounding."""

    scale: Tensor  # float32, () or (C,)
    lo: float = -math.inf
    hi: float = math.inf

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", self.scale.to(torch.float32))

    @classmethod
    def from_scales(
        cls, input_scale: float, weight_scale: float | Tensor, lo: float = -math.inf,
        hi: float = math.inf,
    ) -> Dequantizer:  # fmt: skip
        """scale = fl32(S_x·S_w), the accumulator's step (as `Float32Requantizer` computes it)."""
        return cls(accumulator_scale(input_scale, weight_scale), float(lo), float(hi))

    @property
    def channels(self) -> int | None:
        return None if self.scale.dim() == 0 else self.scale.numel()

    def apply(self, acc: Tensor, channel_axis: int = -1, bound: int | None = None) -> Tensor:
        """Real values of accumulators (integer-valued float32 / float64 or int32 / int64)."""
        y = acc.to(torch.float32) * _broadcast_scale(self.scale, acc, channel_axis)
        if self.lo > -math.inf or self.hi < math.inf:
            y = y.clamp_(self.lo, self.hi)
        return y


def _broadcast_scale(scale: Tensor, acc: Tensor, channel_axis: int) -> Tensor:
    """A per-channel scale (C,) shaped to multiply ``acc`` along ``channel_axis`` (a scalar
    scale as it is)."""
    if scale.dim() != 1:
        return scale
    axis = channel_axis % acc.dim()
    if acc.shape[axis] != scale.numel():
        raise ValueError(
            f"{scale.numel()} per-channel scales do not match axis {channel_axis} of "
            f"the accumulator shape {tuple(acc.shape)}"
        )
    view = [1] * acc.dim()
    view[axis] = -1
    return scale.view(view)


def accumulator_scale(input_scale: float, weight_scale: float | Tensor) -> Tensor:
    """fl32(S_x·S_w): the real value of one step of an int32 accumulator, per channel where
    S_w is, in ONNX Runtime's float32 order of operations."""
    s_x = torch.tensor(float(input_scale), dtype=torch.float32)
    return s_x * torch.as_tensor(weight_scale, dtype=torch.float32)
