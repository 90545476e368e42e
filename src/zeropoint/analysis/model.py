"""`analyze`: why a quantized model lost accuracy, layer by layer.

    result = zp.analyze(model, model_q, batches)          # batches: tensors or (x, y) pairs
    print(result.table())                                  # sorted by sensitivity
    result.rank_correlation                                # fast estimate vs exact
    zp.report.write_html("report.html", model_report(result, ...))

Per unit (`zeropoint.analysis.units`): its schemes, clip range and the share of values clipped,
weight and activation SQNR (`zeropoint.analysis.layers`), and its sensitivity
(`zeropoint.analysis.sensitivity`): the metric's drop when only that unit is quantized, when all
units but it are quantized (and the recovery: the full model's drop minus that), and the fast
Fisher estimate, with Spearman's rank correlation between the estimate and the exact
measurements. The three executions (simulation, integer engine, ONNX Runtime) are compared on
the same data (`zeropoint.consistency`), and the operations that stay float are listed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from zeropoint.analysis.layers import UnitStats, unit_stats
from zeropoint.analysis.metrics import Metric, resolve_metric, spearman
from zeropoint.analysis.sensitivity import (
    Batch,
    ExactSensitivity,
    find_units_cached,
    fisher_estimates,
)
from zeropoint.analysis.units import (
    enabled,
    first_tensor,
    float_simulation,
    float_weights,
    labels_of,
    output_tensor,
    state_of,
)
from zeropoint.workflows.config import QUANTIZABLE


@dataclass
class LayerAnalysis:
    """One unit: its statistics and sensitivities (drops in the metric's units; positive is
    worse)."""

    stats: UnitStats
    only_quantized: float | None = None
    all_but: float | None = None
    recovery: float | None = None
    fisher: float | None = None

    @property
    def name(self) -> str:
        return self.stats.name

    def row(self) -> dict[str, Any]:
        s = self.stats
        return {
            "layer": s.name, "kind": s.kind, "weights": s.weight_scheme or "-",
            "activations": s.activation_scheme or "-", "params": s.parameters,
            "clip lo": s.clip_lo, "clip hi": s.clip_hi,
            "clipped %": None if s.clipped_share is None else 100 * s.clipped_share,
            "W SQNR dB": s.weight_sqnr_db, "A SQNR dB": s.activation_sqnr_db,
            "drop (only this quantized)": self.only_quantized,
            "drop (all but this)": self.all_but, "recovery (this in float)": self.recovery,
            "fisher estimate": self.fisher,
        }  # fmt: skip


@dataclass
class ModelAnalysis:
    """The result of `analyze` (see the module docstring)."""

    metric: str
    metric_unit: str
    higher_is_better: bool
    samples: int
    float_value: float
    quantized_value: float
    quantized_drop: float
    layers: list[LayerAnalysis]
    rank_correlation: dict[str, float] = field(default_factory=dict)
    consistency: Any = None  # ConsistencyReport
    float_ops: list[str] = field(default_factory=list)
    float_layers: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def sorted_layers(self) -> list[LayerAnalysis]:
        """Most sensitive first (by the exact "only this quantized" drop, else the estimate)."""

        def key(la: LayerAnalysis) -> float:
            v = la.only_quantized if la.only_quantized is not None else la.fisher
            return -math.inf if v is None or math.isnan(v) else v

        return sorted(self.layers, key=key, reverse=True)

    def rows(self) -> list[dict[str, Any]]:
        return [la.row() for la in self.sorted_layers()]

    def summary(self) -> str:
        unit = f" {self.metric_unit}" if self.metric_unit else ""
        lines = [
            f"{self.metric} on {self.samples} samples: float {self.float_value:.4g}{unit}, "
            f"quantized {self.quantized_value:.4g}{unit} (drop {self.quantized_drop:.4g})"
        ]
        top = self.sorted_layers()[:3]
        if top and top[0].only_quantized is not None:
            lines.append(
                "most sensitive: " + ", ".join(f"{la.name} ({la.only_quantized:.3g})" for la in top)
            )
        for what, rho in self.rank_correlation.items():
            lines.append(f"rank correlation, {what}: {rho:.3f}")
        if self.float_ops:
            lines.append("operations in float (no integer kernel): " + ", ".join(self.float_ops))
        if self.float_layers:
            lines.append("layers the config left in float: " + ", ".join(self.float_layers))
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def table(self, limit: int | None = None) -> str:
        from zeropoint.report.tables import format_table

        rows = self.rows()[:limit] if limit else self.rows()
        keep = ("layer", "kind", "clipped %", "W SQNR dB", "A SQNR dB",
                "drop (only this quantized)", "recovery (this in float)", "fisher estimate")  # fmt: skip
        digits = {"clipped %": 3}
        return (
            self.summary()
            + "\n"
            + format_table([{k: r[k] for k in keep} for r in rows], digits=digits)
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain values (JSON-ready): the model-level numbers and one dict per unit."""
        layers = []
        for la in self.layers:
            d = {k: v for k, v in asdict(la.stats).items() if not k.startswith("_")}
            d.update(only_quantized=la.only_quantized, all_but=la.all_but,
                     recovery=la.recovery, fisher=la.fisher)  # fmt: skip
            layers.append(d)
        out = {k: getattr(self, k) for k in (
            "metric", "metric_unit", "higher_is_better", "samples", "float_value",
            "quantized_value", "quantized_drop", "rank_correlation", "float_ops",
            "float_layers", "timings_s", "notes")}  # fmt: skip
        out["layers"] = layers
        if self.consistency is not None:
            c = self.consistency
            out["consistency"] = {
                "samples": c.samples,
                "outputs_identical": {k: v.share for k, v in c.outputs.items()},
                "outputs_max_lsb": {k: v.max_lsb for k, v in c.outputs.items()},
                "predictions_agree": dict(c.predictions),
                "layers": c.rows(),
            }
        return out


def _batches(model: nn.Module | None, model_q: nn.Module, data: Any,
             limit: int | None) -> list[Batch]:  # fmt: skip
    if isinstance(data, Tensor):
        data = [data]
    if not isinstance(data, Iterable):
        raise TypeError(
            f"data must be a tensor or an iterable of batches, got {type(data).__name__}"
        )
    out: list[Batch] = []
    units = find_units_cached(model_q)
    for item in data:
        if limit is not None and len(out) >= limit:
            break
        x, y = first_tensor(item), labels_of(item)
        with torch.no_grad():
            if model is not None:
                ref = output_tensor(model(x)).detach()
            else:
                with enabled(units, set()), float_simulation(model_q):
                    ref = output_tensor(model_q(x)).detach()
        out.append(Batch(x, y, ref))
    if not out:
        raise ValueError("analyze needs at least one batch of data")
    return out


def analyze(
    model: nn.Module | None,
    model_q: nn.Module,
    data: Any,
    metric: str | Metric | None = None,
    exact: bool = True,
    fast: bool = True,
    consistency: bool | str = "auto",
    fisher_samples: int = 4,
    max_batches: int | None = None,
    progress: bool = True,
    seed: int = 0,
) -> ModelAnalysis:
    """Analyse the converted model ``model_q`` against the float ``model`` (None: ``model_q``
    with its quantizers off) on ``data`` (a tensor, or an iterable of tensors or (inputs,
    labels) batches). ``metric``: "accuracy" (needs labels), "agreement", "cosine", "kl" or a
    `Metric` (default: accuracy with labels, KL without). ``exact``: measure each unit one at a
    time (two partial forward passes per unit and batch); ``fast``: the Fisher estimate
    (``fisher_samples`` backward passes per batch); ``consistency``: compare simulation,
    integer engine and ONNX Runtime ("auto": with ONNX Runtime where it is installed)."""
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be the float nn.Module or None, got {type(model).__name__}")
    state_of(model_q)  # a clear error for a model no workflow produced
    units = find_units_cached(model_q)
    batches = _batches(model, model_q, data, max_batches)
    with float_weights(model_q, model, units, batches[0].x, batches[0].reference) as notes:
        has_labels = all(b.labels is not None for b in batches)
        m = resolve_metric(metric, has_labels)
        timings: dict[str, float] = {}
        bar = _bar(progress, len(units) * len(batches) * int(exact) + len(batches) * int(fast))

        t0 = time.perf_counter()
        stats = unit_stats(model_q, units, [b.x for b in batches])
        timings["statistics"] = time.perf_counter() - t0
        probe = ExactSensitivity(model_q, units, batches, m)
        full_drop = probe.full(model_q)
        layers = [LayerAnalysis(s) for s in stats]
        if exact:
            t0 = time.perf_counter()
            only, allbut = probe.one_at_a_time(progress=bar)
            for la in layers:
                la.only_quantized, la.all_but = only[la.name], allbut.get(la.name)
                if la.all_but is not None:
                    la.recovery = full_drop - la.all_but
            timings["exact"] = time.perf_counter() - t0
        if fast:
            t0 = time.perf_counter()
            likelihood = "categorical" if m.name in ("kl", "accuracy", "agreement") else "gaussian"
            est = fisher_estimates(model_q, batches, samples=fisher_samples, likelihood=likelihood,
                                   seed=seed, progress=bar)[None]  # fmt: skip
            for la in layers:
                la.fisher = est[la.name]
            timings["fast"] = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        rank = _rank_correlations(layers) if exact and fast else {}
        result = ModelAnalysis(
            m.name, m.unit, m.higher_is_better, sum(b.x.shape[0] for b in batches),
            probe.reference_value, _value(m, full_drop, probe.reference_value),
            full_drop, layers, rank, timings_s=timings, notes=notes,
        )  # fmt: skip
        result.float_ops, result.float_layers = float_operations(model_q, batches[0].x)
    if consistency:
        t0 = time.perf_counter()
        result.consistency = _consistency(model_q, [b.x for b in batches], consistency)
        timings["consistency"] = time.perf_counter() - t0
    return result


def _value(m: Metric, drop: float, reference: float) -> float:
    """The metric's value from its drop (inverse of `Metric.drop`)."""
    return reference - drop if m.higher_is_better else reference + drop


def _rank_correlations(layers: list[LayerAnalysis]) -> dict[str, float]:
    out = {}
    pairs = [(la.fisher, la.only_quantized) for la in layers
             if la.fisher is not None and la.only_quantized is not None]  # fmt: skip
    if len(pairs) > 1:
        out["fisher estimate vs only-this-quantized"] = spearman(*map(list, zip(*pairs)))
    pairs = [(la.fisher, la.recovery) for la in layers
             if la.fisher is not None and la.recovery is not None]  # fmt: skip
    if len(pairs) > 1:
        out["fisher estimate vs recovery (this in float)"] = spearman(*map(list, zip(*pairs)))
    pairs = [(-(la.stats.activation_sqnr_db or math.inf), la.only_quantized) for la in layers
             if la.only_quantized is not None and la.stats.activation_sqnr_db is not None]  # fmt: skip
    if len(pairs) > 1:
        out["−output SQNR vs only-this-quantized"] = spearman(*map(list, zip(*pairs)))
    return out


def float_operations(model_q: nn.Module, example: Tensor) -> tuple[list[str], list[str]]:
    """(operations the integer program and the export run in float, by module path; quantizable
    layers the config left in float)."""
    from zeropoint.lowering import build_qgraph

    state = state_of(model_q)
    try:
        ops = [op.where for op in build_qgraph(model_q, example[:2]).fallbacks]
    except ValueError as exc:  # module-boundary models have no graph to lower
        ops = [f"(not lowered: {exc})"]
    layers = [
        name for name, m in model_q.named_modules()
        if name and type(m) in QUANTIZABLE and name not in state.layers
    ]  # fmt: skip
    return ops, layers


def _consistency(model_q: nn.Module, inputs: list[Tensor], mode: bool | str) -> Any:
    from zeropoint.consistency import compare_executions

    onnx = True
    if mode == "auto":
        try:
            import onnx as _onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError:
            onnx = False
    return compare_executions(model_q, inputs, onnx=onnx, per_layer=True)


def _bar(progress: bool, total: int) -> Any:
    if not progress or total == 0:
        return None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="analysing", unit="step", leave=False)

    def step(_: str, n: int) -> None:
        bar.update(n)

    step.close = bar.close  # type: ignore[attr-defined]
    return step


__all__ = ["LayerAnalysis", "ModelAnalysis", "analyze", "float_operations"]
