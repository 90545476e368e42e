"""The peers' own quantizers, run on a float ``torch.nn.Module`` behind one small interface.

zeropoint is compared side by side with the toolkits it aims to beat. Each function here calls a
peer's public API with its usual settings, stated in the docstring, so that the demo, the
benchmarks and the tests measure the peer as its users would run it, not a re-implementation:

* torch.ao.quantization — ``quantize_dynamic`` (eager) and FX graph mode static int8
  (``get_default_qconfig_mapping`` → ``prepare_fx`` → calibrate → ``convert_fx``);
* ONNX Runtime — ``onnxruntime.quantization.quantize_static`` (QDQ) and ``quantize_dynamic`` on
  an fp32 ONNX file written by the TorchScript exporter, plus sessions and runners;
* all-MiniLM-L6-v2 through ONNX Runtime: export of its BERT encoder and an encoder that
  reproduces the sentence-transformers pipeline (mean pooling over the attention mask, L2 norm);
* measurement helpers: file and checkpoint sizes, median latency.

torch 2.13 marks torch.ao.quantization deprecated (it still runs); its deprecation warnings are
silenced only around the calls made here. Known peer defects are reported, not hidden: on this
CPU build the quantized ``ConvTranspose2d`` of the ``x86`` and ``onednn`` engines is wrong when
in_channels ≠ out_channels, and ``fbgemm``'s is wrong and non-deterministic for 2x2 kernels
(see ``torch_ao_static_int8``); ``qnnpack``'s is correct.
"""

from __future__ import annotations

import contextlib
import copy
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from zeropoint.report.files import atomic_path

__all__ = [
    "export_fp32_onnx",
    "export_minilm_onnx",
    "file_size",
    "latency",
    "minilm_calibration_batches",
    "ort_dynamic_int8",
    "ort_minilm_encoder",
    "ort_runner",
    "ort_session",
    "ort_static_int8",
    "state_dict_size",
    "torch_ao_dynamic_int8",
    "torch_ao_static_int8",
]

TorchAOBackend = Literal["x86", "fbgemm", "qnnpack"]
OrtType = Literal["QInt8", "QUInt8"]
OrtCalibration = Literal["MinMax", "Entropy", "Percentile", "Distribution"]
Batch = Tensor | Mapping[str, Tensor | np.ndarray]

ONNX_OPSET = 17
_MINILM_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


# ---------------------------------------------------------------------------------------------
# torch.ao.quantization
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_torch_ao() -> Iterator[None]:
    """Silence torch.ao.quantization's deprecation warnings (and the quantized-tensor creation
    notice) inside the block only; every other warning still shows."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantized tensor creation.*")
        warnings.filterwarnings("ignore", message=".*reduce_range will be deprecated.*")
        yield


@contextlib.contextmanager
def _quantized_engine(name: str) -> Iterator[None]:
    """Use quantized engine ``name`` inside the block (weights are packed for the engine that is
    current at ``convert_fx`` time), then restore the previous one."""
    if name not in torch.backends.quantized.supported_engines:
        raise RuntimeError(
            f"torch.ao quantized engine {name!r} is not available in this torch build "
            f"(supported: {torch.backends.quantized.supported_engines})"
        )
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


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


def torch_ao_dynamic_int8(model: nn.Module) -> nn.Module:
    """torch.ao dynamic int8, the usual default: on a deep copy of ``model``,
    ``torch.ao.quantization.quantize_dynamic(m, {nn.Linear}, dtype=torch.qint8)``.

    Linear weights become per-tensor symmetric int8 (default ``default_dynamic_qconfig``:
    ``MinMaxObserver``, ``qint8``); activations are quantized to uint8 per batch at run time
    (``reduce_range`` on fbgemm/x86). Every other layer stays float. ``model`` is not modified.
    """
    _check_module(model)
    with _quiet_torch_ao():
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)


def torch_ao_static_int8(
    model: nn.Module,
    calib_batches: Sequence[Tensor],
    example_inputs: Tensor | tuple[Any, ...],
    backend: TorchAOBackend = "x86",
) -> nn.Module:
    """torch.ao FX graph mode static int8 with the default qconfig mapping of ``backend``.

    On a deep copy of ``model`` in eval mode: ``prepare_fx(m,
    get_default_qconfig_mapping(backend), example_inputs)``, one forward per calibration batch,
    then ``convert_fx`` with ``torch.backends.quantized.engine = backend`` (restored afterwards).
    The ``x86`` default is uint8 activations (``HistogramObserver``, ``reduce_range=True``) and
    per-channel symmetric int8 weights; conv/linear + bn + relu are fused. ``ConvTranspose`` gets
    per-tensor weights (no per-channel support in torch.ao).

    Known defect (measured on this CPU build of torch 2.13): the quantized ``ConvTranspose2d``
    kernel of the ``x86`` and ``onednn`` engines gives wrong outputs (errors of ~200 LSB) whenever
    in_channels ≠ out_channels, for every kernel size and stride; ``fbgemm``'s gives wrong *and
    run-to-run different* outputs for 2x2 kernels; ``qnnpack``'s is correct. A model with such a
    layer (the digits CNN) therefore loses its accuracy on ``x86``/``fbgemm`` but not on
    ``qnnpack``. This wrapper reports the peer as it is and does not work around it.

    Raises ValueError for an empty calibration list, RuntimeError if FX cannot trace, prepare or
    convert the model (the peer's own exception is chained).
    """
    _check_module(model)
    batches = _check_batches(calib_batches)
    example = _as_tuple(example_inputs)
    if backend not in ("x86", "fbgemm", "qnnpack"):
        raise ValueError(f"backend must be 'x86', 'fbgemm' or 'qnnpack', got {backend!r}")
    with _quiet_torch_ao(), _quantized_engine(backend):
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        m = copy.deepcopy(model).eval()
        try:
            prepared = prepare_fx(m, get_default_qconfig_mapping(backend), example)
        except Exception as exc:
            raise RuntimeError(
                f"torch.ao FX graph mode cannot prepare {type(model).__name__} for static int8 "
                f"(backend {backend!r}): {type(exc).__name__}: {exc}"
            ) from exc
        with torch.no_grad():
            for b in batches:
                prepared(b)
        try:
            return convert_fx(prepared)
        except Exception as exc:
            raise RuntimeError(
                f"torch.ao FX graph mode cannot convert {type(model).__name__} to int8 "
                f"(backend {backend!r}): {type(exc).__name__}: {exc}"
            ) from exc


# ---------------------------------------------------------------------------------------------
# ONNX Runtime
# ---------------------------------------------------------------------------------------------


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
    ``zeropoint.zoo.digits.accuracy(ort_runner(s), x, y)``."""
    names = [i.name for i in session.get_inputs()]
    if len(names) != 1:
        raise ValueError(f"ort_runner needs a one-input model, this one has inputs {names}")
    name = names[0]

    def run(x: Tensor) -> Tensor:
        feed = {name: x.detach().cpu().to(torch.float32).numpy()}
        return torch.from_numpy(session.run(None, feed)[0])

    return run


# ---------------------------------------------------------------------------------------------
# all-MiniLM-L6-v2 through ONNX Runtime
# ---------------------------------------------------------------------------------------------


class _BertLastHidden(nn.Module):
    """The sentence-transformer's BERT as a function of its three token inputs."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> Tensor:
        out = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        )
        return out.last_hidden_state


def _tokenize(model: Any, texts: Sequence[str]) -> dict[str, Tensor]:
    """Tokenize as sentence-transformers does: ``model.tokenizer`` with ``padding=True``,
    ``truncation="longest_first"``, ``max_length=model.max_seq_length``."""
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be a list of strings")
    if len(texts) == 0:
        raise ValueError("texts is empty")
    enc = model.tokenizer(
        list(texts),
        padding=True,
        truncation="longest_first",
        max_length=model.max_seq_length,
        return_tensors="pt",
    )
    return {k: enc[k] for k in _MINILM_INPUTS}


def export_minilm_onnx(model: Any, path: str | os.PathLike[str]) -> Path:
    """Write the sentence-transformer's BERT (``model[0].auto_model``) as fp32 ONNX.

    TorchScript exporter (``dynamo=False``, opset 17), inputs ``input_ids``, ``attention_mask``,
    ``token_type_ids`` (int64, dynamic batch and sequence axes), output ``last_hidden_state``
    (dynamic batch and sequence). Pooling and normalisation stay outside (see
    ``ort_minilm_encoder``), as in the sentence-transformers pipeline.
    """
    bert = model[0].auto_model
    wrapper = _BertLastHidden(bert).eval()
    example = _tokenize(
        model, ["An example sentence to trace, padded against the next one.", "A short one."]
    )
    axes = {0: "batch", 1: "sequence"}
    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # transformers' mask builder indexes with non-negative aranges only, so the exporter's
        # caution about negative indices does not apply (the tests check fp32 parity)
        warnings.filterwarnings("ignore", message=".*advanced indexing in opset.*")
        torch.onnx.export(
            wrapper,
            tuple(example[k] for k in _MINILM_INPUTS),
            str(tmp),
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=list(_MINILM_INPUTS),
            output_names=["last_hidden_state"],
            dynamic_axes={**{k: axes for k in _MINILM_INPUTS}, "last_hidden_state": axes},
        )
    return Path(path)


def minilm_calibration_batches(
    model: Any, sentences: Sequence[str], batch_size: int = 16
) -> list[dict[str, Tensor]]:
    """``sentences`` tokenized as sentence-transformers does, in batches of ``batch_size``: the
    feeds for ``ort_static_int8`` on an ``export_minilm_onnx`` file."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return [
        _tokenize(model, sentences[i : i + batch_size])
        for i in range(0, len(sentences), batch_size)
    ]


def ort_minilm_encoder(
    path: str | os.PathLike[str],
    model: Any | None = None,
    threads: int = 1,
    batch_size: int = 32,
) -> Callable[[list[str]], Tensor]:
    """Sentence embeddings from an ``export_minilm_onnx`` file (fp32 or quantized) run by ONNX
    Runtime, computed as the sentence-transformers pipeline computes them:

        e = Σ_t m_t·h_t / max(Σ_t m_t, 1e-9),   embedding = e / max(‖e‖₂, 1e-12)

    (mean pooling of ``last_hidden_state`` h over the attention mask m, then L2 normalisation),
    after tokenizing with ``model.tokenizer`` exactly as ``model.encode`` does. ``model`` is the
    sentence-transformer (``zeropoint.zoo.minilm.load_minilm()`` when None), used only for its
    tokenizer. Returns a function from a list of strings to an ``(n, 384)`` float32 tensor.
    """
    if model is None:
        from zeropoint.zoo.minilm import load_minilm

        model = load_minilm()
    session = ort_session(path, threads)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")

    def encode(texts: list[str]) -> Tensor:
        if isinstance(texts, str) or len(texts) == 0:
            raise ValueError("encode needs a non-empty list of strings")
        out = []
        for i in range(0, len(texts), batch_size):
            tokens = _tokenize(model, texts[i : i + batch_size])
            feed = {k: v.numpy() for k, v in tokens.items()}
            hidden = torch.from_numpy(session.run(["last_hidden_state"], feed)[0])
            mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, p=2, dim=1))
        return torch.cat(out)

    return encode


# ---------------------------------------------------------------------------------------------
# measurement
# ---------------------------------------------------------------------------------------------


def file_size(path: str | os.PathLike[str]) -> int:
    """Bytes on disk of a file, or of every file under a directory (e.g. ONNX + external data)."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    raise FileNotFoundError(f"no file or directory at {p}")


def state_dict_size(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())`` in a temporary file — the checkpoint size of
    a float or a torch.ao quantized model (packed int8 weights included)."""
    _check_module(model)
    with tempfile.TemporaryDirectory() as d, _quiet_torch_ao():
        f = Path(d) / "model.pt"
        torch.save(model.state_dict(), f)
        return f.stat().st_size


def latency(fn: Callable[..., Any], *args: Any, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall-clock seconds of ``fn(*args)`` over ``repeats`` timed calls (under
    ``torch.no_grad()``), after ``warmup`` untimed ones. The median resists the noise of a
    shared machine better than the mean."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    times = []
    with torch.no_grad():
        for _ in range(warmup):
            fn(*args)
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(*args)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)
