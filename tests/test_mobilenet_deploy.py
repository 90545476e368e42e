"""MobileNetV2 with its real ImageNet weights, static W8A8 per channel: the simulation, the integer
program and ONNX Runtime running the export compute the same codes — per layer (fed the same
input codes) and end to end — so the simulated agreement with fp32 is the deployed one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import zeropoint as zp
from demo.zoo.metrics import top_k_agreement
from demo.zoo.views import ImageViews
from tests.deployment import session
from zeropoint.consistency import compare_executions


@pytest.mark.slow
def test_mobilenet_v2_simulation_engine_and_onnx_runtime_agree(
    mobilenet_v2: torch.nn.Module,
    imagenet_eval_views: ImageViews,
    imagenet_calibration_views: ImageViews,
    mobilenet_v2_fp32_logits: torch.Tensor,
    tmp_path: Path,
) -> None:
    torch.set_num_threads(1)
    calib = imagenet_calibration_views.batches(16)
    model_q = zp.quantize_static(mobilenet_v2, calib, zp.int8_static(), progress=False)
    views = imagenet_eval_views.images[:64]
    per_layer = compare_executions(model_q, [views[:4]])  # every layer, engine and ORT
    for row in per_layer.layers:
        for pair in (row.sim_engine, row.engine_ort):
            assert pair is not None and pair.share >= 0.999 and pair.max_lsb <= 1, row
    program = zp.to_integer(model_q, views[:2])
    assert program.fallbacks == []
    report = compare_executions(model_q, views.split(32), per_layer=False, program=program)
    print(report.summary())
    for pair in ("sim_engine", "engine_ort", "sim_ort"):
        assert report.predictions[pair] >= 0.98, (pair, report.predictions)
    # the export, written at batch 4, runs at batch 1 and 7 and agrees with the simulation
    path = zp.export_onnx(model_q, tmp_path / "mnv2.onnx", views[:4])
    sess = session(path)
    with torch.no_grad():
        sim = model_q(views[:7])
    for n in (1, 7):
        out = torch.from_numpy(sess.run(None, {"x": views[:n].numpy()})[0])
        assert top_k_agreement(out, sim[:n]) >= 6 / 7
    ref = mobilenet_v2_fp32_logits[:64]
    with torch.no_grad():
        top1 = top_k_agreement(torch.cat([model_q(v) for v in views.split(32)]), ref)
    assert top1 >= 0.6  # W8A8 keeps most of fp32's top-1 (measured ~0.8 on these views)
