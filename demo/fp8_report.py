"""fp8 / fp4 models with activations, and stochastic rounding in QAT, as rows of the main job's
table format (`demo.digits_report.Row`): functions that return rows; the main job decides which
to show. Run by hand: ``python -m demo.fp8_report [fp8] [stochastic]``.

* `fp8_model_rows` — the digits CNN and all-MiniLM-L6-v2 with scaled float weights AND
  activations (`zp.float_static`: weights per output channel, activations per tensor,
  r̂ = S·fp(r/S), S = amax / max_f) in e4m3fn, e5m2 (fp8) and e2m1 (fp4), beside int8 (8-bit
  symmetric weights per channel, uint8 activations per tensor) calibrated the same way.
  Digits: `zp.quantize_static` (captured by torch.fx: every conv/linear input and output, the
  residual add and the pools on the grid), accuracy of the simulation and of ONNX Runtime
  running the export (float8 QuantizeLinear / DequantizeLinear; fp4 emulated in standard
  operators, as ONNX Runtime 1.32 has no float4 kernels), checkpoint and ONNX sizes; also fp8
  and fp4 QAT (learnable=None: the scales follow the amax). MiniLM: torch.fx cannot capture a
  SentenceTransformer, so static preparation falls back to module-boundary quantization — every
  Linear's input (per tensor) and weight (per channel) on the grid, its output in float: the
  W8A8 of fp8 serving stacks (vLLM's static fp8 scheme quantizes exactly these); calibration on
  `CALIBRATION_64`, quality on `SENTENCES`: mean cosine to fp32 and nearest-neighbour
  agreement; size: the zeropoint checkpoint.
* `stochastic_rounding_rows` — the digits CNN QAT with LSQ at W2A2 and W3A3 (first and last
  layers 8-bit), weights rounded to nearest vs stochastically (unbiased, `Scheme(rounding=
  "stochastic")` with `QuantConfig(seed=...)`) in training; accuracy of the converted model
  (which rounds to nearest) over a few seeds (the seed sets the batch order, and the rounding
  draws of the stochastic runs).
"""

from __future__ import annotations

import statistics
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import zeropoint as zp
from demo.digits_report import Row
from demo.peers.measure import file_size
from demo.zoo.calibration_text import CALIBRATION_64
from demo.zoo.digits import DigitsCNN, DigitsData, accuracy, load_digits_data, train
from demo.zoo.seeding import seeded_init

MINILM = "all-MiniLM-L6-v2"
DIGITS = "digits CNN"
FLOATS = ("e4m3fn", "e5m2", "e2m1")


def _digits(quick: bool) -> tuple[nn.Module, DigitsData]:
    data = load_digits_data(seed=0)
    model = seeded_init(DigitsCNN(), 0)
    train(model, data, epochs=8 if quick else 20, seed=0)
    return model.eval(), data


def _configs() -> dict[str, tuple[str, zp.QuantConfig]]:
    """int8 with full 8-bit weights, and with 7-bit ones (``reduce_range``: what ONNX Runtime's
    U8S8 kernels compute exactly on x86 CPUs without VNNI, such as this one), then the floats."""
    configs = {
        "int8": ("8/8", zp.int8_static(reduce_range=False)),
        "int8 reduce_range": ("7/8", zp.int8_static(reduce_range=True)),
    }
    for fmt in FLOATS:
        bits = 4 if fmt == "e2m1" else 8
        configs[fmt] = (f"{bits}/{bits}", zp.float_static(fmt))
    return configs


def _label(name: str) -> str:
    if name == "int8":
        return "int8 W8A8 (weights per channel, uint8 activations per tensor)"
    if name == "int8 reduce_range":
        return "int8 W7A8 (reduce_range: 7-bit weights, exact in ONNX Runtime without VNNI)"
    kind = "fp4" if name == "e2m1" else "fp8"
    return f"{kind} {name} W+A (weights per channel, activations per tensor, S = amax/max)"


def _ort_logits(path: Path, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]  # type: ignore[no-any-return]


def _onnx_types(path: Path) -> str:
    """The element types of the export's QuantizeLinear zero points (what ONNX Runtime runs)."""
    import onnx

    m = onnx.load(str(path))
    types = {i.name: i.data_type for i in m.graph.initializer}
    found = {
        onnx.TensorProto.DataType.Name(types[n.input[2]])
        for n in m.graph.node
        if n.op_type == "QuantizeLinear" and len(n.input) == 3 and n.input[2] in types
    }
    return "/".join(sorted(found)) or "none (emulated)"


def digits_fp8_rows(work: Path, quick: bool = False) -> list[Row]:
    """The digits half of `fp8_model_rows`."""
    model, data = _digits(quick)
    x, y = data.x_test, data.y_test
    rows = [Row(DIGITS, "fp32", "32/32", file_size(_saved_float(model, work)), None,
                accuracy(model, x, y), "")]  # fmt: skip
    for name, (bits, config) in _configs().items():
        q = zp.quantize_static(model, data.calibration_batches(), config, progress=False)
        sim = accuracy(q, x, y)
        size = file_size(zp.save(q, work / f"digits_{name}"))
        onnx_path = zp.export_onnx(q, work / f"digits_{name}.onnx", x[:2])
        ort = _ort_logits(onnx_path, x)
        with torch.no_grad():
            logits = q(x).numpy()
        ort_acc = 100.0 * float((ort.argmax(1) == y.numpy()).mean())
        same = 100.0 * float((ort == logits).mean())
        detail = (
            f"ONNX Runtime {ort_acc:.2f}% ({same:.1f}% of logits identical to the simulation; "
            f"Q/DQ types {_onnx_types(onnx_path)}), ONNX {file_size(onnx_path)} B"
        )
        rows.append(Row(DIGITS, _label(name), bits, size, None, sim, detail))
    epochs = 2 if quick else 5
    for name in ("e4m3fn", "e2m1"):
        config = zp.float_static(name).with_(activation_observer="moving_average")
        qat = zp.prepare_qat(model, config, example_inputs=data.x_train[:256])
        train(qat, data, epochs=epochs, lr=1e-3, seed=0)
        q = zp.convert(qat)
        bits = "4/4" if name == "e2m1" else "8/8"
        label = f"{'fp4' if name == 'e2m1' else 'fp8'} {name} W+A QAT"
        rows.append(Row(DIGITS, label, bits, None, None, accuracy(q, x, y),
                        f"{epochs} epochs from fp32, learnable=None (scales follow the amax)"))  # fmt: skip
    return rows


def _saved_float(model: nn.Module, work: Path) -> Path:
    from safetensors.torch import save_file

    path = work / f"{type(model).__name__}_fp32.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def minilm_fp8_rows(work: Path, quick: bool = False) -> list[Row]:
    """The MiniLM half of `fp8_model_rows` (module-boundary W+A on every Linear)."""
    from demo.zoo.minilm import load_minilm
    from demo.zoo.sentences import SENTENCES, mean_cosine, nearest_neighbour_agreement

    model = load_minilm()
    sentences = list(SENTENCES[:96] if quick else SENTENCES)
    ref = model.encode(sentences, batch_size=32, convert_to_tensor=True)
    fp32_size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    rows = [Row(MINILM, "fp32", "32/32", fp32_size, None, 1.0, "state dict bytes")]
    for name, (bits, config) in _configs().items():
        config = config.with_(module_types=(nn.Linear,))
        with warnings.catch_warnings():  # torch.fx cannot capture it: module-boundary mode
            warnings.filterwarnings("ignore", message="torch.fx could not capture")
            prepared = zp.prepare(model, config)
        with zp.calibrating(prepared):
            prepared.encode(list(CALIBRATION_64), batch_size=32)
        q = zp.convert(prepared)
        emb = q.encode(sentences, batch_size=32, convert_to_tensor=True)
        mean, worst = mean_cosine(ref, emb)
        agree = nearest_neighbour_agreement(ref, emb)
        size = file_size(zp.save(q, work / f"minilm_{name}"))
        detail = (
            f"NN agree {100 * agree:.1f}%, min cos {worst:.4f}; every Linear: input per tensor, "
            "weight per channel (module boundary); embeddings (47 MB of the size) and attention "
            "products in float"
        )
        rows.append(Row(MINILM, _label(name), bits, size, None, mean, detail))
    return rows


def fp8_model_rows(work: Path, quick: bool = False) -> list[Row]:
    """The fp8 / fp4 table (module docstring): digits CNN, then MiniLM."""
    return digits_fp8_rows(work, quick) + minilm_fp8_rows(work, quick)


def stochastic_rounding_rows(
    quick: bool = False, seeds: tuple[int, ...] = (0, 1, 2), epochs: dict[int, int] | None = None
) -> list[Row]:
    """W2A2 / W3A3 LSQ QAT of the digits CNN, weights rounded to nearest vs stochastically in
    training (module docstring); one row per (bits, rounding) with the mean and spread over
    ``seeds``."""
    model, data = _digits(quick)
    epochs = epochs or ({2: 4, 3: 3} if quick else {2: 25, 3: 15})
    x0 = data.x_train[:256]
    rows = []
    for bits, make in ((2, zp.w2a2_qat), (3, zp.w3a3_qat)):
        for rounding in ("half_even", "stochastic"):
            accs = []
            for seed in seeds:
                config: Any = make("lsq")
                if rounding == "stochastic":
                    weight = config.weight.with_(rounding="stochastic")
                    config = config.with_(weight=weight, seed=seed)
                qat = zp.prepare_qat(model, config, example_inputs=x0)
                train(qat, data, epochs=epochs[bits], lr=3e-3, seed=seed)
                accs.append(accuracy(zp.convert(qat), data.x_test, data.y_test))
            spread = statistics.pstdev(accs)
            how = "stochastic (unbiased) in training" if rounding == "stochastic" else "to nearest"
            detail = (
                f"mean of seeds {list(seeds)}: {', '.join(f'{a:.2f}' for a in accs)} "
                f"(±{spread:.2f}); {epochs[bits]} epochs, first/last layer 8-bit; "
                "the converted model rounds to nearest"
            )
            rows.append(Row(DIGITS, f"W{bits}A{bits} LSQ QAT, weights rounded {how}",
                            f"{bits}/{bits}", None, None, statistics.fmean(accs), detail))  # fmt: skip
    return rows


def main() -> None:  # pragma: no cover - a manual entry point
    import sys

    torch.set_num_threads(1)
    which = sys.argv[1:] or ["fp8", "stochastic"]
    with tempfile.TemporaryDirectory() as d:
        for name in which:
            rows = fp8_model_rows(Path(d)) if name == "fp8" else stochastic_rounding_rows()
            for row in rows:
                print(row.as_dict(), flush=True)


if __name__ == "__main__":
    main()


__all__ = ["digits_fp8_rows", "fp8_model_rows", "minilm_fp8_rows", "stochastic_rounding_rows"]
