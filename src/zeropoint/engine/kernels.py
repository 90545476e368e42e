"""Integer GEMM kernels: an exact int8×int8→int32 matrix product on float BLAS, and linear.

The layer (see `fixedpoint`): q_y = Z_y + M·(Σ_k (q_x,k − Z_x)·q_w,k + q_b), weights symmetric
(Z_w = 0). Following gemmlowp, the sum is split into one GEMM on centred inputs and a constant:

    Σ_k (q_x,k − Z_x)·q_w[n,k] = Σ_k a_k·q_w[n,k] + (c − Z_x)·Σ_k q_w[n,k],   a_k = q_x,k − c

with c = Z_x when max|q_x − Z_x|·Σ_k |q_w[n,k]| < 2^24 (the correction vanishes and a_k = 0 is
the real 0), else c = 128 for uint8 inputs and c = 0 for int8, so that |a_k| ≤ 128. The second
term and the bias q_b form one per-channel integer ``offset[n]`` (the column sums Σ_k q_w[n,k]
are computed once by `prepare_linear`): the hot loop is a single int8×int8 product.

Why float BLAS, and why it is exact. ``torch._int_mm`` on CPU is a naive loop (~50× slower than
fp32 BLAS), so the product runs as an fp32 GEMM on integer-valued floats. Every product a_k·w_k
is an integer with |a_k·w_k| ≤ 255·127 < 2^15, exactly representable. Whatever order and
blocking the BLAS uses (with or without FMA), each intermediate value is a partial sum of a
subset of these products (plus, with ``addmm``, the offset), an integer bounded in magnitude by
B_n = max|a|·Σ_k |q_w[n,k]| (+ |offset[n]|). If B_n < 2^24 every such integer is representable
in fp32, so every addition is exact and the GEMM returns the exact integer sum. `prepare_linear`
knows Σ_k |q_w[n,k]| per output channel and splits K into chunks (for |a| ≤ 128) where a bound
would reach 2^24 (one chunk for K up to ~1000 with worst-case |q_w| = 127, and for K of several
thousand with real weights); chunk results are converted to int64 and added exactly. With more
than `MAX_CHUNKS` chunks, or inputs wider than 8 bits, the GEMM runs in float64, exact while the
bound stays below 2^53. fp32 GEMMs only run when fp32 matmul precision is strict IEEE
(`fp32_is_strict`): TF32/bf16 modes may round or accumulate differently, so they fall back to
float64, which they never touch.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

import torch
from torch import Tensor

from zeropoint.engine.fixedpoint import INT32_MAX, INT32_MIN
from zeropoint.engine.requantize import Requantizer, dtype_range

#: Integers of magnitude below these are exact in float32 / float64.
F32_EXACT = 1 << 24
F64_EXACT = 1 << 53
#: Beyond this many fp32 chunks a float64 GEMM (about half the speed of one fp32 GEMM) is cheaper.
MAX_CHUNKS = 4
#: Activation dtypes the engine accepts, with the centre c subtracted before the GEMM.
ACTIVATION_CENTRE: dict[torch.dtype, int] = {torch.uint8: 128, torch.int8: 0, torch.int16: 0}


#: oneDNN's per-operation fp32 precision settings (torch ≥ 2.9), looked up once.
_MKLDNN_PRECISIONS = tuple(getattr(torch.backends.mkldnn, p, None) for p in ("matmul", "conv"))


def fp32_is_strict() -> bool:
    """True when fp32 matmul and oneDNN convolution compute in IEEE fp32 (no TF32/bf16)."""
    if torch.get_float32_matmul_precision() != "highest":
        return False
    for backend in _MKLDNN_PRECISIONS:
        if getattr(backend, "fp32_precision", "none") not in ("none", "ieee"):
            return False
    return os.environ.get("ONEDNN_DEFAULT_FPMATH_MODE", "strict").lower() in ("strict", "")


def activation_bound(dtype: torch.dtype) -> int:
    """max |q − c| over the dtype's range, c = `ACTIVATION_CENTRE` (128 for 8-bit inputs)."""
    lo, hi = dtype_range(dtype)
    c = ACTIVATION_CENTRE[dtype]
    return max(c - lo, hi - c)


def check_activation(q_x: object, zero_point: int, what: str = "q_x") -> Tensor:
    """Raise TypeError unless ``q_x`` is a uint8/int8/int16 tensor, ValueError for a bad Z."""
    if not isinstance(q_x, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(q_x).__name__}")
    if q_x.dtype not in ACTIVATION_CENTRE:
        raise TypeError(f"{what} must be uint8, int8 or int16, got dtype {q_x.dtype}")
    if isinstance(zero_point, bool) or not isinstance(zero_point, int):
        raise TypeError(f"zero point of {what} must be an int, got {zero_point!r}")
    lo, hi = dtype_range(q_x.dtype)
    if not lo <= zero_point <= hi:
        raise ValueError(f"zero point {zero_point} of {what} is outside {q_x.dtype}'s [{lo}, {hi}]")
    return q_x


def centred_into(q_x: Tensor, out: Tensor, centre: int | None = None) -> Tensor:
    """out[...] = q_x − c as float (exact integers): a conversion, then a float subtraction.

    ``c`` = ``centre``, by default `ACTIVATION_CENTRE` (128 for uint8). ``out`` may be any view
    of ``q_x``'s shape (e.g. the interior of a padded buffer). Two same-dtype passes are ~3x
    faster than one mixed uint8 − float subtraction, which ATen does not vectorise.
    """
    c = ACTIVATION_CENTRE[q_x.dtype] if centre is None else centre
    out.copy_(q_x)
    return out.sub_(float(c)) if c else out


def centred_float(q_x: Tensor, centre: int | None = None) -> Tensor:
    """A new contiguous float32 tensor a = q_x − c (c = ``centre``, by default 128 for uint8 and
    0 otherwise): exact integers."""
    return centred_into(q_x, torch.empty(q_x.shape, dtype=torch.float32), centre)


# --------------------------------------------------------------------------- the exact GEMM


@dataclass(frozen=True, eq=False)
class GemmPlan:
    """An int8 weight matrix W (N, K) prepared for `exact_matmul`.

    ``weight_f32``: W as float32; ``col_sums[n]`` = Σ_k W[n,k] and ``abs_sums[n]`` = Σ_k |W[n,k]|
    (int64); ``chunks``: ranges [k0, k1) of K with act_bound·Σ_{k0≤k<k1} |W[n,k]| < 2^24 for
    every n, ``act_bound`` the largest |a| the plan was made for.
    """

    weight: Tensor
    weight_f32: Tensor
    col_sums: Tensor
    abs_sums: Tensor
    chunks: tuple[tuple[int, int], ...]
    act_bound: int

    @functools.cached_property
    def max_abs_sum(self) -> int:
        return int(self.abs_sums.max()) if self.abs_sums.numel() else 0


def plan_gemm(q_w: Tensor, act_bound: int = 128) -> GemmPlan:
    """Prepare W (N, K) int8: float copy, sums and the fp32 chunk plan for |a| ≤ ``act_bound``."""
    if not isinstance(q_w, Tensor) or q_w.dtype != torch.int8:
        got = q_w.dtype if isinstance(q_w, Tensor) else type(q_w).__name__
        raise TypeError(f"weights must be an int8 tensor (symmetric, Z_w = 0), got {got}")
    if q_w.dim() != 2:
        raise ValueError(f"weights must have shape (N, K), got {tuple(q_w.shape)}")
    if not 1 <= act_bound <= 1 << 16:  # so that one column (≤ 128·act_bound) fits below 2^24
        raise ValueError(f"act_bound must be in 1..65536, got {act_bound}")
    w64 = q_w.to(torch.int64)
    absw = w64.abs()
    abs_sums = absw.sum(1)
    limit = (F32_EXACT - 1) // act_bound  # Σ|w| ≤ limit  ⇒  act_bound·Σ|w| < 2^24
    n_out, k_total = q_w.shape
    chunks: list[tuple[int, int]] = []
    if n_out == 0 or int(abs_sums.max()) <= limit:
        chunks.append((0, k_total))
    else:
        prefix = torch.nn.functional.pad(absw.cumsum(1), (1, 0))  # (N, K + 1)
        k0 = 0
        while k0 < k_total:
            # largest k1 with max_n Σ_{k0≤k<k1} |w[n,k]| ≤ limit (one column always fits: 127·128 < 2^24)
            reach = (prefix[:, k0 + 1 :] - prefix[:, k0 : k0 + 1]).amax(0)
            k1 = k0 + int(torch.searchsorted(reach, limit, right=True))
            chunks.append((k0, k1))
            k0 = k1
    return GemmPlan(q_w, q_w.to(torch.float32), w64.sum(1), abs_sums, tuple(chunks), act_bound)


def exact_matmul(
    a: Tensor, plan: GemmPlan, act_bound: int, offset: Tensor | None = None,
    max_offset: int | None = None, offset_f32: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """Σ_k a[m, k]·W[n, k] + offset[n], exactly, as an (M, N) tensor of integer values.

    ``a`` is a float32 (M, K) tensor of integers with |a| ≤ ``act_bound``; ``offset`` an int64
    (N,) tensor. The result is float32 (one fp32 pass, every partial sum below 2^24: any
    act_bound, whatever the plan's chunks), int64 (fp32 chunks summed in int64) or float64
    (fallback, checked below 2^53): exact integers in any case, which `Requantizer.apply` and
    ``.to(torch.int32)`` take as they are. ``max_offset`` = max|offset| and ``offset_f32`` =
    the offset as float32, when the caller has them at hand.
    """
    wt = plan.weight_f32.t()
    bound = act_bound * plan.max_abs_sum
    max_off = max_offset if max_offset is not None else _max_abs(offset)
    strict = fp32_is_strict()
    if strict and bound + max_off < F32_EXACT:
        if offset is None:
            return torch.mm(a, wt)
        return torch.addmm(offset.to(torch.float32) if offset_f32 is None else offset_f32, a, wt)
    if strict and (
        bound < F32_EXACT or (act_bound <= plan.act_bound and len(plan.chunks) <= MAX_CHUNKS)
    ):
        chunks = plan.chunks if bound >= F32_EXACT else ((0, a.shape[1]),)
        acc = torch.zeros(a.shape[0], wt.shape[1], dtype=torch.int64)
        for k0, k1 in chunks:
            acc += torch.mm(a[:, k0:k1], wt[k0:k1]).to(torch.int64)
        return acc if offset is None else acc.add_(offset)
    if bound + max_off >= F64_EXACT:
        raise ValueError(
            f"exact GEMM impossible: act_bound·Σ|w| + |offset| = {bound + max_off} ≥ 2^53"
        )
    out = torch.mm(a.to(torch.float64), wt.to(torch.float64))
    return out if offset is None else out.add_(offset.to(torch.float64))


def _max_abs(t: Tensor | None) -> int:
    return int(t.abs().max()) if t is not None and t.numel() else 0


def check_int32_accumulator(
    acc: Tensor, act_max: int, max_abs_sum: int, max_abs_bias: int, k: int
) -> None:
    """Raise ValueError if an int32 accumulator could have overflowed (never wrap silently).

    Static bound: |acc| ≤ max|q_x − Z_x|·max_n Σ_k |q_w[n,k]| + max|q_b| (≤ K·max|q_x − Z_x|·
    max|q_w| + max|q_b|). Only when it reaches 2^31 are the exact int64 values inspected.
    """
    bound = act_max * max_abs_sum + max_abs_bias
    if bound <= INT32_MAX or acc.numel() == 0:
        return
    lo, hi = torch.aminmax(acc)
    if int(lo) < INT32_MIN or int(hi) > INT32_MAX:
        raise ValueError(
            f"int32 accumulator overflow: reduction length K={k}, max|q_x − Z_x|={act_max}, "
            f"max Σ|q_w|={max_abs_sum}, max|bias|={max_abs_bias} allow |acc| up to {bound} and "
            f"the accumulator reached [{int(lo)}, {int(hi)}], outside int32 "
            f"[{INT32_MIN}, {INT32_MAX}]; use fewer activation bits or split the reduction"
        )


def bias_int64(bias_q: Tensor | None, n_out: int) -> Tensor:
    """Validate an int32 bias of shape (n_out,) (None: zeros) and widen it to int64."""
    if bias_q is None:
        return torch.zeros(n_out, dtype=torch.int64)
    if not isinstance(bias_q, Tensor) or bias_q.dtype != torch.int32:
        got = bias_q.dtype if isinstance(bias_q, Tensor) else type(bias_q).__name__
        raise TypeError(f"bias must be an int32 tensor (scale S_x·S_w, Z = 0), got {got}")
    if tuple(bias_q.shape) != (n_out,):
        raise ValueError(f"bias shape must be ({n_out},), got {tuple(bias_q.shape)}")
    return bias_q.to(torch.int64)


# --------------------------------------------------------------------------- linear


@dataclass(frozen=True, eq=False)
class LinearWeights:
    """int8 weights (N, K) and int32 bias (N,) prepared once for `linear` (see `GemmPlan`)."""

    plan: GemmPlan
    bias: Tensor  # int64 (N,)
    max_abs_bias: int
    _offsets: dict[int, tuple[Tensor, int, Tensor]] = field(
        default_factory=dict, init=False, repr=False
    )

    def offset(self, shift: int) -> tuple[Tensor, int, Tensor]:
        """bias + shift·Σ_k W[n, k] (shift = c − Z_x), its max |·| and the float32 copy (used
        only while exact), computed once per shift."""
        if shift not in self._offsets:
            off = self.bias + shift * self.plan.col_sums
            self._offsets[shift] = (off, _max_abs(off), off.to(torch.float32))
        return self._offsets[shift]

    @property
    def in_features(self) -> int:
        return int(self.plan.weight.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.plan.weight.shape[0])


def prepare_linear(q_w: Tensor, bias_q: Tensor | None = None) -> LinearWeights:
    """Precompute everything `linear` needs from int8 weights (N, K) and an int32 bias (N,)."""
    plan = plan_gemm(q_w)
    bias = bias_int64(bias_q, plan.weight.shape[0])
    return LinearWeights(plan, bias, int(bias.abs().max()) if bias.numel() else 0)


def _linear_acc(q_x: Tensor, x_zero_point: int, weights: LinearWeights) -> tuple[Tensor, int]:
    """Exact accumulators (..., N), integer-valued (float32, float64 or int64: `exact_matmul`),
    and the static bound on their magnitude, max|q_x − Z_x|·max Σ|w| + max|bias|.

    The input is centred by Z_x itself when max|q_x − Z_x|·Σ|w| < 2^24 (one exact fp32 pass,
    the offset is the bias alone), else by `ACTIVATION_CENTRE` (|a| ≤ 128, chunked if needed)."""
    check_activation(q_x, x_zero_point)
    k = weights.in_features
    if q_x.dim() < 1 or q_x.shape[-1] != k:
        raise ValueError(f"q_x must have shape (..., {k}), got {tuple(q_x.shape)}")
    lo, hi = dtype_range(q_x.dtype)
    act_max = max(x_zero_point - lo, hi - x_zero_point)
    if act_max * weights.plan.max_abs_sum < F32_EXACT:
        c, act = x_zero_point, act_max
    else:
        c, act = ACTIVATION_CENTRE[q_x.dtype], activation_bound(q_x.dtype)
    a = centred_float(q_x.reshape(-1, k), c)
    offset, max_offset, offset_f32 = weights.offset(c - x_zero_point)
    acc = exact_matmul(a, weights.plan, act, offset, max_offset, offset_f32)
    check_int32_accumulator(acc, act_max, weights.plan.max_abs_sum, weights.max_abs_bias, k)
    bound = act_max * weights.plan.max_abs_sum + weights.max_abs_bias
    return acc.reshape(*q_x.shape[:-1], weights.out_features), bound


def linear_acc(q_x: Tensor, x_zero_point: int, weights: LinearWeights) -> Tensor:
    """The int32 accumulator Σ_k (q_x[..., k] − Z_x)·q_w[n, k] + q_b[n], shape (..., N).

    Raises ValueError if it does not fit int32 (see `check_int32_accumulator`).
    """
    return _linear_acc(q_x, x_zero_point, weights)[0].to(torch.int32)


def linear(q_x: Tensor, x_zero_point: int, weights: LinearWeights, requant: Requantizer) -> Tensor:
    """Quantized linear: q_y = clamp(Z_y + MBQM(acc, M0, shift), qmin, qmax), shape (..., N).

    ``q_x``: uint8/int8 (or int16) activations (..., K) with zero point Z_x; ``requant`` holds
    M = S_x·S_w/S_y per tensor or per output channel (last axis) and the output (Z_y, dtype).
    """
    if requant.channels not in (None, weights.out_features):
        raise ValueError(
            f"requantizer has {requant.channels} channels, the layer {weights.out_features}"
        )
    acc, bound = _linear_acc(q_x, x_zero_point, weights)
    return requant.apply(acc, -1, bound)
