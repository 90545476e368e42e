"""The report of one quantized model: how it deploys (size on disk, latency against fp32 measured
side by side, the metric and its change) and its analysis, as `ReportData` for
`zeropoint.report.html`. Used by ``zeropoint quantize`` / ``zeropoint report``.

Rows: the float model (PyTorch), the converted simulation (its checkpoint), the integer program
(`zp.to_integer`) and, where onnxruntime is installed, ONNX Runtime running the QDQ export. Each
row's metric is computed on the same batches against the float model's outputs
(`zeropoint.analysis.metrics`); latency is the median of interleaved calls on the first batch
(`zeropoint.report.timing`).
"""

from __future__ import annotations

import platform
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from zeropoint.analysis.metrics import Metric
from zeropoint.analysis.model import ModelAnalysis
from zeropoint.extras import require
from zeropoint.report.html import ReportData
from zeropoint.report.timing import interleaved_latency

SIMULATION = "zeropoint simulation (checkpoint)"


def disk_size(path: str | Path) -> int:
    """Bytes of a file, or of every file under a directory."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    raise FileNotFoundError(f"no file or directory at {p}")


def float_size(model: nn.Module) -> int:
    """Bytes of the float model's state dict saved as safetensors."""
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.safetensors"
        tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(tensors, str(path))
        return disk_size(path)


def _outputs(fn: Callable[[Tensor], Any], inputs: list[Tensor]) -> Tensor:
    from zeropoint.analysis.units import output_tensor

    with torch.no_grad():
        return torch.cat([output_tensor(fn(x)).detach().float() for x in inputs])


def _bound(fn: Callable[[Tensor], Any], x: Tensor) -> Callable[[], Any]:
    return lambda: fn(x)


def ort_runner(path: Path) -> Callable[[Tensor], Tensor]:
    """ONNX Runtime on one float input (the export's first input name)."""
    ort = require("onnxruntime", "running the export in ONNX Runtime")

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.detach().numpy()})[0])


def deployment_rows(
    model: nn.Module,
    model_q: nn.Module,
    inputs: list[Tensor],
    labels: Tensor | None,
    metric: Metric,
    checkpoint: Path | None = None,
    onnx_path: Path | None = None,
    program: Any = None,
    repeats: int = 5,
) -> list[dict[str, Any]]:
    """The model-level table (see the module docstring)."""
    reference = _outputs(model, inputs)
    runs: dict[str, tuple[Callable[[Tensor], Any], int | None]] = {
        "fp32 (PyTorch)": (model, float_size(model)),
        SIMULATION: (model_q, disk_size(checkpoint) if checkpoint else None),
    }
    if program is not None:
        runs["zeropoint integer engine"] = (program, None)
    if onnx_path is not None:
        runs["zeropoint ONNX export → ONNX Runtime"] = (ort_runner(onnx_path), disk_size(onnx_path))
    batch = inputs[0]
    timed = {k: _bound(f, batch) for k, (f, _) in runs.items() if k != SIMULATION}
    latency: dict[str, float | None] = dict(interleaved_latency(timed, repeats=repeats, warmup=1))
    latency[SIMULATION] = None
    fp32_s = latency["fp32 (PyTorch)"]
    assert fp32_s is not None
    base_value = metric.fn(reference, reference, labels)
    rows = []
    for name, (fn, size) in runs.items():
        value = metric.fn(_outputs(fn, inputs), reference, labels)
        seconds = latency[name]
        rows.append({
            "method": name, "size KB": None if size is None else size / 1024,
            "latency ms": None if seconds is None else 1000 * seconds,
            "speed vs fp32": None if seconds is None else fp32_s / seconds,
            f"{metric.name}{' ' + metric.unit if metric.unit else ''}": value,
            "change vs fp32": value - base_value,
        })  # fmt: skip
    return rows


LATENCY_NOTE = (
    "Latency: median of interleaved calls on the first batch, measured in this run (the "
    "simulation is not a deployment: no latency); the metric on every batch given, against the "
    "fp32 outputs."
)


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` knows."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu


def machine() -> str:
    return f"{cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def analysis_report(
    title: str,
    analysis: ModelAnalysis | None,
    summary: list[dict[str, Any]],
    notes: list[str] | None = None,
    warnings: list[str] | None = None,
) -> ReportData:
    """ReportData with the model-level table, size-vs-metric points and the analysis."""
    points = []
    metric_col = next((k for k in (summary[0] if summary else {})
                       if k not in ("method", "size KB", "latency ms", "speed vs fp32",
                                    "change vs fp32")), None)  # fmt: skip
    for row in summary:
        if row.get("size KB") is not None and metric_col is not None:
            points.append({"x": row["size KB"], "y": row[metric_col], "label": row["method"],
                           "group": title, "highlight": row["method"].startswith("zeropoint")})  # fmt: skip
    return ReportData(
        title=title,
        subtitle=machine(),
        summary=summary,
        summary_notes=[LATENCY_NOTE],
        points=points,
        points_x="size on disk (KB)",
        points_y={title: metric_col or "metric"},
        analysis=analysis.as_dict() if analysis is not None else None,
        notes=list(notes or []),
        warnings=list(warnings or []),
    )


__all__ = ["analysis_report", "deployment_rows", "disk_size", "float_size", "machine", "ort_runner"]
