"""ONNX Runtime's quantizers as its users run them, on an fp32 ONNX file, plus sessions and runners."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from demo.peers.common import (
    ONNX_OPSET,
    Batch,
    OrtCalibration,
    OrtType,
    _as_tuple,
    _check_batches,
    _check_module,
)
from zeropoint.report.files import atomic_path


def export_fp32_onnx(
    model: nn.Module, example_inputs: Tensor | tuple[Tensor], path: str | os.PathLike[str]
) -> Path:
    """Write ``model`` (one input) as fp32 ONNX with the TorchScript exporter.

    ``torch.onnx.export(model, example_inputs, path, dynamo=False, opset_version=17,
    input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})``
    on ``model`` in eval mode (restored afterwards), constant folding on (the default: batch norm
    is folded into a preceding Conv, not into a ConvTranspose). The dynamo exporter would need
    onnxscript, which zeropoint does not depend on.
    """
    _check_module(model)
    example = _as_tuple(example_inputs)
    if len(example) != 1 or not isinstance(example[0], Tensor):
        raise ValueError(f"export_fp32_onnx expects a model with one tensor input, got {example!r}")
    was_training = model.training
    model.eval()
    try:
        with atomic_path(path) as tmp, warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            torch.onnx.export(
                model,
                example,
                str(tmp),
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=["x"],
                output_names=["y"],
                dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
            )
    finally:
        model.train(was_training)
    return Path(path)


def _onnx_inputs(path: Path) -> list[str]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    return [i.name for i in graph.input if i.name not in initializers]


def _feed(batch: Batch, names: Sequence[str]) -> dict[str, np.ndarray]:
    """A batch as ONNX Runtime's feed: a lone tensor goes to the model's only input."""
    if isinstance(batch, Tensor):
        if len(names) != 1:
            raise ValueError(f"a Tensor batch needs a one-input model; this one has {names}")
        batch = {names[0]: batch}
    missing = set(names) - set(batch)
    if missing:
        raise ValueError(f"batch lacks model inputs {sorted(missing)} (has {sorted(batch)})")
    return {
        k: v.detach().cpu().numpy() if isinstance(v, Tensor) else np.asarray(v)
        for k, v in batch.items()
        if k in names
    }


def _data_reader(batches: list[Batch], names: list[str]) -> Any:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over ``batches``."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._feeds = [_feed(b, names) for b in batches]
            self._i = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self._i >= len(self._feeds):
                return None
            self._i += 1
            return self._feeds[self._i - 1]

        def rewind(self) -> None:
            self._i = 0

    return _Reader()


def _check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def _existing(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no ONNX model at {p}")
    return p


def ort_static_int8(
    fp32_path: str | os.PathLike[str],
    calib_batches: Sequence[Batch],
    out_path: str | os.PathLike[str],
    per_channel: bool = False,
    activation_type: OrtType = "QInt8",
    weight_type: OrtType = "QInt8",
    calibrate_method: OrtCalibration = "MinMax",
    nodes_to_exclude: Sequence[str] = (),
) -> Path:
    """ONNX Runtime static int8: ``onnxruntime.quantization.quantize_static`` in the QDQ format.

    Calls ``quantize_static(fp32_path, out_path, reader, quant_format=QuantFormat.QDQ,
    per_channel=per_channel, activation_type=QuantType[activation_type],
    weight_type=QuantType[weight_type], calibrate_method=CalibrationMethod[calibrate_method])``
    where ``reader`` is a ``CalibrationDataReader`` yielding one feed per batch (a Tensor goes to
    the model's only input; a mapping gives every input by name), and ``nodes_to_exclude``
    (none by default). Every other argument keeps ORT's default: all quantizable op types,
    ``reduce_range=False``, no pre-processing (``quant_pre_process``), ``extra_options`` empty —
    so activations are asymmetric (``ActivationSymmetric=False``) and int8 weights symmetric.
    ORT's graph optimizer fuses the QDQ pairs into integer kernels when the session is created.

    On a transformer exported from PyTorch this default quantizes the additive attention mask
    (≈ −3.4e38 where masked) and the masked attention scores: their calibrated scale is
    infinite and all-MiniLM-L6-v2's embeddings collapse (mean cosine ≈ 0.40 to fp32).
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    src = _existing(fp32_path)
    batches = _check_batches(calib_batches)
    _check_choice("activation_type", activation_type, ("QInt8", "QUInt8"))
    _check_choice("weight_type", weight_type, ("QInt8", "QUInt8"))
    _check_choice("calibrate_method", calibrate_method, list(CalibrationMethod.__members__))
    reader = _data_reader(batches, _onnx_inputs(src))
    with atomic_path(out_path) as tmp:
        quantize_static(
            src,
            tmp,
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType[activation_type],
            weight_type=QuantType[weight_type],
            calibrate_method=CalibrationMethod[calibrate_method],
            nodes_to_exclude=list(nodes_to_exclude) or None,
        )
    return Path(out_path)


def ort_dynamic_int8(fp32_path: str | os.PathLike[str], out_path: str | os.PathLike[str]) -> Path:
    """ONNX Runtime dynamic int8: ``onnxruntime.quantization.quantize_dynamic(fp32_path,
    out_path, weight_type=QuantType.QInt8)``, every other argument ORT's default (all op types
    it quantizes dynamically — MatMul, Gemm, Conv, Attention, Gather, ... —, per-tensor,
    ``reduce_range=False``). Activations are quantized to uint8 per tensor at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = _existing(fp32_path)
    with atomic_path(out_path) as tmp:
        quantize_dynamic(src, tmp, weight_type=QuantType.QInt8)
    return Path(out_path)


def ort_session(path: str | os.PathLike[str], threads: int = 1) -> Any:
    """An ``onnxruntime.InferenceSession`` on the CPU execution provider with ``threads``
    intra-op threads, one inter-op thread and ORT's default graph optimizations (all)."""
    import onnxruntime as ort

    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(_existing(path)), options, providers=["CPUExecutionProvider"])


def ort_runner(session: Any) -> Callable[[Tensor], Tensor]:
    """A function from a torch batch to the session's first output as a torch tensor (for a
    one-input model such as ``export_fp32_onnx`` writes), e.g. for
    ``demo.zoo.digits.accuracy(ort_runner(s), x, y)``."""
    names = [i.name for i in session.get_inputs()]
    if len(names) != 1:
        raise ValueError(f"ort_runner needs a one-input model, this one has inputs {names}")
    name = names[0]

    def run(x: Tensor) -> Tensor:
        feed = {name: x.detach().cpu().to(torch.float32).numpy()}
        return torch.from_numpy(session.run(None, feed)[0])

    return run
