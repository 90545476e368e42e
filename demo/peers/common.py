"""Argument checks and types shared by the peer wrappers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from torch import Tensor, nn

TorchAOBackend = Literal["x86", "fbgemm", "qnnpack"]
OrtType = Literal["QInt8", "QUInt8"]
OrtCalibration = Literal["MinMax", "Entropy", "Percentile", "Distribution"]
Batch = Tensor | Mapping[str, Tensor | np.ndarray]

ONNX_OPSET = 17
_MINILM_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _check_module(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    return model


def _check_batches(batches: Sequence[Batch], what: str = "calib_batches") -> list[Batch]:
    if isinstance(batches, Tensor | Mapping) or not isinstance(batches, Sequence):
        raise TypeError(f"{what} must be a list of batches, got {type(batches).__name__}")
    if len(batches) == 0:
        raise ValueError(f"{what} is empty: calibration needs at least one batch")
    for i, b in enumerate(batches):
        if not isinstance(b, Tensor | Mapping):
            raise TypeError(
                f"{what}[{i}] must be a Tensor or a mapping of input name to array, "
                f"got {type(b).__name__}"
            )
    return list(batches)


def _as_tuple(example_inputs: Tensor | tuple[Any, ...]) -> tuple[Any, ...]:
    if isinstance(example_inputs, Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, tuple) and example_inputs:
        return example_inputs
    raise TypeError(
        f"example_inputs must be a Tensor or a non-empty tuple of model inputs, "
        f"got {type(example_inputs).__name__}"
    )
