"""The main job (`make demo`): quantize real models and report, the peers measured in the same run.

(a) all-MiniLM-L6-v2 (22.7M parameters): zeropoint dynamic int8 and int4 weight-only, against
    fp32, torch.ao's dynamic int8 and ONNX Runtime's dynamic and static quantizers; with
    ``--weight-only`` (long: GPTQ, AWQ and HQQ calibrate on MiniLM) the weight-only algorithms
    (round to nearest, GPTQ, AWQ, HQQ at 4 bits; 3 bits in
    `python -m demo.minilm_weight_only_report`) beside ONNX Runtime's MatMulNBits quantizers.
(b) the digits CNN (trained here, seeded): zeropoint static int8 — simulation, integer engine and
    QDQ export run by ONNX Runtime — and W2A2/W3A3 QAT, against torch.ao's and ONNX Runtime's
    static int8 and round-to-nearest.
(c) MobileNetV2 (ImageNet weights): static W8A8 — simulation, integer engine, ONNX Runtime
    compared code for code — against torch.ao and ONNX Runtime.
(d) MobileNetV2: why W8A8 loses what it loses (`zp.analyze`) and the size-vs-agreement curve of
    uniform round-to-nearest against mixed precision (`zp.mixed_precision`).

Writes ``report.html`` (self-contained: tables, charts, the per-layer analysis), ``report.md``,
``report.json`` and ``report_data.json`` (what the HTML shows: ``ReportData.from_json`` and
``write_html`` re-render it) under the output directory. Other libraries' warnings are captured, counted
and listed once at the end (and in the report); the output shows only the job's own lines.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from demo import (
    digits_report,
    minilm_report,
    minilm_weight_only_report,
    mobilenet_mixed,
    mobilenet_report,
)
from demo.digits_report import Row
from zeropoint.report.capture import captured_warnings
from zeropoint.report.files import atomic_write_text, check_writable_dir
from zeropoint.report.html import CurvePoint, ReportData, json_safe, write_html
from zeropoint.report.model_report import cpu_name
from zeropoint.report.tables import format_table

MINILM = "all-MiniLM-L6-v2"
LATENCY_SENTENCES = 128  # MiniLM latency: four batches of 32 (quality: every sentence)
MOBILENET_VIEWS = 128  # MobileNetV2 evaluation views of the model-level rows and the consistency
UNITS = {"all-MiniLM-L6-v2": ("mean cosine to fp32", "cos"), "digits CNN": ("accuracy %", "% acc"),
         "MobileNetV2": ("top-1 agreement with fp32 %", "% top-1 agr")}  # fmt: skip


def _machine() -> str:
    import onnxruntime

    return (
        f"{cpu_name()}, {torch.get_num_threads()} torch threads; torch {torch.__version__}, "
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
        unit = UNITS.get(r.model, ("", "% acc"))[1]
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


def _quiet_third_parties() -> None:
    """Progress bars of other libraries (transformers' "Loading weights") stay off; ONNX
    Runtime's own log shows errors only."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass
    try:
        import onnxruntime

        # ONNX Runtime logs from C++ straight to the terminal, past Python's warnings (e.g. 70
        # lines of "Removing initializer ... It is not used by any node" for the peers'
        # MobileNetV2 graphs): errors only
        onnxruntime.set_default_logger_severity(3)
    except ImportError:
        pass


def _section(label: str, timings: dict[str, float], start: float) -> float:
    now = time.perf_counter()
    timings[label] = now - start
    print(f"    ... {now - start:.0f} s", flush=True)
    return now


def run(out_dir: Path, quick: bool = False, weight_only_rows: bool = False) -> int:
    start = time.perf_counter()
    out = check_writable_dir(out_dir)
    work = check_writable_dir(out / "artifacts")
    _quiet_third_parties()
    machine = _machine()
    print(f"zeropoint main job — {machine}")
    timings: dict[str, float] = {}
    with captured_warnings() as caught:
        t = time.perf_counter()
        print("(a) all-MiniLM-L6-v2: dynamic int8 and int4 weight-only ...", flush=True)
        rows = minilm_report.run(work, quick, latency_sentences=LATENCY_SENTENCES)
        t = _section("MiniLM", timings, t)
        weight_only: list[Row] = []
        if weight_only_rows:
            print("(a') all-MiniLM-L6-v2: weight-only RTN, GPTQ, AWQ, HQQ against ORT "
                  "MatMulNBits ...", flush=True)  # fmt: skip
            weight_only = minilm_weight_only_report.minilm_weight_only_rows(work, quick,
                                                                            widths=(4,))  # fmt: skip
            t = _section("MiniLM weight-only", timings, t)
        print(
            "(b) digits CNN: static int8 (simulation, integer engine, ONNX Runtime) and QAT ...",
            flush=True,
        )
        digit_rows, observers = digits_report.run(work, quick)
        rows += digit_rows
        t = _section("digits CNN", timings, t)
        print(
            "(c) MobileNetV2 (ImageNet weights): static W8A8 — simulation, integer engine, ONNX "
            "Runtime — against torch.ao and ONNX Runtime ...",
            flush=True,
        )
        mobilenet_rows, consistency, model_q = mobilenet_report.run(
            work, quick, n_views=MOBILENET_VIEWS
        )
        rows += mobilenet_rows
        t = _section("MobileNetV2", timings, t)
        print("(d) MobileNetV2: per-layer analysis and mixed precision ...", flush=True)
        mixed = mobilenet_mixed.run(model_q, quick)
        t = _section("MobileNetV2 analysis and mixed precision", timings, t)

    fp32 = {r.model: r for r in rows if r.method == "fp32 (PyTorch)"}
    table = _display(rows, fp32)
    digits = {"size KB": 1, "latency ms": 2, "speed vs fp32": 2}
    text = format_table(table, digits=digits)
    wo_text = _weight_only_text(weight_only, digits)
    obs_table = format_table(
        [{"observer": k, "W8A8 accuracy %": v} for k, v in observers.items()],
        digits={"W8A8 accuracy %": 2},
    )
    curve_rows = [_curve_row(r) for r in mixed.rows]
    curve_text = format_table(curve_rows, digits={"size MB": 3, "avg weight bits": 2,
                                                  "top-1 agreement %": 1, "mean KL": 4})  # fmt: skip
    print()
    print(
        f"MiniLM latency: encode {LATENCY_SENTENCES} sentences at batch 32 (quality: all of them);"
        " digits latency: a batch of 64 images;"
        " MobileNetV2: a batch of 32 views. MobileNetV2 quality: top-1 agreement with fp32."
    )
    print("size: bytes on disk of the saved model (safetensors, ONNX or torch state dict).")
    print(text)
    if wo_text:
        print("\nall-MiniLM-L6-v2 weight-only (groups of 32), zeropoint against ONNX Runtime:")
        print(wo_text)
    print("\nzeropoint static int8 on the digits CNN, every calibration observer:")
    print(obs_table)
    print("\nMobileNetV2 W8A8, the three executions compared on the evaluation views:")
    print(consistency.summary())
    print("\nMobileNetV2 W8A8, per-layer analysis (most sensitive first):")
    print(mixed.analysis.table(limit=8))
    print("\nMobileNetV2, size against top-1 agreement (8-bit activations):")
    print(curve_text)
    print(_dominance_line(mixed))
    elapsed = time.perf_counter() - start
    if caught.count:
        print(f"\n{caught.summary()}, listed once each:")
        for line in caught.lines():
            print(f"  {line}")
    print("\ntime per part: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    print(f"finished in {elapsed:.0f} s; report in {out / 'report.html'}")

    doc = {
        "machine": machine,
        "elapsed_s": elapsed,
        "timings_s": timings,
        "rows": [r.as_dict() for r in rows],
        "minilm_weight_only": [r.as_dict() for r in weight_only],
        "digits_observers": observers,
        "mobilenet_consistency": {
            "outputs_identical": {k: v.share for k, v in consistency.outputs.items()},
            "predictions_agree": consistency.predictions,
        },
        "mobilenet_analysis": mixed.analysis.as_dict(),
        "mobilenet_mixed_precision": {
            "rows": curve_rows,
            "dominates": {str(k): v for k, v in mixed.dominates.items()},
            "dominates_with_adaround": {str(k): v for k, v in mixed.dominates_adaround.items()},
            "best_mixed_vs_best_uniform": {str(k): v for k, v in mixed.best.items()},
            "sensitivity_s": mixed.sensitivity_s,
            "search_s": mixed.search_s,
            "timings_s": mixed.timings,
        },
        "third_party_warnings": caught.lines(),
    }
    report = _html_report(rows, table, weight_only, observers, mixed, curve_rows, caught.lines(),
                          machine, elapsed)  # fmt: skip
    atomic_write_text(out / "report.json", json.dumps(json_safe(doc), indent=1))
    md = "```\n" + "\n\n".join([t for t in (text, wo_text) if t] + [obs_table, consistency.summary(),
                                 mixed.analysis.table(limit=12), curve_text,
                                 _dominance_line(mixed)]) + "\n```\n"  # fmt: skip
    atomic_write_text(out / "report.md", md)
    write_html(out / "report.html", report)
    atomic_write_text(out / "report_data.json", report.to_json())  # to re-render later
    return 0


def _weight_only_text(weight_only: list[Row], digits: dict[str, int]) -> str:
    if not weight_only:
        return ""
    return format_table(_display(weight_only, {MINILM: weight_only[0]}), digits=digits)


def _curve_row(r: mobilenet_mixed.CurveRow) -> dict[str, Any]:
    return {"method": r.method, "weights": r.weights, "size MB": r.size_mb,
            "avg weight bits": r.avg_bits, "top-1 agreement %": r.top1, "mean KL": r.kl,
            "notes": r.note}  # fmt: skip


def _dominance_line(mixed: mobilenet_mixed.MixedResult) -> str:
    parts = [f"size of W{b}: {'yes' if ok else 'NO'}" for b, ok in mixed.dominates.items()]
    ada = [f"W{b}: {'yes' if ok else 'NO'}" for b, ok in mixed.dominates_adaround.items()]
    best = [
        f"W{b}: {v['mixed top1']:.1f} vs {v['uniform top1']:.1f} % "
        f"(KL {v['mixed kl']:.3f} vs {v['uniform kl']:.3f})"
        for b, v in mixed.best.items()
    ]
    return (f"mixed precision at least as good as uniform at the same size — {', '.join(parts)}; "
            f"with AdaRound on both — {', '.join(ada)}; "
            f"best mixed vs best uniform at each size — {'; '.join(best)}; "
            f"search: sensitivities {mixed.sensitivity_s:.0f} s, knapsack "
            f"{1000 * mixed.search_s:.0f} ms")  # fmt: skip


def _html_report(rows: list[Row], table: list[dict[str, object]], weight_only: list[Row],
                 observers: dict[str, float], mixed: mobilenet_mixed.MixedResult,
                 curve_rows: list[dict[str, Any]], warnings: list[str], machine: str,
                 elapsed: float) -> ReportData:  # fmt: skip
    points = [
        {"x": r.size_bytes / 1024, "y": r.quality, "label": r.method, "group": r.model,
         "highlight": r.method.startswith("zeropoint")}
        for r in rows if r.size_bytes
    ]  # fmt: skip
    curve: dict[str, list[CurvePoint]] = {}
    for name, pts in mixed.curve().items():
        curve[name] = [CurvePoint(x, y, label) for x, y, label in pts]
    tables = [("digits CNN: static int8 with every calibration observer",
               [{"observer": k, "W8A8 accuracy %": v} for k, v in observers.items()])]  # fmt: skip
    if weight_only:  # its own fp32 row first: the reference of its speed column (same batch)
        tables.insert(0, ("all-MiniLM-L6-v2 weight-only, zeropoint against ONNX Runtime "
                          "MatMulNBits", _display(weight_only, {MINILM: weight_only[0]})))  # fmt: skip
    return ReportData(
        title="zeropoint main job",
        subtitle=f"{machine} — {time.strftime('%Y-%m-%d %H:%M')} — {elapsed:.0f} s",
        intro=[
            "Real models, quantized by zeropoint and by the peers in the same run. Latency is "
            "measured side by side (interleaved, median) on this machine: ratios to fp32 are "
            "what to read; absolute times depend on the machine and its load.",
        ],
        summary=table,
        summary_notes=[
            f"MiniLM latency: encode {LATENCY_SENTENCES} sentences at batch 32 (quality: all "
            "of them); digits: a batch of 64 images; "
            "MobileNetV2: a batch of 32 views. MobileNetV2 quality: top-1 agreement with fp32 on "
            "views of the scikit-image photos (no ImageNet here). Size: bytes on disk of the "
            "saved model (safetensors, ONNX or torch state dict).",
        ],
        points=points,
        points_y={k: v[0] for k, v in UNITS.items()},
        analysis=mixed.analysis.as_dict(),
        analysis_title="MobileNetV2 W8A8: per-layer analysis",
        curve=curve,
        curve_x="model size (MB: weights at their width, n·w/8, plus scales and biases)",
        curve_y="top-1 agreement with fp32 (%)",
        curve_title="MobileNetV2: mixed precision against uniform widths",
        curve_rows=curve_rows,
        curve_notes=[
            "The protocol of docs/ptq.md's table: weights symmetric per channel on the full "
            "signed range (min-max, round to nearest, or AdaRound's learned rounding), 8-bit "
            "activations everywhere (what the integer engine runs), the logits float. Mixed "
            "precision chooses 2/3/4/6/8-bit weights per layer under the size of the uniform "
            "model, from exact one-at-a-time KL sensitivities measured on calibration views "
            "(never the evaluation views); '+ AdaRound' rounds the chosen config's weights with "
            "AdaRound, as the uniform AdaRound rows. The integer engine and the ONNX export store "
            "weights below 8 bits in int8 containers (checkpoints pack 4 bits and below).",
            _dominance_line(mixed),
        ],
        tables=tables,
        warnings=warnings,
    )


__all__ = ["run"]
