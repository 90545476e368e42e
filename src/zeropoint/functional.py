"""quantize / dequantize / fake_quantize: the uniform quantizer, written once.

    quantize:       q = clamp(round(r / S), qmin − Z, qmax − Z) + Z
    dequantize:     r̂ = S · (q − Z)
    fake_quantize:  r̂ = S · clamp(round(r / S), qmin − Z, qmax − Z)      (float in, float out)

Every path computes these with the same three private steps — `_rounded` (round(r / S)),
`_clamped` (the clamp to [qmin − Z, qmax − Z]) and `_reals` (S · (q − Z)) — in the same
compute dtype (`compute_dtype`): per-tensor and per-channel tensors, large per-tensor tensors in
cache-sized chunks, the compiled one-pass kernels of ``fused=True`` (`zeropoint.fused` compiles
these very functions), and the learnable quantizers of `zeropoint.nn.learnable` (LSQ, LSQ+,
PACT), whose forward pass is `fake_quantize_learnable`. Hence ``fake_quantize(x, qp)`` equals
``dequantize(quantize(x, qp))`` bit for bit, for float32 and float64 inputs alike.

`round` is the scheme's rounding mode applied to the quotient fl(r / S) in the compute dtype:
for float32 data that is exactly ONNX QuantizeLinear (and ONNX Runtime). torch's
quantize_per_tensor rounds fl(Z + r·fl(1/S)) instead; the two agree except at near-ties, where
r / S lies within a float32 rounding error of a half-integer (about 1 value in 10^6 on random
data; tests/test_functional.py counts them).

fake_quantize's gradient is the straight-through estimator (Bengio et al. 2013; Jacob et al.
2018): ∂r̂/∂r = 1 where qmin ≤ round(r/S) + Z ≤ qmax, and 0 where the value was clipped.
`fake_quantize_learnable` also returns the gradients of S and Z (LSQ, Esser et al. 2020; LSQ+,
Bhalgat et al. 2020), see its docstring.

Float formats (``Scheme(float_format=...)``: fp8 e4m3fn / e5m2, fp4 e2m1) are the same quantizer
with the one rounding step replaced: round(r/S) rounds to the format's nearest value (ties to
even, `FloatFormat.round_unbounded`), the clamp is to ±max of the format (Z = 0), so

    fake_quantize:  r̂ = S · clamp(fp(r / S), −max, max)        (the scaled fp8 of serving stacks)

and the codes of `quantize` are the format's bit patterns (uint8; what a torch float8 tensor
stores, bit for bit), which `dequantize` decodes before multiplying by S.

Stochastic rounding draws its uniform numbers from the ``generator`` passed in (a
torch.Generator or an int seed); zeropoint never touches the global RNG, so a stochastic scheme
without a generator is refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from zeropoint import fused as fused_kernels
from zeropoint.formats import FloatFormat
from zeropoint.qparams import QParams, Scheme
from zeropoint.qtensor import QTensor
from zeropoint.validation import check_codes, check_finite, check_tensor

#: Elements per chunk of the large per-tensor path: 2^18 float32 values (1 MiB) stay in a
#: core's L2 cache, so the chain of element-wise steps reads and writes main memory once.
CHUNK = 1 << 18

#: Rounding modes the compiled kernels run (stochastic rounding needs a generator: eager only).
FUSED_ROUNDING = ("half_even", "half_away", "floor")


def compute_dtype(dtype: torch.dtype, scheme: Scheme) -> torch.dtype:
    """THE compute-dtype rule of the uniform quantizer: float64 when the data (input of
    quantize, output of dequantize) is float64 or the format is wider than 16 bits (int32
    biases: their codes are not exact in float32); float32 otherwise (float16 and bfloat16
    are widened exactly). Every integer of a ≤ 16-bit format is exact in float32."""
    return torch.float64 if dtype == torch.float64 or scheme.bits > 16 else torch.float32


def round_values(r: Tensor, mode: str, generator: torch.Generator | None = None) -> Tensor:
    """``r`` rounded to integers (as floats) by ``mode``. ``r`` may be overwritten: always use
    the returned tensor (which may or may not be ``r``).

    half_even: nearest, ties to even (IEEE default; torch.round, ONNX).
    half_away: nearest, ties away from zero; computed as trunc(r) + sign(r)·[|r − trunc(r)| ≥ ½]
               (exact: r − trunc(r) has no rounding error, unlike floor(|r| + ½)).
    floor:     ⌊r⌋.
    stochastic: ⌊r⌋ + [u < r − ⌊r⌋], u ~ U[0, 1) from ``generator``: E[round(r)] = r (unbiased,
               Gupta et al. 2015).
    """
    if mode == "half_even":
        return r.round_()
    if mode == "floor":
        return r.floor_()
    if mode == "half_away":
        t = torch.trunc(r)
        sign = torch.sign(r)
        half_or_more = r.sub_(t).abs_().ge_(0.5)
        return t.add_(sign.mul_(half_or_more))
    if mode == "stochastic":
        if generator is None:
            raise ValueError(_NEEDS_GENERATOR)
        f = torch.floor(r)
        p = r.sub_(f)
        u = torch.rand(p.shape, generator=generator, dtype=p.dtype, device=p.device)
        return f.add_((u < p).to(f.dtype))
    raise ValueError(f"unknown rounding mode {mode!r}")


_NEEDS_GENERATOR = (
    "rounding='stochastic' draws random numbers: pass generator= (a torch.Generator or an int "
    "seed); zeropoint never draws from the global RNG"
)


def as_generator(generator: torch.Generator | int | None, scheme: Scheme) -> torch.Generator | None:
    """The generator stochastic rounding draws from: ``generator`` itself, a fresh one seeded
    with an int, or None for deterministic schemes. A stochastic scheme without one is refused."""
    if isinstance(generator, bool) or not (
        generator is None or isinstance(generator, int | torch.Generator)
    ):
        raise TypeError(
            f"generator must be a torch.Generator, an int seed or None, got "
            f"{type(generator).__name__}"
        )
    if isinstance(generator, int):
        generator = torch.Generator().manual_seed(generator)
    if scheme.rounding != "stochastic":
        return None
    if generator is None:
        raise ValueError(f"{_NEEDS_GENERATOR} ({scheme})")
    return generator


# --------------------------------------------------------------------------- the three steps


def _rounded(
    x: Tensor,
    scale: Tensor | float,
    rounding: str,
    generator: torch.Generator | None,
    dtype: torch.dtype,
    out: Tensor | None = None,
    floating: FloatFormat | None = None,
) -> Tensor:
    """round(x / S) in ``dtype`` (S broadcast against x; the true IEEE division, like ONNX):
    to an integer by ``rounding``, or, for a float format, to the format's nearest value
    (exponent unbounded above: the clamp to ±max is the next step, as for integers)."""
    if x.dtype != dtype:
        x = x.to(dtype)
    if isinstance(scale, Tensor) and scale.dtype != dtype:
        scale = scale.to(dtype)
    r = torch.div(x, scale) if out is None else torch.div(x, scale, out=out)
    if floating is not None:
        return floating.round_unbounded(r)
    return round_values(r, rounding, generator)


def _clamped(r: Tensor, lo: Tensor | float, hi: Tensor | float) -> Tensor:
    """clamp(r, lo, hi) in place, lo = qmin − Z, hi = qmax − Z: the code minus Z."""
    if isinstance(lo, Tensor) and isinstance(hi, Tensor):
        return torch.clamp(r, lo, hi, out=r)
    return r.clamp_(float(lo), float(hi))


def _reals(v: Tensor, scale: Tensor | float, inplace: bool = True) -> Tensor:
    """S · v (in place, or a new tensor), v = q − Z: the real value of a code."""
    return v.mul_(scale) if inplace else torch.mul(v, scale)


def _bounds(scheme: Scheme, zero_point: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    z = zero_point.to(dtype)
    lo, hi = scheme.level_range
    return lo - z, hi - z


def _float_codes(v: Tensor, fmt: FloatFormat) -> Tensor:
    """The bit patterns (uint8) of values ``v`` of the float format ``fmt`` (exact: v is one)."""
    dtype = fmt.torch_dtype
    if dtype is not None:
        return v.to(dtype).view(torch.uint8)
    return (fmt.encode(v) & ((1 << fmt.bits) - 1)).to(torch.uint8)


def _float_values(q: Tensor, fmt: FloatFormat, dtype: torch.dtype) -> Tensor:
    """The values (in ``dtype``) of the bit patterns ``q`` of the float format ``fmt``."""
    torch_dtype = fmt.torch_dtype
    if torch_dtype is not None:
        return q.to(torch.uint8).view(torch_dtype).to(dtype)
    return fmt.decode(q).to(dtype)


def _check_qparams(qparams: object, what: str) -> QParams:
    if not isinstance(qparams, QParams):
        raise TypeError(f"{what} needs QParams, got {type(qparams).__name__}")
    return qparams


# --------------------------------------------------------------------------- quantize


def _quantize_per_tensor_chunked(
    x: Tensor,
    scale: float,
    zero_point: int,
    scheme: Scheme,
    generator: torch.Generator | None,
    dtype: torch.dtype,
) -> Tensor:
    """`quantize_int` for one (S, Z) over a large tensor, a cache-sized chunk at a time: the
    element-wise steps run on a buffer in L2 and main memory is read and written once."""
    flat = x.reshape(-1)
    out = torch.empty(flat.numel(), dtype=scheme.format.storage_dtype)
    buf = torch.empty(min(CHUNK, flat.numel()), dtype=dtype)
    lo, hi = float(scheme.qmin - zero_point), float(scheme.qmax - zero_point)
    if not math.isfinite(float(flat.sum())):  # NaN/Inf (or a huge finite sum): look closer
        check_finite(x, "tensor to quantize")
    for start in range(0, flat.numel(), CHUNK):
        chunk = flat[start : start + CHUNK]
        r = _rounded(chunk, scale, scheme.rounding, generator, dtype, out=buf[: chunk.numel()])
        out[start : start + CHUNK].copy_(_clamped(r, lo, hi).add_(zero_point))
    return out.reshape(x.shape)


def _quantize_kernel(x: Tensor, scale: Tensor, lo: Tensor, hi: Tensor, zp: Tensor, *, rounding: str, storage: torch.dtype) -> tuple[Tensor, Tensor]:  # fmt: skip
    """What ``fused=True`` compiles: the same steps, on 0-d tensor parameters."""
    r = _rounded(x, scale, rounding, None, x.dtype)
    return (torch.clamp(r, lo, hi) + zp).to(storage), torch.isfinite(x).all()


def _dequantize_kernel(q: Tensor, scale: Tensor, zp: Tensor, *, dtype: torch.dtype) -> Tensor:
    return _reals(q.to(dtype) - zp, scale)


def _fusable(x: Tensor, scheme: Scheme, dtype: torch.dtype) -> bool:
    return (
        x.dtype == torch.float32
        and dtype == torch.float32
        and scheme.rounding in FUSED_ROUNDING
        and scheme.float_format is None
        and x.numel() >= fused_kernels.MIN_ELEMENTS
    )


def quantize_int(
    x: Tensor,
    qparams: QParams,
    generator: torch.Generator | int | None = None,
    *,
    fused: bool = False,
) -> Tensor:
    """Integer codes q = clamp(round(x / S), qmin − Z, qmax − Z) + Z as an unpacked integer
    tensor (int8/uint8 for ≤ 8 bits, int16/int32 above), computed in `compute_dtype`; for a
    float format the bit patterns (uint8) of clamp(fp(x / S), −max, max).

    ``generator``: required by stochastic rounding (a torch.Generator or an int seed).
    ``fused=True`` runs float32 per-tensor tensors of at least 2^20 elements with a
    deterministic rounding mode as one compiled pass (`zeropoint.fused`: the same codes, 2-3x
    faster, compiled on first use); everything else runs eagerly. Codes carry no gradient: a
    tensor that requires one (a parameter) is read detached."""
    check_tensor(x, "tensor to quantize")
    x = x.detach()
    qparams = _check_qparams(qparams, "quantize")
    scheme = qparams.scheme
    gen = as_generator(generator, scheme)
    dtype = compute_dtype(x.dtype, scheme)
    storage = scheme.format.storage_dtype
    scale, zero_point, view_shape = qparams.broadcast(x.shape)
    floating = scheme.floating
    if scheme.granularity == "per_tensor" and x.numel() > CHUNK and floating is None:
        s, z = float(scale), int(zero_point)
        if fused and _fusable(x, scheme, dtype):
            result = fused_kernels.run(
                ("quantize", scheme.rounding, storage),
                lambda: _compiled_quantize(scheme.rounding, storage),
                x.reshape(-1),
                *_scalars(dtype, s, scheme.qmin - z, scheme.qmax - z, z),
            )
            if result is not None:
                q, finite = result
                if not bool(finite):
                    check_finite(x, "tensor to quantize")
                return q.reshape(x.shape)
        return _quantize_per_tensor_chunked(x, s, z, scheme, gen, dtype)
    check_finite(x, "tensor to quantize")
    lo, hi = _bounds(scheme, zero_point, dtype)
    r = _rounded(x.reshape(view_shape), scale, scheme.rounding, gen, dtype, floating=floating)
    if floating is not None:  # Z = 0: the codes are the bit patterns of the clamped values
        return _float_codes(_clamped(r, lo, hi), floating).reshape(x.shape)
    q = _clamped(r, lo, hi).add_(zero_point.to(dtype))
    return q.to(storage).reshape(x.shape)


def _scalars(dtype: torch.dtype, *values: float) -> tuple[Tensor, ...]:
    return tuple(torch.tensor(float(v), dtype=dtype) for v in values)


def _compiled_quantize(rounding: str, storage: torch.dtype) -> Callable[..., Any]:
    def kernel(x: Tensor, s: Tensor, lo: Tensor, hi: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        return _quantize_kernel(x, s, lo, hi, z, rounding=rounding, storage=storage)

    return kernel


def _compiled_dequantize(dtype: torch.dtype) -> Callable[..., Any]:
    def kernel(q: Tensor, s: Tensor, z: Tensor) -> Tensor:
        return _dequantize_kernel(q, s, z, dtype=dtype)

    return kernel


def quantize(
    x: Tensor,
    qparams: QParams,
    generator: torch.Generator | int | None = None,
    *,
    fused: bool = False,
) -> QTensor:
    """Quantize ``x`` to a `QTensor` (integer codes + the QParams; sub-byte codes packed). The
    QTensor remembers x's dtype: ``dequantize`` returns that dtype."""
    codes = quantize_int(x, qparams, generator, fused=fused)
    return QTensor.from_int(codes, qparams, dtype=x.dtype, checked=True)


# --------------------------------------------------------------------------- dequantize


def _dequantize_per_tensor_chunked(
    q: Tensor, scale: float, zero_point: int, compute: torch.dtype, dtype: torch.dtype
) -> Tensor:
    """S·(q − Z) for one (S, Z), a cache-sized chunk at a time."""
    flat = q.reshape(-1)
    out = torch.empty(flat.numel(), dtype=dtype)
    buf = out if compute == dtype else torch.empty(min(CHUNK, flat.numel()), dtype=compute)
    for start in range(0, flat.numel(), CHUNK):
        o = out[start : start + CHUNK]
        b = o if compute == dtype else buf[: o.numel()]
        _reals(b.copy_(flat[start : start + CHUNK]).sub_(zero_point), scale)
        if b is not o:
            o.copy_(b)
    return out.reshape(q.shape)


def dequantize_int(
    q: Tensor, qparams: QParams, dtype: torch.dtype = torch.float32, *, fused: bool = False
) -> Tensor:
    """r̂ = S · (q − Z) for an unpacked integer tensor ``q``, in ``dtype`` (computed in
    `compute_dtype`); for a float format r̂ = S · fp(q), fp(q) the value of the bit pattern q.
    Codes outside the scheme's range are refused (``fused``: see `quantize_int`)."""
    if not isinstance(q, Tensor):
        raise TypeError(f"dequantize expects a QTensor or integer codes, got {type(q).__name__}")
    qparams = _check_qparams(qparams, "dequantize")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dequantize returns a floating-point dtype, got {dtype!r}")
    check_codes(q, qparams.scheme.qmin, qparams.scheme.qmax, str(qparams.scheme))
    scale, zero_point, view_shape = qparams.broadcast(q.shape)
    compute = compute_dtype(dtype, qparams.scheme)
    floating = qparams.scheme.floating
    if floating is not None:
        v = _float_values(q.reshape(view_shape), floating, compute)
        return _reals(v, scale.to(compute)).to(dtype).reshape(q.shape)
    if qparams.scheme.granularity == "per_tensor" and q.numel() > CHUNK:
        s, z = float(scale), int(zero_point)
        if fused and compute == dtype == torch.float32 and q.numel() >= fused_kernels.MIN_ELEMENTS:
            r = fused_kernels.run(
                ("dequantize", q.dtype, compute),
                lambda: _compiled_dequantize(compute),
                q.reshape(-1),
                *_scalars(compute, s, z),
            )
            if r is not None:
                return r.reshape(q.shape)  # type: ignore[no-any-return]
        return _dequantize_per_tensor_chunked(q, s, z, compute, dtype)
    v = q.reshape(view_shape).to(compute).sub_(zero_point.to(compute))
    return _reals(v, scale.to(compute)).to(dtype).reshape(q.shape)


def dequantize(
    q: QTensor | Tensor,
    qparams: QParams | None = None,
    *,
    dtype: torch.dtype | None = None,
    fused: bool = False,
) -> Tensor:
    """r̂ = S · (q − Z): from a QTensor (in the dtype it was quantized from, unless ``dtype``
    says otherwise), or from integer codes and their QParams (float32 unless ``dtype``)."""
    if isinstance(q, QTensor):
        if qparams is not None and qparams is not q.qparams:
            raise ValueError("dequantize(qtensor) takes its QParams from the QTensor; pass none")
        return dequantize_int(q.int_repr(), q.qparams, dtype or q.dtype, fused=fused)
    if qparams is None:
        raise TypeError("dequantize(tensor) needs the QParams of the codes")
    return dequantize_int(q, qparams, dtype or torch.float32, fused=fused)


# --------------------------------------------------------------------------- fake quantize


class _FakeQuantize(torch.autograd.Function):
    """Forward: S·clamp(round(x/S), qmin − Z, qmax − Z) with the three steps above (a float
    format: round to the format, [qmin, qmax] = [−max, max], Z = 0).

    Backward (g = the incoming gradient, v = round(x/S), u = x/S, in = [qmin−Z ≤ v ≤ qmax−Z],
    k = ``grad_factor``):
      ∂/∂x = g·in                                          straight-through inside the range
      ∂/∂S = k·Σ g·(clamp(v) − u·in)   (step_gradient)     LSQ: v − u inside, the bound outside
             k·Σ g·clamp(v)·(1 − in)   (otherwise)         PACT: only the clipped values
      ∂/∂Z = −k·Σ g·S·(1 − in)                             LSQ+: Z moves the clipped values
    summed over the elements that share a scale."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: Tensor,
        scale: Tensor,
        zero_point: Tensor | float,
        scheme: Scheme,
        generator: torch.Generator | None,
        step_gradient: bool,
        grad_factor: float,
    ) -> Tensor:
        dtype = compute_dtype(x.dtype, scheme)
        s = scale.detach()
        if s.dtype != dtype:
            s = s.to(dtype)
        lo: Tensor | float
        hi: Tensor | float
        if isinstance(zero_point, Tensor) and zero_point.dim():
            lo, hi = _bounds(scheme, zero_point.detach(), dtype)
        else:
            z = float(zero_point)
            lo, hi = scheme.level_range[0] - z, scheme.level_range[1] - z
        r = _rounded(x.detach(), s, scheme.rounding, generator, dtype, floating=scheme.floating)
        inside = (r >= lo).logical_and_(r <= hi)
        # v + 0.0 turns the −0.0 of round(−0.3) into +0.0, as the integer code q − Z has it
        v = _clamped(r, lo, hi).add_(0.0)
        out = _reals(v, s, inplace=False)  # v itself is kept for the backward pass
        needs = ctx.needs_input_grad  # type: ignore[attr-defined]
        if needs[1] or needs[2]:
            ctx.save_for_backward(inside, v, x.detach(), s)
            ctx.meta = (  # type: ignore[attr-defined]
                scale.shape,
                scale.dtype,
                zero_point.shape if isinstance(zero_point, Tensor) else None,
                zero_point.dtype if isinstance(zero_point, Tensor) else None,
                step_gradient,
                grad_factor,
            )
        else:
            ctx.save_for_backward(inside)
        return out if out.dtype == x.dtype else out.to(x.dtype)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: Tensor
    ) -> tuple[Tensor | None, ...]:
        saved = ctx.saved_tensors  # type: ignore[attr-defined]
        inside = saved[0]
        needs = ctx.needs_input_grad  # type: ignore[attr-defined]
        grad_x = grad * inside if needs[0] else None
        grad_s = grad_z = None
        if needs[1] or needs[2]:
            _, v, x, s = saved
            scale_shape, scale_dtype, zero_shape, zero_dtype, step_gradient, k = ctx.meta  # type: ignore[attr-defined]
            g = grad if grad.dtype == v.dtype else grad.to(v.dtype)
            if k != 1.0:
                g = g * k
            if needs[1]:
                if step_gradient:
                    per_elem = v - torch.where(inside, x / s, 0.0)
                else:
                    per_elem = torch.where(inside, 0.0, v)
                grad_s = (g * per_elem).sum_to_size(scale_shape)
                grad_s = grad_s if grad_s.dtype == scale_dtype else grad_s.to(scale_dtype)
            if needs[2]:
                grad_z = torch.where(inside, 0.0, g * s).neg_().sum_to_size(zero_shape)
                grad_z = grad_z if grad_z.dtype == zero_dtype else grad_z.to(zero_dtype)
        return grad_x, grad_s, grad_z, None, None, None, None


def fake_quantize_learnable(
    x: Tensor,
    scale: Tensor,
    zero_point: Tensor | float = 0.0,
    scheme: Scheme | None = None,
    generator: torch.Generator | None = None,
    step_gradient: bool = True,
    grad_factor: float = 1.0,
) -> Tensor:
    """S·clamp(round(x/S), qmin − Z, qmax − Z) with S and Z given as tensors that broadcast
    against ``x`` and may require gradients: the learnable quantizers' forward pass.

    Gradients (see `_FakeQuantize`): x by the straight-through estimator; S as in LSQ
    (Esser et al. 2020, eq. 3: round(x/S) − x/S inside the range, qmin − Z or qmax − Z outside),
    or, with ``step_gradient=False``, only through the clipped values (PACT, Choi et al. 2018);
    Z as in LSQ+ (Bhalgat et al. 2020: −S outside the range, 0 inside; Z holds integers). The
    gradients of S and Z are multiplied by ``grad_factor`` (LSQ's g = 1/√(N·qmax)). The value is
    exactly `fake_quantize`'s for the same (S, Z)."""
    if not isinstance(scheme, Scheme):
        raise TypeError(f"fake_quantize_learnable needs a Scheme, got {type(scheme).__name__}")
    return _FakeQuantize.apply(  # type: ignore[no-any-return]
        x, scale, zero_point, scheme, generator, step_gradient, grad_factor
    )


def fake_quantize(
    x: Tensor, qparams: QParams, generator: torch.Generator | int | None = None
) -> Tensor:
    """dequantize(quantize(x)) in float (x's dtype), bit for bit, differentiable by the
    straight-through estimator: the gradient passes unchanged where x lies inside the clipping
    range, and is 0 outside. ``generator``: required by stochastic rounding."""
    check_tensor(x, "tensor to fake-quantize")
    qparams = _check_qparams(qparams, "fake_quantize")
    gen = as_generator(generator, qparams.scheme)
    check_finite(x, "tensor to fake-quantize")
    scale, zero_point, view_shape = qparams.broadcast(x.shape)
    out = _FakeQuantize.apply(
        x.reshape(view_shape), scale, zero_point, qparams.scheme, gen, True, 1.0
    )
    return out.reshape(x.shape)  # type: ignore[no-any-return]
