"""quantize / dequantize / fake_quantize: the uniform quantizer, written once.

    quantize:       q = clamp(round(r / S) + Z, qmin, qmax)
    dequantize:     r̂ = S · (q − Z)
    fake_quantize:  r̂ = S · (clamp(round(r / S), qmin − Z, qmax − Z))      (float in, float out)

`round` is the scheme's rounding mode applied to the float32 quotient fl(r / S): exactly ONNX
QuantizeLinear (and ONNX Runtime). torch.quantize_per_tensor rounds fl(Z + r·fl(1/S)) instead;
the two agree except at near-ties, where r / S lies within a float32 rounding error of a
half-integer (about 1 value in 10^6 on random data; tests/test_functional.py counts them).

fake_quantize's gradient is the straight-through estimator (Bengio et al. 2013; Jacob et al.
2018): ∂r̂/∂r = 1 where qmin ≤ round(r/S) + Z ≤ qmax, and 0 where the value was clipped.

Large per-tensor inputs are processed in cache-sized chunks, so the chain of element-wise steps
reads and writes main memory once. ``fused=True`` goes further for large per-tensor tensors:
one compiled loop (`zeropoint.fused`), the same codes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from zeropoint import fused as fused_kernels
from zeropoint.qparams import QParams, Scheme
from zeropoint.qtensor import QTensor
from zeropoint.validation import check_finite, check_tensor

#: Elements per chunk: 2^18 float32 values (1 MiB) stay in a core's L2 cache.
CHUNK = 1 << 18


def round_values(r: Tensor, mode: str, generator: torch.Generator | None = None) -> Tensor:
    """Round ``r`` to integers (as floats) in place where possible, by ``mode``.

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
        f = torch.floor(r)
        p = r.sub_(f)
        u = torch.rand(p.shape, generator=generator, dtype=p.dtype, device=p.device)
        return f.add_((u < p).to(f.dtype))
    raise ValueError(f"unknown rounding mode {mode!r}")


def _compute_dtype(scheme: Scheme) -> torch.dtype:
    # float32 is exact for every integer of a ≤16-bit format; int32 biases need float64.
    return torch.float64 if scheme.bits > 16 else torch.float32


def _quantize_per_tensor_chunked(
    x: Tensor, scale: float, zero_point: int, scheme: Scheme, generator: torch.Generator | None
) -> Tensor:
    """`quantize_int` for one (S, Z) over a large tensor, a cache-sized chunk at a time: the
    element-wise steps run on a buffer in L2 and main memory is read and written once."""
    flat = x.reshape(-1)
    out = torch.empty(flat.numel(), dtype=scheme.format.storage_dtype)
    buf = torch.empty(min(CHUNK, flat.numel()), dtype=torch.float32)
    lo, hi = float(scheme.qmin - zero_point), float(scheme.qmax - zero_point)
    if not math.isfinite(float(flat.sum())):  # NaN/Inf (or a huge finite sum): look closer
        check_finite(x, "tensor to quantize")
    for start in range(0, flat.numel(), CHUNK):
        chunk = flat[start : start + CHUNK]
        b = buf[: chunk.numel()]
        torch.div(chunk, scale, out=b)
        round_values(b, scheme.rounding, generator).clamp_(lo, hi).add_(zero_point)
        out[start : start + CHUNK].copy_(b)
    return out.reshape(x.shape)


def _dequantize_per_tensor_chunked(q: Tensor, scale: float, zero_point: int) -> Tensor:
    """S·(q − Z) in float32 for one (S, Z), a cache-sized chunk at a time."""
    flat = q.reshape(-1)
    out = torch.empty(flat.numel(), dtype=torch.float32)
    for start in range(0, flat.numel(), CHUNK):
        o = out[start : start + CHUNK]
        o.copy_(flat[start : start + CHUNK]).sub_(zero_point).mul_(scale)
    return out.reshape(q.shape)


def _quantize_values(
    x: Tensor, scale: Tensor, zero_point: Tensor, scheme: Scheme, generator: torch.Generator | None
) -> Tensor:
    """clamp(round(x / S), qmin − Z, qmax − Z) + Z, in the compute dtype (broadcast S, Z)."""
    dtype = _compute_dtype(scheme)
    r = torch.div(x.to(dtype), scale.to(dtype))
    r = round_values(r, scheme.rounding, generator)
    zp = zero_point.to(dtype)
    r = (
        torch.clamp_(r, scheme.qmin - zp, scheme.qmax - zp)
        if zp.dim()
        else r.clamp_(scheme.qmin - float(zp), scheme.qmax - float(zp))
    )
    return r.add_(zp)


def quantize_int(
    x: Tensor, qparams: QParams, generator: torch.Generator | None = None, *, fused: bool = False
) -> Tensor:
    """Integer codes q = clamp(round(x / S) + Z, qmin, qmax) as an unpacked integer tensor
    (int8/uint8 for ≤ 8 bits, int16/int32 above).

    ``fused=True`` runs large per-tensor, half-to-even, ≤ 16-bit cases as one compiled pass
    (`zeropoint.fused`: the same codes, ~2-2.7x faster, compiled on first use)."""
    check_tensor(x, "tensor to quantize")
    scheme = qparams.scheme
    scale, zero_point, view_shape = qparams.broadcast(x.shape)
    if scheme.granularity == "per_tensor" and x.numel() > CHUNK and scheme.bits <= 16:
        xf = x if x.dtype == torch.float32 else x.to(torch.float32)
        if fused and scheme.rounding == "half_even" and x.numel() >= fused_kernels.MIN_ELEMENTS:
            storage = scheme.format.storage_dtype
            result = fused_kernels.quantize_per_tensor(
                xf, float(scale), int(zero_point), scheme.qmin, scheme.qmax, storage
            )
            if result is not None:
                if not result[1]:
                    check_finite(x, "tensor to quantize")
                return result[0]
        return _quantize_per_tensor_chunked(xf, float(scale), int(zero_point), scheme, generator)
    check_finite(x, "tensor to quantize")
    storage = scheme.format.storage_dtype
    q = _quantize_values(x.reshape(view_shape), scale, zero_point, scheme, generator)
    return q.to(storage).reshape(x.shape)


def quantize(
    x: Tensor, qparams: QParams, generator: torch.Generator | None = None, *, fused: bool = False
) -> QTensor:
    """Quantize ``x`` to a `QTensor` (integer codes + the QParams; sub-byte codes packed)."""
    return QTensor.from_int(quantize_int(x, qparams, generator, fused=fused), qparams)


def dequantize_int(
    q: Tensor, qparams: QParams, dtype: torch.dtype = torch.float32, *, fused: bool = False
) -> Tensor:
    """r̂ = S · (q − Z) for an unpacked integer tensor ``q`` (``fused``: see `quantize_int`)."""
    if q.is_floating_point() or q.is_complex():
        raise TypeError(f"dequantize expects integer codes, got dtype {q.dtype}")
    scale, zero_point, view_shape = qparams.broadcast(q.shape)
    compute = torch.float64 if qparams.scheme.bits > 16 or dtype == torch.float64 else torch.float32
    if qparams.scheme.granularity == "per_tensor" and q.numel() > CHUNK and compute == dtype:
        if fused and q.numel() >= fused_kernels.MIN_ELEMENTS:
            r = fused_kernels.dequantize_per_tensor(q, float(scale), int(zero_point))
            if r is not None:
                return r
        return _dequantize_per_tensor_chunked(q, float(scale), int(zero_point))
    qv = q.reshape(view_shape).to(compute)
    r = (qv - zero_point.to(compute)).mul_(scale.to(compute))
    return r.to(dtype).reshape(q.shape)


def dequantize(
    q: QTensor | Tensor, qparams: QParams | None = None, *, fused: bool = False
) -> Tensor:
    """r̂ = S · (q − Z): from a QTensor, or from integer codes and their QParams."""
    if isinstance(q, QTensor):
        return dequantize_int(q.int_repr(), q.qparams, fused=fused)
    if qparams is None:
        raise TypeError("dequantize(tensor) needs the QParams of the codes")
    return dequantize_int(q, qparams, fused=fused)


class _FakeQuantizeSTE(torch.autograd.Function):
    """Forward: S·clamp(round(x/S), qmin−Z, qmax−Z). Backward: straight-through inside the range."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: Tensor,
        qparams: QParams,
        generator: torch.Generator | None,
    ) -> Tensor:
        scheme = qparams.scheme
        scale, zero_point, view_shape = qparams.broadcast(x.shape)
        dtype = _compute_dtype(scheme) if x.dtype != torch.float64 else torch.float64
        xv = x.detach().reshape(view_shape).to(dtype)
        s = scale.to(dtype)
        z = zero_point.to(dtype)
        r = round_values(torch.div(xv, s), scheme.rounding, generator)
        lo, hi = scheme.qmin - z, scheme.qmax - z
        inside = (r >= lo) & (r <= hi)
        out = torch.minimum(torch.maximum(r, lo), hi).mul_(s)
        ctx.save_for_backward(inside.reshape(x.shape))
        return out.to(x.dtype).reshape(x.shape)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: Tensor
    ) -> tuple[Tensor, None, None]:
        (inside,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return grad * inside.to(grad.dtype), None, None


def fake_quantize(x: Tensor, qparams: QParams, generator: torch.Generator | None = None) -> Tensor:
    """dequantize(quantize(x)) in float, differentiable by the straight-through estimator:
    the gradient passes unchanged where x lies inside the clipping range, and is 0 outside."""
    check_tensor(x, "tensor to fake-quantize")
    check_finite(x, "tensor to fake-quantize")
    return _FakeQuantizeSTE.apply(x, qparams, generator)  # type: ignore[no-any-return]
