"""ONNX Runtime running zeropoint's MobileNetV2 export, against the same model quantized by ONNX
Runtime's own `quantize_static` and against ONNX Runtime fp32 — batch 1 and batch 32, timed
interleaved in one run (ratio = peer time / ours: above 1 means our export is faster).

    .venv/bin/python bench/deploy.py [--quick] [--threads N] [--reps N] [--output PATH]

Targets (issue 8): ≥ 1.0x ORT's QDQ int8 (QUInt8 activations, QInt8 per-channel weights, its
defaults otherwise) and ≥ 1.8x ORT fp32. All three models are optimised by ONNX Runtime when the
session is created (ORT_ENABLE_ALL), with the same thread count. Writes bench/results/deploy.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import zeropoint as zp  # noqa: E402
from demo.peers import export_fp32_onnx, ort_static_int8  # noqa: E402
from demo.zoo.mobilenet_v2 import load_mobilenet_v2  # noqa: E402
from demo.zoo.views import calibration_views, evaluation_views  # noqa: E402


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def interleaved(runners: dict[str, Any], x: np.ndarray, reps: int) -> dict[str, list[float]]:
    """Median-able timings: every repetition runs every contender once, order rotating."""
    names = list(runners)
    times: dict[str, list[float]] = {n: [] for n in names}
    for n in names:  # warm up
        for _ in range(2):
            runners[n](x)
    for r in range(reps):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            t = time.perf_counter()
            runners[n](x)
            times[n].append(time.perf_counter() - t)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "deploy.json"))
    args = parser.parse_args()
    reps = args.reps or (5 if args.quick else 25)
    model = load_mobilenet_v2().eval()
    calib = calibration_views(32 if args.quick else 64).images
    batches = [calib[i : i + 16] for i in range(0, len(calib), 16)]
    work = Path(tempfile.mkdtemp(prefix="zp-bench-deploy-"))
    fp32 = export_fp32_onnx(model, (calib[:1],), work / "fp32.onnx")
    theirs = ort_static_int8(fp32, [b[:8] for b in batches], work / "ort_int8.onnx",
                             per_channel=True, activation_type="QUInt8")  # fmt: skip
    model_q = zp.quantize_static(model, batches, zp.int8_static(), progress=False)
    ours = zp.export_onnx(model_q, work / "zeropoint.onnx", calib[:4])
    paths = {"zeropoint": ours, "ort quantize_static": theirs, "ort fp32": fp32}
    sessions = {k: session(p, args.threads) for k, p in paths.items()}
    runners = {
        k: (lambda x, s=s: s.run(None, {s.get_inputs()[0].name: x})) for k, s in sessions.items()
    }
    views = evaluation_views(32).images.numpy()
    rows = []
    for batch in (1, 32):
        times = interleaved(runners, views[:batch], reps if batch == 32 else 4 * reps)
        med = {k: statistics.median(v) for k, v in times.items()}
        for peer in ("ort quantize_static", "ort fp32"):
            rows.append({"batch": batch, "peer": peer, "ours ms": 1000 * med["zeropoint"],
                         "peer ms": 1000 * med[peer], "ratio": med[peer] / med["zeropoint"]})  # fmt: skip
    weights_bits = model_q.features[0][0].weight_quant.scheme.bits
    doc = {
        "machine": platform.processor() or platform.machine(),
        "threads": args.threads,
        "onnxruntime": ort.__version__,
        "weights": f"{weights_bits}-bit per channel (reduce_range='auto')",
        "reps": reps,
        "rows": rows,
        "sizes_bytes": {k: p.stat().st_size for k, p in paths.items()},
    }
    print(f"MobileNetV2, ONNX Runtime {ort.__version__}, {args.threads} threads, "
          f"zeropoint weights {weights_bits}-bit; ratio = peer time / ours")  # fmt: skip
    for r in rows:
        print(f"  batch {r['batch']:>2}  vs {r['peer']:<20} ours {r['ours ms']:8.2f} ms  "
              f"peer {r['peer ms']:8.2f} ms  ratio {r['ratio']:.2f}x")  # fmt: skip
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
