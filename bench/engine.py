"""Integer engine kernels against their peers, side by side (not a test).

For each case every contender runs in turn inside one repetition loop (interleaved, so machine
noise hits all of them alike); we report medians and ratios. Peers:
  fp32     torch.nn.functional.linear / conv2d on float tensors (the speed we must stay near)
  torch-q  torch.ao.nn.quantized.Linear / Conv2d, engine 'x86' (fbgemm/oneDNN int8 kernels);
           for linear also torch.ao.nn.quantized.dynamic.Linear (fp32 in, int8 weights)
  ort      onnxruntime QLinearMatMul / QLinearConv, intra_op_num_threads = --threads (2)
Ratios are peer_time / ours_time: above 1 means ours is faster.
End to end: the digits CNN (trained briefly, zp.quantize_static, zp.to_integer) against its
fp32 model and ONNX Runtime on the QDQ export, at batch 1 and 64.

Run: .venv/bin/python bench/engine.py [--reps N] [--threads T]; writes bench/results/engine.json.
On a shared machine, multi-threaded timings of the engine (several short parallel elementwise
passes after the GEMM) suffer more from other processes than one big BLAS call does: compare
runs at --threads 1 and 2 and look at the machine load printed with the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from zeropoint.engine.conv import conv2d, prepare_conv2d
from zeropoint.engine.kernels import linear, prepare_linear
from zeropoint.engine.requantize import Requantizer

warnings.filterwarnings("ignore")
RESULTS = Path(__file__).parent / "results" / "engine.json"
LINEAR_CASES = [(1, 4096, 4096), (32, 768, 768), (128, 768, 3072)]
CONV_CASES = [(64, 56, 3), (64, 56, 1), (256, 14, 3), (256, 14, 1)]  # channels, H = W, kernel


def _ort_session(
    nodes: list, inputs: dict, inits: dict, out_type: int
) -> Callable[[], object] | None:
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    graph = helper.make_graph(
        nodes,
        "bench",
        [helper.make_tensor_value_info(k, TensorProto.UINT8, v.shape) for k, v in inputs.items()],
        [helper.make_tensor_value_info("y", out_type, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    so.inter_op_num_threads = 1
    # ORT's pool spins after each run by default, starving whichever contender runs next on a
    # 2-core machine; interleaved timing needs it to yield.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, inputs)


def _qparams_inits(s_x: float, z_x: int, s_w: float, s_y: float, z_y: int) -> dict:
    return {
        "xs": np.array(s_x, np.float32), "xz": np.array(z_x, np.uint8),
        "ws": np.array(s_w, np.float32), "wz": np.array(0, np.int8),
        "ys": np.array(s_y, np.float32), "yz": np.array(z_y, np.uint8),
    }  # fmt: skip


def linear_contenders(m: int, k: int, n: int) -> dict[str, Callable[[], object]]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=gen)
    w = torch.randn(n, k, generator=gen) * 0.05
    b = torch.randn(n, generator=gen) * 0.1
    s_x, z_x = float(x.abs().max() / 127.5), 128
    s_w = float(w.abs().max() / 127)
    s_y, z_y = float((x @ w.t()).abs().max() / 127.5), 128
    q_x = torch.clamp(torch.round(x / s_x) + z_x, 0, 255).to(torch.uint8)
    q_w = torch.clamp(torch.round(w / s_w), -127, 127).to(torch.int8)
    q_b = torch.round(b / (s_x * s_w)).to(torch.int32)
    weights = prepare_linear(q_w, q_b)
    rq = Requantizer.from_scales(s_x, s_w, s_y, z_y)
    out: dict[str, Callable[[], object]] = {
        "ours": lambda: linear(q_x, z_x, weights, rq),
        "fp32": lambda: F.linear(x, w, b),
    }
    torch.backends.quantized.engine = "x86"
    tq = torch.ao.nn.quantized.Linear(k, n)
    tq.set_weight_bias(torch.quantize_per_tensor(w, s_w, 0, torch.qint8), b)
    tq.scale, tq.zero_point = s_y, z_y
    xq = torch.quantize_per_tensor(x, s_x, z_x, torch.quint8)
    out["torch-q"] = lambda: tq(xq)
    td = torch.ao.nn.quantized.dynamic.Linear(k, n)
    td.set_weight_bias(torch.quantize_per_tensor(w, s_w, 0, torch.qint8), b)
    out["torch-dyn"] = lambda: td(x)
    try:
        from onnx import TensorProto, helper

        inits = _qparams_inits(s_x, z_x, s_w, s_y, z_y)
        inits["w"] = q_w.t().contiguous().numpy()
        node = helper.make_node(
            "QLinearMatMul", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"]
        )
        sess = _ort_session([node], {"x": q_x.numpy()}, inits, TensorProto.UINT8)
        if sess is not None:
            out["ort"] = sess
    except ImportError:
        pass
    return out


def conv_contenders(c: int, hw: int, k: int) -> dict[str, Callable[[], object]]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, c, hw, hw, generator=gen).relu()
    w = torch.randn(c, c, k, k, generator=gen) * (2.0 / (c * k * k)) ** 0.5
    b = torch.randn(c, generator=gen) * 0.1
    pad = k // 2
    s_x, z_x = float(x.max() / 255), 0
    s_w = float(w.abs().max() / 127)
    y = F.conv2d(x, w, b, padding=pad)
    s_y, z_y = (
        float((y.max() - y.min()) / 255),
        round(float(-y.min()) / float((y.max() - y.min()) / 255)),
    )
    q_x = torch.clamp(torch.round(x / s_x) + z_x, 0, 255).to(torch.uint8)
    q_x_nhwc = q_x.permute(0, 2, 3, 1).contiguous()
    q_w = torch.clamp(torch.round(w / s_w), -127, 127).to(torch.int8)
    q_b = torch.round(b / (s_x * s_w)).to(torch.int32)
    weights = prepare_conv2d(q_w, q_b, padding=pad)
    rq = Requantizer.from_scales(s_x, s_w, s_y, z_y)
    out: dict[str, Callable[[], object]] = {
        "ours": lambda: conv2d(q_x_nhwc, z_x, weights, rq, "NHWC"),
        "ours-nchw": lambda: conv2d(q_x, z_x, weights, rq, "NCHW"),
        "fp32": lambda: F.conv2d(x, w, b, padding=pad),
    }
    torch.backends.quantized.engine = "x86"
    tq = torch.ao.nn.quantized.Conv2d(c, c, k, padding=pad)
    tq.set_weight_bias(torch.quantize_per_tensor(w, s_w, 0, torch.qint8), b)
    tq.scale, tq.zero_point = s_y, z_y
    xq = torch.quantize_per_tensor(x, s_x, z_x, torch.quint8)
    out["torch-q"] = lambda: tq(xq)
    xq_cl = xq.contiguous(memory_format=torch.channels_last)
    out["torch-q-nhwc"] = lambda: tq(xq_cl)
    try:
        from onnx import TensorProto, helper

        inits = _qparams_inits(s_x, z_x, s_w, s_y, z_y)
        inits["w"], inits["b"] = q_w.numpy(), q_b.numpy()
        node = helper.make_node(
            "QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"],
            pads=[pad] * 4, kernel_shape=[k, k],
        )  # fmt: skip
        sess = _ort_session([node], {"x": q_x.numpy()}, inits, TensorProto.UINT8)
        if sess is not None:
            out["ort"] = sess
    except ImportError:
        pass
    return out


def measure(
    contenders: dict[str, Callable[[], object]], reps: int, min_time: float = 0.02
) -> dict[str, float]:
    """Median seconds per call; contenders interleaved inside every repetition."""
    inner = {}
    for name, fn in contenders.items():  # warm up, and pick calls per sample (≥ min_time)
        for _ in range(3):
            fn()
        t0 = time.perf_counter()
        fn()
        inner[name] = max(1, int(min_time / max(time.perf_counter() - t0, 1e-6)))
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(reps):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            samples[name].append((time.perf_counter() - t0) / inner[name])
    return {name: statistics.median(v) for name, v in samples.items()}


def _ort_program(model_q: torch.nn.Module, x: torch.Tensor) -> Callable[[], object] | None:
    """ONNX Runtime on zeropoint's QDQ export of ``model_q`` (fixed batch of ``x``), or None."""
    try:
        import onnxruntime as ort

        from zeropoint.export.onnx import to_onnx_model
    except ImportError:
        return None
    proto = to_onnx_model(model_q, x)
    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # see _ort_session
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feed = {proto.graph.input[0].name: x.numpy()}
    return lambda: sess.run(None, feed)


def digits_cnn_latency(reps: int, batches: tuple[int, ...] = (1, 64)) -> dict | None:
    """End-to-end latency of the integer digits CNN against the fp32 model it came from.

    The seeded sklearn-digits CNN (`demo.zoo.digits`) is trained briefly (3 epochs, seed 0),
    quantized with ``zp.quantize_static`` on its calibration batches and lowered with
    ``zp.to_integer``; then, per batch size, ``program(x)`` (float in → quantize → integer steps
    → dequantize → float out), the fp32 model and ONNX Runtime on the QDQ export run interleaved
    under ``torch.no_grad()``. Returns {"batch1": {"ours": s, "fp32": s, "ort": s}, ...}
    (median seconds per call), or None without scikit-learn.
    """
    try:
        from demo.zoo.digits import DigitsCNN, load_digits_data, train
    except ImportError:
        return None
    import zeropoint as zp
    from zeropoint.engine import to_integer

    try:
        data = load_digits_data()
    except ImportError:  # scikit-learn is imported lazily
        return None
    torch.manual_seed(0)
    model = train(DigitsCNN(), data, epochs=3, seed=0)
    model_q = zp.quantize_static(model, data.calibration_batches(), progress=False)
    program = to_integer(model_q, data.x_test[:2])
    out = {}
    with torch.no_grad():
        for batch in batches:
            x = data.x_test[:batch]
            contenders: dict[str, Callable[[], object]] = {
                "ours": lambda x=x: program(x),
                "fp32": lambda x=x: model(x),
            }
            ort_fn = _ort_program(model_q, x)
            if ort_fn is not None:
                contenders["ort"] = ort_fn
            out[f"batch{batch}"] = measure(contenders, reps)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2, help="torch and ORT intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for m, k, n in LINEAR_CASES:
        rows.append(
            {
                "op": "linear",
                "shape": f"({m},{k},{n})",
                **measure(linear_contenders(m, k, n), args.reps),
            }
        )
    for c, hw, k in CONV_CASES:
        rows.append(
            {
                "op": f"conv{k}x{k}",
                "shape": f"{c}ch {hw}x{hw}",
                **measure(conv_contenders(c, hw, k), args.reps),
            }
        )
    peers = ["fp32", "torch-q", "torch-q-nhwc", "torch-dyn", "ort"]
    print(
        f"{'case':<26}{'ours ms':>9}  " + "".join(f"{p:>14}" for p in peers) + f"{'nchw/nhwc':>11}"
    )
    for r in rows:
        line = f"{r['op'] + ' ' + r['shape']:<26}{r['ours'] * 1e3:>9.3f}  "
        line += "".join(f"{r[p] / r['ours']:>14.2f}" if p in r else f"{'-':>14}" for p in peers)
        line += f"{r['ours-nchw'] / r['ours']:>11.2f}" if "ours-nchw" in r else f"{'-':>11}"
        print(line)
    e2e = digits_cnn_latency(args.reps)
    if e2e is None:
        print("digits CNN end-to-end: not measured (needs scikit-learn)")
    else:
        print(
            f"{'digits CNN end-to-end':<26}{'ours ms':>9}  {'fp32':>14}{'ort':>14}{'ours/fp32':>11}"
        )
        for key, r in e2e.items():
            line = f"{'  ' + key:<26}{r['ours'] * 1e3:>9.3f}  {r['fp32'] / r['ours']:>14.2f}"
            line += f"{r['ort'] / r['ours']:>14.2f}" if "ort" in r else f"{'-':>14}"
            print(line + f"{r['ours'] / r['fp32']:>10.2f}x")
    print("ratios = peer time / ours time (> 1: ours faster); conv 'ours' is NHWC uint8 in/out;")
    print("nchw/nhwc = ours on NCHW input / ours on NHWC input; ours/fp32 = our latency in fp32's")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(RESULTS.read_text()).get("runs", {}) if RESULTS.exists() else {}
    runs[f"threads={args.threads}"] = {
        "meta": {
            "load_average": os.getloadavg()[0],
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "reps": args.reps,
            "machine": platform.processor() or platform.machine(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
        "unit": "seconds per call (median of interleaved repetitions)",
        "rows": rows,
        "digits_cnn": e2e,
    }
    RESULTS.write_text(json.dumps({"runs": runs}, indent=2))
    print(f"threads={args.threads}, load average at end: {os.getloadavg()[0]:.2f}; wrote {RESULTS}")


if __name__ == "__main__":
    main()
