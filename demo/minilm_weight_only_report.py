"""Weight-only and non-uniform weights in the main job's table format (`demo.digits_report.Row`):
functions that return rows; the main job decides which to show.

* `minilm_weight_only_rows` — all-MiniLM-L6-v2 at 4 and 3 bits (asymmetric, groups of 32) by
  round to nearest, GPTQ (with AWQ's scales), AWQ and HQQ, beside ONNX Runtime's
  MatMulNBitsQuantizer (RTN, HQQ, GPTQ; 4 bits only: it has no 3-bit MatMulNBits). Calibration
  on `demo.zoo.calibration_text.CALIBRATION_64` (64 sentences, none in the evaluation set).
  Quality: mean cosine to fp32 (``quality``) and nearest-neighbour agreement; size: the saved
  checkpoint (zeropoint) or ONNX file (ONNX Runtime); latency: ``encode`` at batch 32
  (``latency_s``), and the ratios to fp32 PyTorch at batch 1 and 32 in ``detail``.
* `nonuniform_rows` — digits CNN (accuracy) and MiniLM (cosine) with k-means, power-of-two and
  binary-code weights beside uniform int at 2, 3 and 4 bits (per output channel).
* `fp8_rows` — fp8 e4m3fn / e5m2 and fp4 e2m1 weights (per tensor and per channel) beside int8
  and int4 per channel, on both models.
* `learned_codebook_rows` — digits CNN W2A2: uniform LSQ QAT against learned 4-level codebooks.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import zeropoint as zp
from demo import peers
from demo.digits_report import Row
from demo.zoo.calibration_text import CALIBRATION_64
from demo.zoo.digits import DigitsCNN, accuracy, load_digits_data, train
from demo.zoo.minilm import load_minilm
from demo.zoo.sentences import SENTENCES, mean_cosine, nearest_neighbour_agreement
from zeropoint.nn.codebook_weights import WeightSpec, model_nbytes, quantize_weights
from zeropoint.ptq.awq import awq_quantize
from zeropoint.ptq.gptq import gptq_quantize
from zeropoint.ptq.hqq import hqq_quantize
from zeropoint.report.timing import interleaved_latency

MINILM = "all-MiniLM-L6-v2"
DIGITS = "digits CNN"


def _config(bits: int, group: int, signed: bool = True) -> zp.QuantConfig:
    return zp.QuantConfig(
        weight=zp.Scheme(bits=bits, symmetric=False, signed=signed, group_size=group),
        activation=None,
        module_types=(nn.Linear,),
    )


def _calibrate(model: Any) -> Any:
    return model.encode(list(CALIBRATION_64), batch_size=32)


def _quality(ref: torch.Tensor, emb: torch.Tensor) -> tuple[float, float, float]:
    mean, worst = mean_cosine(ref, emb)
    return mean, worst, nearest_neighbour_agreement(ref, emb)


def minilm_weight_only_rows(
    work: Path, quick: bool = False, group: int = 32, widths: tuple[int, ...] = (4, 3)
) -> list[Row]:
    """The MiniLM weight-only table (module docstring) at the weight ``widths``. ``quick``: 4
    bits, 96 sentences."""
    sentences = list(SENTENCES[:96] if quick else SENTENCES)
    model = load_minilm()
    ref = model.encode(sentences, batch_size=32, convert_to_tensor=True)
    one = sentences[:1]
    batch = sentences[:32]
    entries: list[tuple[str, str, int, Callable[[list[str]], Any], int]] = []

    def torch_encoder(m: Any) -> Callable[[list[str]], Any]:
        return lambda s: m.encode(s, batch_size=32, convert_to_tensor=True)

    for bits in (4,) if quick else widths:
        algos: dict[str, Callable[[], nn.Module]] = {
            "round to nearest": lambda b=bits: zp.quantize_dynamic(model, _config(b, group)),
            "GPTQ + AWQ scales": lambda b=bits: gptq_quantize(
                model, _calibrate, _config(b, group), damp=0.3, clip=True, awq_scales=True
            ),
            "AWQ": lambda b=bits: awq_quantize(model, _calibrate, _config(b, group)),
            "HQQ": lambda b=bits: hqq_quantize(model, _config(b, group, signed=False)),
        }
        for name, make in algos.items():
            q = make()
            size = peers.file_size(zp.save(q, work / f"minilm_{name.split()[0].lower()}_{bits}"))
            # the width is part of the label: labels key the latency table below
            entries.append(
                (f"zeropoint {name} W{bits} (g{group})", f"{bits}/32", size, torch_encoder(q), bits)
            )
    fp32_onnx = peers.export_minilm_onnx(model, work / "minilm_fp32.onnx")
    feeds = [
        {k: v.numpy() for k, v in b.items()}
        for b in peers.minilm_calibration_batches(model, list(CALIBRATION_64), 16)
    ]
    from demo.peers.ort_nbits import ort_matmul_nbits

    threads = torch.get_num_threads()
    entries.append(
        (
            "ONNX Runtime fp32 (reference)",
            "32/32",
            peers.file_size(fp32_onnx),
            peers.ort_minilm_encoder(fp32_onnx, model, threads=threads),
            32,
        )
    )
    for algo in ("rtn", "hqq", "gptq"):
        try:
            path = ort_matmul_nbits(
                fp32_onnx, work / f"minilm_ort_{algo}4.onnx", algo, 4, group, calib_feeds=feeds
            )
        except Exception as exc:  # a peer that fails is reported, not hidden
            entries.append(
                (
                    f"ONNX Runtime MatMulNBits {algo.upper()} failed: {exc!r}"[:120],
                    "4/32",
                    0,
                    lambda s: ref[: len(s)],
                    4,
                )
            )
            continue
        encoder = peers.ort_minilm_encoder(path, model, threads=threads)
        entries.append(
            (
                f"ONNX Runtime MatMulNBits {algo.upper()} W4 (block {group})",
                "4/32",
                peers.file_size(path),
                encoder,
                4,
            )
        )
    labels = [e[0] for e in entries]
    if len(set(labels)) != len(labels):  # each label keys its own latency
        raise ValueError(f"duplicate row labels: {sorted(labels)}")
    contenders: dict[str, Callable[[], Any]] = {}
    fp32 = torch_encoder(model)
    for label, fn in [("fp32", fp32)] + [(e[0], e[3]) for e in entries]:
        contenders[label + " b1"] = lambda fn=fn: fn(one)
        contenders[label + " b32"] = lambda fn=fn: fn(batch)
    lat = interleaved_latency(contenders, repeats=2 if quick else 5, warmup=1)
    # the table's own fp32 row: its latency is the reference of the speed columns
    rows = [Row(MINILM, "fp32 (PyTorch)", "32/32", peers.state_dict_size(model), lat["fp32 b32"],
                1.0, "the reference (latency: a batch of 32 sentences)")]  # fmt: skip
    for label, bits_label, size, fn, _ in entries:
        mean, worst, nn_agree = _quality(ref, fn(sentences))
        r1 = lat["fp32 b1"] / lat[label + " b1"]
        r32 = lat["fp32 b32"] / lat[label + " b32"]
        detail = f"NN agree {100 * nn_agree:.1f}%, min cos {worst:.3f}, {r1:.2f}x / {r32:.2f}x fp32 speed at batch 1 / 32"
        rows.append(Row(MINILM, label, bits_label, size, lat[label + " b32"], mean, detail))
    return rows


def _digits() -> tuple[nn.Module, Any]:
    torch.manual_seed(0)
    data = load_digits_data(seed=0)
    model = DigitsCNN()
    train(model, data, epochs=20, seed=0)
    return model, data


def _spec_rows(specs: list[WeightSpec], work: Path, quick: bool) -> list[Row]:
    rows = []
    model, data = _digits()
    fp32_acc = accuracy(model, data.x_test, data.y_test)
    for spec in specs:
        q = quantize_weights(model, spec)
        acc = accuracy(q, data.x_test, data.y_test)
        rows.append(
            Row(
                DIGITS,
                f"weights {spec.label}",
                f"{spec.bits}/32",
                model_nbytes(q),
                None,
                acc,
                f"fp32 {fp32_acc:.1f}%",
            )
        )
    minilm = load_minilm()
    sentences = list(SENTENCES[:96] if quick else SENTENCES)
    ref = minilm.encode(sentences, batch_size=32, convert_to_tensor=True)
    for spec in specs:
        q = quantize_weights(minilm, spec, types=(nn.Linear,))
        mean, worst, nn_agree = _quality(
            ref, q.encode(sentences, batch_size=32, convert_to_tensor=True)
        )
        detail = f"NN agree {100 * nn_agree:.1f}%, min cos {worst:.3f}; Linear weights only"
        rows.append(
            Row(
                MINILM,
                f"weights {spec.label}",
                f"{spec.bits}/32",
                model_nbytes(q),
                None,
                mean,
                detail,
            )
        )
    return rows


def nonuniform_rows(work: Path, quick: bool = False) -> list[Row]:
    """k-means, power-of-two and binary-code weights beside uniform int, 2–4 bits, per channel."""
    specs = [
        WeightSpec(kind, bits) for bits in (2, 3, 4) for kind in ("int", "kmeans", "log2", "binary")
    ]
    return _spec_rows(specs, work, quick)


def fp8_rows(work: Path, quick: bool = False) -> list[Row]:
    """fp8 / fp4 weights per tensor and per channel beside int8 / int4 per channel."""
    specs = [WeightSpec("int", 8), WeightSpec("int", 4)] + [
        WeightSpec(kind, per_channel=pc)
        for kind in ("fp8_e4m3fn", "fp8_e5m2", "fp4_e2m1")
        for pc in (False, True)
    ]
    return _spec_rows(specs, work, quick)


def learned_codebook_rows(work: Path, quick: bool = False, epochs: int = 25) -> list[Row]:
    """digits CNN W2A2 (first and last layers 8-bit): uniform LSQ QAT against learned 4-level
    codebooks (k-means start, levels trained with the weights), same activations and epochs."""
    from zeropoint.nn.learned_codebook import prepare_codebook_qat

    model, data = _digits()
    epochs = 8 if quick else epochs
    x0 = data.x_train[:256]
    rows = []
    runs = {
        "W2A2 QAT, uniform LSQ weights": lambda: zp.prepare_qat(
            model, zp.w2a2_qat("lsq"), example_inputs=x0
        ),
        "W2A2 QAT, learned 4-level codebooks": lambda: prepare_codebook_qat(
            model, zp.w2a2_qat("lsq"), bits=2, example_inputs=x0
        ),
        "W2A2 QAT, learned binary codes (m=2)": lambda: prepare_codebook_qat(
            model, zp.w2a2_qat("lsq"), bits=2, kind="binary", example_inputs=x0
        ),
    }
    for name, make in runs.items():
        qat = make()
        train(qat, data, epochs=epochs, lr=3e-3, seed=0)
        rows.append(
            Row(
                DIGITS,
                name,
                "2/2",
                None,
                None,
                accuracy(qat, data.x_test, data.y_test),
                f"{epochs} epochs, first/last layer 8-bit",
            )
        )
    return rows


def main() -> None:  # pragma: no cover - a manual entry point
    import sys

    with tempfile.TemporaryDirectory() as d:
        which = sys.argv[1:] or ["weight_only", "nonuniform", "fp8", "learned"]
        funcs = {
            "weight_only": minilm_weight_only_rows,
            "nonuniform": nonuniform_rows,
            "fp8": fp8_rows,
            "learned": learned_codebook_rows,
        }
        for name in which:
            for row in funcs[name](Path(d)):
                print(row.as_dict(), flush=True)


if __name__ == "__main__":
    main()


__all__ = ["fp8_rows", "learned_codebook_rows", "minilm_weight_only_rows", "nonuniform_rows"]
