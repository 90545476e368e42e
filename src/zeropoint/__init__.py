"""zeropoint: turn trained float PyTorch models into small, fast integer ones.

import zeropoint as zp
s  = zp.Scheme(bits=8, symmetric=False)             # what to do
qp = zp.calibrate(x, s, method="entropy")          # the numbers: scale, zero point
qt = zp.quantize(x, qp); xh = zp.dequantize(qt)    # r = S·(q − Z)
"""

from zeropoint import formats, observers
from zeropoint.functional import dequantize, fake_quantize, quantize, quantize_int
from zeropoint.observers import calibrate
from zeropoint.qparams import QParams, Scheme, qparams_from_range
from zeropoint.qtensor import QTensor
from zeropoint.quantizer import Quantizer

__version__ = "0.1.0"

__all__ = [
    "QParams",
    "QTensor",
    "Quantizer",
    "Scheme",
    "calibrate",
    "dequantize",
    "fake_quantize",
    "formats",
    "observers",
    "qparams_from_range",
    "quantize",
    "quantize_int",
]
