"""The main job (`make demo`): quantize real models and print one report, the peers measured in
the same run.

(a) all-MiniLM-L6-v2 (22.7M parameters): zeropoint dynamic int8 and int4 weight-only, against
    fp32, torch.ao's dynamic int8 and ONNX Runtime's dynamic and static quantizers.
(b) the digits CNN (trained here, seeded): zeropoint static int8 — simulation, integer engine and
    QDQ export run by ONNX Runtime — and W2A2 QAT, against torch.ao's and ONNX Runtime's static
    int8 and round-to-nearest.

Writes ``report.json``, ``report.md`` and ``report.png`` under the output directory.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from demo import digits_report, minilm_report, mobilenet_report
from demo.digits_report import Row
from zeropoint.report.files import atomic_write_bytes, atomic_write_text, check_writable_dir
from zeropoint.report.tables import format_table


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime

    return (
        f"{cpu}, {torch.get_num_threads()} torch threads; torch {torch.__version__}, "
        f"onnxruntime {onnxruntime.__version__}"
    )


def _display(rows: list[Row], fp32: dict[str, Row]) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for r in rows:
        base = fp32[r.model]
        speed = (
            None if r.latency_s is None or base.latency_s is None else base.latency_s / r.latency_s
        )
        is_acc = r.model != "all-MiniLM-L6-v2"
        unit = "% top-1 agr" if r.model == "MobileNetV2" else "% acc"
        out.append(
            {
                "model": r.model,
                "method": r.method,
                "W/A bits": r.bits,
                "size KB": None if r.size_bytes is None else r.size_bytes / 1024,
                "latency ms": None if r.latency_s is None else 1000 * r.latency_s,
                "speed vs fp32": speed,
                "quality": f"{r.quality:.2f}{unit}" if is_acc else f"{r.quality:.4f} cos",
                "Δ vs fp32": f"{r.quality - base.quality:+.2f} pt"
                if is_acc
                else f"{r.quality - base.quality:+.4f}",
                "notes": r.detail,
            }
        )
    return out


def _plot(rows: list[Row], path: Path) -> Path | None:
    try:
        import io

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for ax, model, label in (
        (axes[0], "all-MiniLM-L6-v2", "mean cosine to fp32"),
        (axes[1], "digits CNN", "test accuracy (%)"),
    ):
        for r in rows:
            if r.model != model or r.latency_s is None:
                continue
            ms = 1000 * r.latency_s
            ours = r.method.startswith("zeropoint")
            ax.scatter(ms, r.quality, s=60, marker="o" if ours else "x")
            ax.annotate(
                r.method, (ms, r.quality), fontsize=7, xytext=(4, 2), textcoords="offset points"
            )
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel(label)
        ax.set_title(model)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def run(out_dir: Path, quick: bool = False) -> int:
    start = time.perf_counter()
    out = check_writable_dir(out_dir)
    work = check_writable_dir(out / "artifacts")
    print(f"zeropoint main job — {_machine()}")
    print("(a) all-MiniLM-L6-v2: dynamic int8 and int4 weight-only ...", flush=True)
    rows = minilm_report.run(work, quick)
    print(
        "(b) digits CNN: static int8 (simulation, integer engine, ONNX Runtime) and W2A2 QAT ...",
        flush=True,
    )
    digit_rows, observers = digits_report.run(work, quick)
    rows += digit_rows
    print(
        "(c) MobileNetV2 (ImageNet weights): static W8A8 — simulation, integer engine, ONNX "
        "Runtime — against torch.ao and ONNX Runtime ...",
        flush=True,
    )
    mobilenet_rows, consistency = mobilenet_report.run(work, quick)
    rows += mobilenet_rows
    fp32 = {r.model: r for r in rows if r.method == "fp32 (PyTorch)"}
    table = _display(rows, fp32)
    digits = {"size KB": 1, "latency ms": 2, "speed vs fp32": 2}
    text = format_table(table, digits=digits)
    obs_table = format_table(
        [{"observer": k, "W8A8 accuracy %": v} for k, v in observers.items()],
        digits={"W8A8 accuracy %": 2},
    )
    print()
    print(
        "MiniLM latency: encode all sentences at batch 32; digits latency: a batch of 64 images;"
        " MobileNetV2: a batch of 32 views. MobileNetV2 quality: top-1 agreement with fp32."
    )
    print("size: bytes on disk of the saved model (safetensors, ONNX or torch state dict).")
    print(text)
    print("\nzeropoint static int8 on the digits CNN, every calibration observer:")
    print(obs_table)
    print("\nMobileNetV2 W8A8, the three executions compared on the evaluation views:")
    print(consistency.summary())
    elapsed = time.perf_counter() - start
    print(f"\nfinished in {elapsed:.0f} s; report in {out}")
    doc = {
        "machine": _machine(),
        "elapsed_s": elapsed,
        "rows": [r.as_dict() for r in rows],
        "digits_observers": observers,
        "mobilenet_consistency": {
            "outputs_identical": {k: v.share for k, v in consistency.outputs.items()},
            "predictions_agree": consistency.predictions,
        },
    }
    atomic_write_text(out / "report.json", json.dumps(doc, indent=1))
    md = "```\n" + text + "\n\n" + obs_table + "\n\n" + consistency.summary() + "\n```\n"
    atomic_write_text(out / "report.md", md)
    _plot(rows, out / "report.png")
    return 0
