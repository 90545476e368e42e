"""ONNX Runtime's weight-only quantizer: ``MatMulNBitsQuantizer`` on an fp32 ONNX file.

Each MatMul with a constant weight becomes ``com.microsoft::MatMulNBits`` (block-wise 2/4/8-bit
weights, float activations), by one of the algorithms ONNX Runtime ships:

* ``"rtn"`` — its default: ``DefaultWeightOnlyQuantConfig`` (round to nearest, min-max scales per
  block of ``block_size`` input channels, asymmetric unless ``symmetric``);
* ``"hqq"`` — ``HQQWeightOnlyQuantConfig`` (half-quadratic zero points, data-free);
* ``"gptq"`` — ``GPTQWeightOnlyQuantConfig`` (its bundled Intel Neural Compressor GPTQ, 4-bit
  only, fed the calibration batches; act-order on, dampening 0.01, as zeropoint's default).

ONNX Runtime offers no 3-bit MatMulNBits (2, 4 or 8 bits); ``bits=3`` raises ValueError.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from zeropoint.report.files import atomic_path

Algorithm = Literal["rtn", "hqq", "gptq"]


class _Feeds:
    """A CalibrationDataReader over a list of input dicts (numpy arrays)."""

    def __init__(self, feeds: Sequence[dict[str, Any]]) -> None:
        self.feeds = [{k: np.asarray(v) for k, v in f.items()} for f in feeds]
        self.i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.feeds):
            return None
        self.i += 1
        return self.feeds[self.i - 1]

    def rewind(self) -> None:
        self.i = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.feeds)


def ort_matmul_nbits(
    fp32_onnx: str | os.PathLike[str],
    out: str | os.PathLike[str],
    algorithm: Algorithm = "rtn",
    bits: int = 4,
    block_size: int = 32,
    symmetric: bool = False,
    calib_feeds: Sequence[dict[str, Any]] | None = None,
) -> Path:
    """Quantize the MatMul weights of ``fp32_onnx`` with ONNX Runtime's MatMulNBitsQuantizer
    (module docstring) and write the model to ``out``."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        GPTQWeightOnlyQuantConfig,
        HQQWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    if bits not in (2, 4, 8):
        raise ValueError(f"ONNX Runtime's MatMulNBits takes 2, 4 or 8 bits, not {bits}")
    model = onnx.load(str(fp32_onnx))
    config: Any
    if algorithm == "rtn":
        config = DefaultWeightOnlyQuantConfig(
            block_size=block_size, is_symmetric=symmetric, bits=bits
        )
    elif algorithm == "hqq":
        config = HQQWeightOnlyQuantConfig(block_size=block_size, bits=bits)
    elif algorithm == "gptq":
        if bits != 4 or not calib_feeds:
            raise ValueError("ONNX Runtime's GPTQ is 4-bit and needs calibration feeds")
        config = GPTQWeightOnlyQuantConfig(
            calibration_data_reader=_Feeds(calib_feeds), actorder=True
        )
    else:
        raise ValueError(f"algorithm={algorithm!r}: expected 'rtn', 'hqq' or 'gptq'")
    quantizer = MatMulNBitsQuantizer(
        model, bits=bits, block_size=block_size, is_symmetric=symmetric, algo_config=config
    )
    quantizer.process()
    with atomic_path(out) as tmp:
        quantizer.model.save_model_to_file(str(tmp), use_external_data_format=False)
    return Path(out)


__all__ = ["ort_matmul_nbits"]
