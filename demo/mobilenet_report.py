"""MobileNetV2 (real ImageNet weights) in the main job: zeropoint's static W8A8 — simulation,
integer engine and ONNX Runtime running the export, compared code for code — beside torch.ao's and
ONNX Runtime's own static quantizers and the fp32 model.

Quality is agreement with fp32 on 256 views of 16 scikit-image photos (calibration on 64 views of
8 other photos): top-1 (the table's number), top-5, top-1 on the confident views and the mean KL
divergence of the softmax from fp32's, in the row's notes."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import zeropoint as zp
from demo import peers
from demo.digits_report import Row
from demo.zoo.metrics import agreement_report
from demo.zoo.mobilenet_v2 import load_mobilenet_v2
from demo.zoo.views import calibration_views, evaluation_views
from zeropoint.consistency import ConsistencyReport, compare_executions
from zeropoint.report.timing import interleaved_latency

MODEL = "MobileNetV2"


def _logits(fn: Any, views: Tensor, batch: int = 32) -> Tensor:
    with torch.no_grad():
        return torch.cat(
            [torch.as_tensor(fn(views[i : i + batch])) for i in range(0, len(views), batch)]
        )


def _row(method: str, bits: str, size: int | None, latency: float | None, logits: Tensor,
         fp32: Tensor, note: str = "") -> Row:  # fmt: skip
    r = agreement_report(logits, fp32)
    detail = (f"top-5 {100 * r['top5']:.1f}%, confident top-1 {100 * r['confident_top1']:.1f}% "
              f"(n={int(r['n_confident'])}), KL {r['kl']:.3f}")  # fmt: skip
    return Row(
        MODEL, method, bits, size, latency, 100 * r["top1"], f"{detail}; {note}" if note else detail
    )


def run(work: Path, quick: bool = False) -> tuple[list[Row], ConsistencyReport]:
    """The MobileNetV2 rows and the three-way consistency of zeropoint's W8A8 model."""
    model = load_mobilenet_v2().eval()
    views = evaluation_views(64 if quick else 256).images
    calib = calibration_views(32 if quick else 64).images
    batches = [calib[i : i + 16] for i in range(0, len(calib), 16)]
    fp32 = _logits(model, views)

    config = zp.int8_static()
    model_q = zp.quantize_static(model, batches, config, progress=True)
    bits = f"{model_q.features[0][0].weight_quant.scheme.bits}/8"
    program = zp.to_integer(model_q, views[:2])
    ckpt = zp.save(model_q, work / "mobilenet_v2_w8a8")
    onnx_path = zp.export_onnx(model_q, work / "mobilenet_v2_w8a8.onnx", views[:4])
    zp_ort = peers.ort_runner(peers.ort_session(onnx_path, threads=torch.get_num_threads()))
    report = compare_executions(model_q, [views[i : i + 32] for i in range(0, len(views), 32)],
                                per_layer=False, program=program)  # fmt: skip

    fp32_onnx = peers.export_fp32_onnx(model, views[:1], work / "mobilenet_v2_fp32.onnx")
    ort_fp32 = peers.ort_runner(peers.ort_session(fp32_onnx, threads=torch.get_num_threads()))
    ort_int8 = peers.ort_static_int8(fp32_onnx, [b[:8] for b in batches], work / "mnv2_ort.onnx",
                                     per_channel=True, activation_type="QUInt8")  # fmt: skip
    ort_int8_run = peers.ort_runner(peers.ort_session(ort_int8, threads=torch.get_num_threads()))
    ao = peers.torch_ao_static_int8(model, [b for b in batches], views[:2])

    batch = views[:32]
    lat = interleaved_latency(
        {"fp32": lambda: model(batch), "zp_int": lambda: program(batch),
         "zp_ort": lambda: zp_ort(batch), "ort_fp32": lambda: ort_fp32(batch),
         "ort_int8": lambda: ort_int8_run(batch), "torch_ao": lambda: ao(batch)},
        repeats=2 if quick else 5, warmup=1,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        from safetensors.torch import save_file

        path = Path(d) / "fp32.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        fp32_size = peers.file_size(path)
    agree = report.predictions
    three_way = (f"sim = engine = ORT: output codes {100 * report.outputs['sim_engine'].share:.2f}"
                 f" / {100 * report.outputs['engine_ort'].share:.2f} % identical, predictions "
                 f"{100 * agree['sim_engine']:.1f} / {100 * agree['engine_ort']:.1f} %")  # fmt: skip
    rows = [
        Row(MODEL, "fp32 (PyTorch)", "32/32", fp32_size, lat["fp32"], 100.0, "the reference"),
        _row("zeropoint static W8A8, simulation", bits, peers.file_size(ckpt), None,
             _logits(model_q, views), fp32, "per-channel, min-max"),
        _row("zeropoint integer engine", bits, None, lat["zp_int"], _logits(program, views), fp32,
             three_way),
        _row("zeropoint QDQ → ONNX Runtime", bits, peers.file_size(onnx_path), lat["zp_ort"],
             _logits(zp_ort, views), fp32),
        _row("ONNX Runtime fp32", "32/32", peers.file_size(fp32_onnx), lat["ort_fp32"],
             _logits(ort_fp32, views), fp32),
        _row("ORT quantize_static (QUInt8, per-channel)", "8/8", peers.file_size(ort_int8),
             lat["ort_int8"], _logits(ort_int8_run, views), fp32),
        _row("torch.ao static int8 (FX, x86)", "8/7", peers.state_dict_size(ao), lat["torch_ao"],
             _logits(ao, views), fp32, "7-bit activations (reduce_range)"),
    ]  # fmt: skip
    return rows, report
