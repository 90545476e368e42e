"""Every network of the zoo (real architectures, trained at run time on real data) deploys:
quantize_static → to_integer and export_onnx with no float fallback; per layer, fed the same
codes, simulation = engine and engine = ONNX Runtime on ≥ 99.9 % of codes, never more than 1 LSB
apart; the export written at batch 4 runs at batch 1 and 7; and the exported model scores what
the simulation scores (same metric, within noise)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from demo.zoo.registry import ZOO, Trained
from tests.deployment import deploy, session

#: at most this many test samples change their prediction between simulation and export (noise:
#: ≤ 1-LSB differences at near-ties), and the PSNR moves by at most this much
MAX_FLIPS = 0.005
MAX_PSNR_DELTA_DB = 0.05


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_network_deploys_and_the_export_scores_like_the_simulation(
    name: str, zoo: Callable[[str], Trained], tmp_path: Path
) -> None:
    torch.set_num_threads(1)
    t = zoo(name)
    data = t.data
    calib = data.calibration_batches(256, 64)
    d = deploy(t.model, calib, data.x_test[:32], tmp_path)
    with torch.no_grad():
        sim = torch.cat([d.model_q(x) for x in data.x_test.split(250)])
    sess = session(d.onnx_path)
    feed = sess.get_inputs()[0].name
    exported = torch.cat(
        [torch.from_numpy(sess.run(None, {feed: x.numpy()})[0]) for x in data.x_test.split(250)]
    )
    score_sim, score_ort = t.entry.score(sim, data), t.entry.score(exported, data)
    fp32 = t.metric()
    print(f"{name}: fp32 {fp32:.2f}, simulation {score_sim:.2f}, ONNX Runtime {score_ort:.2f}")
    if t.entry.metric == "accuracy":
        flips = (sim.argmax(1) != exported.argmax(1)).float().mean().item()
        assert flips <= MAX_FLIPS, f"{flips:.2%} of predictions differ"
    else:
        assert abs(score_sim - score_ort) <= MAX_PSNR_DELTA_DB
    assert score_sim >= t.entry.threshold - 2.0  # W8A8 stays close to fp32's floor
