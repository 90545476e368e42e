"""zeropoint: turn trained float PyTorch models into small, fast integer ones.

import zeropoint as zp
s  = zp.Scheme(bits=8, symmetric=False)             # what to do
qp = zp.calibrate(x, s, method="entropy")          # the numbers: scale, zero point
qt = zp.quantize(x, qp); xh = zp.dequantize(qt)    # r = S·(q − Z)
"""

from zeropoint import formats, observers
from zeropoint.consistency import compare_executions
from zeropoint.engine.program import IntegerProgram, to_integer
from zeropoint.export.checkpoint import load, save
from zeropoint.export.onnx import export_onnx
from zeropoint.export.onnx_weight_only import export_weight_only_onnx
from zeropoint.fold import fold_bn
from zeropoint.functional import dequantize, fake_quantize, quantize, quantize_int
from zeropoint.nn.codebook_weights import WeightSpec, quantize_weights
from zeropoint.nn.learned_codebook import prepare_codebook_qat
from zeropoint.observers import calibrate
from zeropoint.ptq.awq import awq_quantize
from zeropoint.ptq.gptq import gptq_quantize
from zeropoint.ptq.hqq import hqq_quantize
from zeropoint.qparams import QParams, Scheme, qparams_from_range
from zeropoint.qtensor import QTensor
from zeropoint.quantizer import Quantizer
from zeropoint.workflows.config import (
    PRESETS,
    LayerRule,
    QuantConfig,
    float_static,
    int4_weight_only,
    int8_dynamic,
    int8_static,
    w2a2_qat,
    w3a3_qat,
    w4a4_qat,
)
from zeropoint.workflows.dynamic import quantize_dynamic
from zeropoint.workflows.qat import freeze_bn, prepare_qat, qat_param_groups
from zeropoint.workflows.static import (
    calibrate_model,
    calibrating,
    convert,
    prepare,
    quantize_static,
)

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "IntegerProgram",
    "LayerRule",
    "QParams",
    "QTensor",
    "QuantConfig",
    "Quantizer",
    "Scheme",
    "WeightSpec",
    "awq_quantize",
    "calibrate",
    "calibrate_model",
    "calibrating",
    "compare_executions",
    "convert",
    "dequantize",
    "export_onnx",
    "export_weight_only_onnx",
    "fake_quantize",
    "float_static",
    "fold_bn",
    "formats",
    "freeze_bn",
    "gptq_quantize",
    "hqq_quantize",
    "int4_weight_only",
    "int8_dynamic",
    "int8_static",
    "load",
    "observers",
    "prepare",
    "prepare_codebook_qat",
    "prepare_qat",
    "qat_param_groups",
    "qparams_from_range",
    "quantize",
    "quantize_dynamic",
    "quantize_int",
    "quantize_static",
    "quantize_weights",
    "save",
    "to_integer",
    "w2a2_qat",
    "w3a3_qat",
    "w4a4_qat",
]
