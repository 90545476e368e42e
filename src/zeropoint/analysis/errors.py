"""Error analysis: how far a quantized tensor is from the original, and sweeps over settings.

    MSE     = mean((x̂ − x)²)
    SQNR    = 10·log10(Σ x² / Σ (x̂ − x)²)  dB   (≈ 6.02·b + c for uniform b-bit quantization)
    max abs = max |x̂ − x|
    cosine  = ⟨x, x̂⟩ / (‖x‖·‖x̂‖)
All metrics are computed in float64.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from torch import Tensor

from zeropoint.functional import dequantize_int, quantize_int
from zeropoint.observers.registry import calibrate
from zeropoint.qparams import QParams, Scheme
from zeropoint.quantizer import Quantizer
from zeropoint.validation import check_finite


def _pair(x: Tensor, x_hat: Tensor) -> tuple[Tensor, Tensor]:
    if x.shape != x_hat.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(x_hat.shape)}")
    if x.numel() == 0:
        raise ValueError("cannot measure the error of an empty tensor")
    return x.detach().double().reshape(-1), x_hat.detach().double().reshape(-1)


def mse(x: Tensor, x_hat: Tensor) -> float:
    """mean((x̂ − x)²)."""
    a, b = _pair(x, x_hat)
    return float(((b - a) ** 2).mean())


def sqnr_db(x: Tensor, x_hat: Tensor) -> float:
    """10·log10(Σx² / Σ(x̂ − x)²) in dB; +inf for an exact reconstruction."""
    a, b = _pair(x, x_hat)
    noise = float(((b - a) ** 2).sum())
    signal = float((a**2).sum())
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def max_abs_error(x: Tensor, x_hat: Tensor) -> float:
    """max |x̂ − x|."""
    a, b = _pair(x, x_hat)
    return float((b - a).abs().max())


def cosine(x: Tensor, x_hat: Tensor) -> float:
    """⟨x, x̂⟩ / (‖x‖·‖x̂‖); 1.0 when both are zero."""
    a, b = _pair(x, x_hat)
    na, nb = float(a.norm()), float(b.norm())
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(a @ b) / (na * nb)


@dataclass(frozen=True)
class ErrorReport:
    """The four metrics of one quantization of one tensor, plus what produced it."""

    name: str
    bits: int
    mse: float
    sqnr_db: float
    max_abs: float
    cosine: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def report(x: Tensor, x_hat: Tensor, name: str = "", bits: int = 0) -> ErrorReport:
    """All metrics of x̂ against x."""
    check_finite(x, "reference tensor")
    return ErrorReport(
        name, bits, mse(x, x_hat), sqnr_db(x, x_hat), max_abs_error(x, x_hat), cosine(x, x_hat)
    )


def error_report(x: Tensor, quantizer: Quantizer | QParams, name: str | None = None) -> ErrorReport:
    """Quantize ``x`` with a fitted `Quantizer` (uniform or not) or with QParams, and measure."""
    if isinstance(quantizer, QParams):
        x_hat = dequantize_int(quantize_int(x, quantizer), quantizer)
        return report(x, x_hat, name or str(quantizer.scheme), quantizer.scheme.bits)
    x_hat = quantizer.decode(quantizer.encode(x))
    return report(x, x_hat, name or quantizer.name, quantizer.bits)


@dataclass(frozen=True)
class UniformQuantizer:
    """The uniform (affine / scale) quantizer as a `Quantizer`: codes q, reals S·(q − Z)."""

    qparams: QParams

    @classmethod
    def fit(cls, x: Tensor, scheme: Scheme, method: str = "minmax") -> UniformQuantizer:
        return cls(calibrate(x, scheme, method))

    @property
    def name(self) -> str:
        return f"uniform {self.qparams.scheme}"

    @property
    def bits(self) -> int:
        return self.qparams.scheme.bits

    def encode(self, x: Tensor) -> Tensor:
        return quantize_int(x, self.qparams)

    def decode(self, codes: Tensor) -> Tensor:
        return dequantize_int(codes, self.qparams)


@dataclass(frozen=True)
class SweepRow:
    bits: int
    method: str
    granularity: str
    mse: float
    sqnr_db: float
    max_abs: float
    cosine: float


def sweep(
    x: Tensor,
    bits: Iterable[int] = range(2, 17),
    methods: Sequence[str] = ("minmax", "percentile", "entropy", "mse", "aciq"),
    granularities: Sequence[str] = ("per_tensor", "per_channel"),
    symmetric: bool = True,
    group_size: int = 32,
) -> list[SweepRow]:
    """Error of every (bits × method × granularity) combination on ``x``.

    Granularities: 'per_tensor', 'per_channel' (axis 0), 'per_group' (``group_size`` along the
    last axis). Shows the error growing as bits shrink or as the range widens (min-max on data
    with outliers)."""
    rows: list[SweepRow] = []
    axis_for = {"per_tensor": None, "per_channel": 0, "per_group": -1}
    for b in bits:
        for gran in granularities:
            if gran not in axis_for:
                raise ValueError(f"unknown granularity {gran!r}: expected one of {list(axis_for)}")
            scheme = Scheme(
                bits=b,
                symmetric=symmetric,
                axis=axis_for[gran],
                group_size=group_size if gran == "per_group" else None,
            )
            for method in methods:
                qp = calibrate(x, scheme, method)
                r = error_report(x, qp)
                rows.append(SweepRow(b, method, gran, r.mse, r.sqnr_db, r.max_abs, r.cosine))
    return rows
