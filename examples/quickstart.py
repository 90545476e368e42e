"""Tensor-level quantization in a dozen lines: schemes, calibration, QTensor, error metrics."""

import torch

import zeropoint as zp
from zeropoint.analysis import error_report

torch.manual_seed(0)
w = torch.randn(256, 512) * torch.logspace(-1, 0.5, 256).unsqueeze(1)  # uneven channel ranges

for scheme in (
    zp.Scheme(bits=8, symmetric=True),  # int8, one scale
    zp.Scheme(bits=8, symmetric=True, axis=0),  # int8, a scale per output channel
    zp.Scheme(bits=4, symmetric=True, group_size=64),  # int4, a scale per 64 weights
):
    qp = zp.calibrate(w, scheme, method="mse")
    qt = zp.quantize(w, qp)  # integer codes (int4 packed two per byte)
    r = error_report(w, qp)
    print(f"{scheme!s:40} {qt.nbytes:7d} bytes  SQNR {r.sqnr_db:5.1f} dB  cosine {r.cosine:.5f}")

print(zp.formats.ieee754_fields(7.625))
print("Q3.3 of 7.625:", zp.formats.FixedPoint(3, 3).to_binary(7.625))
print(
    "fp8 e4m3 of [0.1, 300, 500]:",
    zp.formats.FP8_E4M3.round(torch.tensor([0.1, 300.0, 500.0])).tolist(),
)
