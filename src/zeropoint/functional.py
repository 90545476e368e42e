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
reads and writes main memory once; this keeps quantize as fast as torch's fused kernel.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from zeropoint.qparams import QParams, Scheme
from zeropoint.qtensor import QTensor
from zeropoint.validation import check_finite, check_tensor

#: Elements per chunk: 2^16 float32 values (256 KiB) stay in a core's L2 cache.
CHUNK = 1 << 16


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


def _chunked(
    fn: Callable[[Tensor, Tensor, Tensor], Tensor],
    x: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    out: Tensor,
) -> Tensor:
    """Apply ``fn(x_chunk, S, Z) -> out_chunk`` over a flat per-tensor input in chunks."""
    flat_x, flat_out = x.reshape(-1), out.view(-1)
    for start in range(0, flat_x.numel(), CHUNK):
        stop = start + CHUNK
        flat_out[start:stop] = fn(flat_x[start:stop], scale, zero_point)
    return out


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


def quantize_int(x: Tensor, qparams: QParams, generator: torch.Generator | None = None) -> Tensor:
    """Integer codes q = clamp(round(x / S) + Z, qmin, qmax) as an unpacked integer tensor
    (int8/uint8 for ≤ 8 bits, int16/int32 above)."""
    check_tensor(x, "tensor to quantize")
    check_finite(x, "tensor to quantize")
    scheme = qparams.scheme
    scale, zero_point, view_shape = qparams.broadcast(x.shape)
    storage = scheme.format.storage_dtype
    if scheme.granularity == "per_tensor" and x.numel() > CHUNK:
        out = torch.empty(x.shape, dtype=storage)
        return _chunked(
            lambda xs, s, z: _quantize_values(xs, s, z, scheme, generator),
            x,
            scale,
            zero_point,
            out,
        )
    q = _quantize_values(x.reshape(view_shape), scale, zero_point, scheme, generator)
    return q.to(storage).reshape(x.shape)


def quantize(x: Tensor, qparams: QParams, generator: torch.Generator | None = None) -> QTensor:
    """Quantize ``x`` to a `QTensor` (integer codes + the QParams; sub-byte codes packed)."""
    return QTensor.from_int(quantize_int(x, qparams, generator), qparams)


def dequantize_int(q: Tensor, qparams: QParams, dtype: torch.dtype = torch.float32) -> Tensor:
    """r̂ = S · (q − Z) for an unpacked integer tensor ``q``."""
    if q.is_floating_point() or q.is_complex():
        raise TypeError(f"dequantize expects integer codes, got dtype {q.dtype}")
    scale, zero_point, view_shape = qparams.broadcast(q.shape)
    compute = torch.float64 if qparams.scheme.bits > 16 or dtype == torch.float64 else torch.float32
    if qparams.scheme.granularity == "per_tensor" and q.numel() > CHUNK:
        out = torch.empty(q.shape, dtype=dtype)
        return _chunked(
            lambda qs, s, z: (qs.to(compute) - z.to(compute)).mul_(s.to(compute)),
            q,
            scale,
            zero_point,
            out,
        )
    qv = q.reshape(view_shape).to(compute)
    r = (qv - zero_point.to(compute)).mul_(scale.to(compute))
    return r.to(dtype).reshape(q.shape)


def dequantize(q: QTensor | Tensor, qparams: QParams | None = None) -> Tensor:
    """r̂ = S · (q − Z): from a QTensor, or from integer codes and their QParams."""
    if isinstance(q, QTensor):
        return dequantize_int(q.int_repr(), q.qparams)
    if qparams is None:
        raise TypeError("dequantize(tensor) needs the QParams of the codes")
    return dequantize_int(q, qparams)


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
