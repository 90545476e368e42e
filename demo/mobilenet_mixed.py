"""MobileNetV2 (real ImageNet weights) in the main job: why W8A8 loses what it loses (`zp.analyze`)
and what mixed precision buys at a given size (`zp.mixed_precision`).

* Analysis of the static W8A8 model of the main table on ``ANALYSIS_VIEWS`` evaluation views:
  per unit its schemes, clip range, clipping, SQNR, sensitivity (exact one at a time, and the
  Fisher estimate with its rank correlation), the three executions compared per layer, the
  operations left in float.
* The size-vs-agreement curve: uniform round-to-nearest at 2, 3, 4, 6 and 8-bit weights
  (per channel, min-max; 8-bit activations everywhere, what the integer engine runs), mixed
  precision at the sizes of uniform 3, 4 and 6 bits (widths 2/3/4/6/8 per layer, chosen from
  exact one-at-a-time KL sensitivities on calibration views, never on the evaluation views),
  and ACIQ's per-channel allocation; and the best post-training algorithm the repository has
  for these weights, AdaRound (`zeropoint.ptq.adaround`, ``ADAROUND_ITERATIONS`` per layer on
  the calibration views), both on the uniform widths ``ADAROUND_AT`` and on the mixed-precision
  configs of the same sizes — so mixed precision is compared with uniform at its best too.
  Quality: top-1 agreement with fp32 (and the mean KL) on the evaluation views; size: the
  weights at their width (n·w/8, ideal packing) plus 4 bytes per other parameter and scale.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

import zeropoint as zp
from demo.zoo.metrics import mean_kl, top_k_agreement
from demo.zoo.mobilenet_v2 import load_mobilenet_v2
from demo.zoo.views import calibration_views, evaluation_views
from zeropoint.analysis.units import float_simulation
from zeropoint.mixed.aciq import aciq_allocate
from zeropoint.mixed.search import SensitivityTable, measure_sensitivities

ANALYSIS_VIEWS = 8
EVALUATION_VIEWS = 256  # views of the curve (one view: 0.4 points of agreement)
SENSITIVITY_VIEWS = 8
UNIFORM_BITS = (2, 3, 4, 6, 8)
MIXED_AT = (3, 4, 6)  # budgets: the sizes of the uniform models at these widths
ACIQ_AT = (3, 4)  # ACIQ's per-channel allocation with the levels of these widths
ADAROUND_AT = (3, 4)  # uniform AdaRound, and AdaRound on the mixed configs of these sizes
ADAROUND_ITERATIONS = 200
ADAROUND_ROWS = 256


@dataclass
class CurveRow:
    method: str
    weights: str
    size_mb: float
    avg_bits: float
    top1: float
    kl: float
    note: str = ""


@dataclass
class MixedResult:
    analysis: zp.ModelAnalysis
    rows: list[CurveRow] = field(default_factory=list)
    search_s: float = 0.0
    sensitivity_s: float = 0.0
    dominates: dict[int, bool] = field(default_factory=dict)
    dominates_adaround: dict[int, bool] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def curve(self) -> dict[str, list[tuple[float, float, str]]]:
        out: dict[str, list[tuple[float, float, str]]] = {}
        for r in self.rows:
            family = r.method.split(" (")[0]
            out.setdefault(family, []).append((r.size_mb, r.top1, f"{r.weights}: {r.top1:.1f}%"))
        return out


def _logits(model: nn.Module, views: Tensor, batch: int = 32) -> Tensor:
    with float_simulation(model) if hasattr(model, "_zeropoint") else torch.no_grad():
        return torch.cat(
            [model(views[i : i + batch]).detach() for i in range(0, len(views), batch)]
        )


def run(model_q: nn.Module | None = None, quick: bool = False) -> MixedResult:
    """The analysis of ``model_q`` (default: a fresh W8A8 model) and the mixed-precision curve."""
    timings: dict[str, float] = {}
    model = load_mobilenet_v2().eval()
    calib = calibration_views(32 if quick else 64).images
    calib_batches = [calib[i : i + 16] for i in range(0, len(calib), 16)]
    views = evaluation_views(32 if quick else EVALUATION_VIEWS).images
    if model_q is None:
        model_q = zp.quantize_static(model, calib_batches, zp.int8_static(), progress=False)

    t0 = time.perf_counter()
    analysis = zp.analyze(model, model_q, [views[:ANALYSIS_VIEWS]], metric="kl", progress=True)
    timings["analysis"] = time.perf_counter() - t0

    fp32 = _logits(model, views)
    base = zp.int8_static(reduce_range=False)
    t0 = time.perf_counter()
    table = measure_sensitivities(
        model, calib_batches, data=[calib[:SENSITIVITY_VIEWS]], base=base,
        weight_bits=UNIFORM_BITS, metric="kl", progress=True,
    )  # fmt: skip
    mixed = {b: table.choose(zp.Budget(model_bytes=table.uniform_bytes(b))) for b in MIXED_AT}
    timings["mixed precision search"] = time.perf_counter() - t0
    out = MixedResult(analysis, timings=timings)
    out.sensitivity_s = table.wall_s
    out.search_s = sum(r.wall_s["search"] for r in mixed.values())

    t0 = time.perf_counter()
    uniform: dict[int, CurveRow] = {}
    for bits in UNIFORM_BITS:  # the search's candidate models are the uniform models
        q = table.variants[(bits, 8)]
        uniform[bits] = _row(f"uniform round-to-nearest (W{bits})", f"W{bits}A8", q, fp32, views,
                             table.uniform_bytes(bits) / 1e6, float(bits))  # fmt: skip
        out.rows.append(uniform[bits])
    for bits, result in mixed.items():
        q = zp.quantize_static(model, calib_batches, result.config, progress=False)
        widths = sorted({c.weight_bits for c in result.choices if c.weight_bits})
        row = _row(f"mixed precision (size of W{bits})", f"mixed ≤ W{bits} size", q, fp32, views,
                   result.model_bytes / 1e6, result.avg_weight_bits,
                   f"widths {widths}, predicted KL {result.predicted_drop:.3f}")  # fmt: skip
        out.rows.append(row)
        out.dominates[bits] = row.top1 >= uniform[bits].top1 and row.size_mb <= uniform[
            bits].size_mb  # fmt: skip
    for bits in ACIQ_AT:
        out.rows.append(_aciq_row(model, calib_batches, base, bits, table, fp32, views))
    for bits in ADAROUND_AT:
        ada = _adaround(model, calib, base.with_(weight=base.weight.with_(bits=bits)))
        uniform_ada = _row(f"uniform AdaRound (W{bits})", f"W{bits}A8", ada, fp32, views,
                           table.uniform_bytes(bits) / 1e6, float(bits),
                           f"{ADAROUND_ITERATIONS} iterations per layer")  # fmt: skip
        result = mixed[bits]
        mixed_ada = _row(f"mixed precision + AdaRound (size of W{bits})", f"mixed ≤ W{bits} size",
                         _adaround(model, calib, result.config), fp32, views,
                         result.model_bytes / 1e6, result.avg_weight_bits,
                         "the mixed config above, weights rounded by AdaRound")  # fmt: skip
        out.rows += [uniform_ada, mixed_ada]
        out.dominates_adaround[bits] = mixed_ada.top1 >= uniform_ada.top1
    timings["curve evaluation"] = time.perf_counter() - t0
    return out


def _aciq_row(model: nn.Module, calib_batches: list[Tensor], base: zp.QuantConfig, bits: int,
              table: SensitivityTable, fp32: Tensor, views: Tensor) -> CurveRow:  # fmt: skip
    """ACIQ's analytic per-channel allocation (`zp.mixed.aciq_allocate`): in every layer, the
    levels of ``bits`` bits per channel redistributed ∝ range^(2/3) (2..8 bits per channel),
    weights fake-quantized per channel before the batch norms fold (a per-channel scaling keeps
    the grid); 8-bit activations calibrated on the result (the weights stay as allocated)."""
    allocated, widths = aciq_allocate(model, float(bits), min_bits=2, max_bits=8)
    q = zp.quantize_static(allocated, calib_batches, base.with_(weight=None), progress=False)
    weight_bits = sum(float(b.sum()) * _per_channel(model, n) for n, b in widths.items())
    n_weights = sum(table.parameters.values())
    size = table.fixed_bytes + weight_bits / 8
    return _row(f"ACIQ per-channel allocation (levels of W{bits})", f"ACIQ ≤ W{bits} levels", q,
                fp32, views, size / 1e6, weight_bits / n_weights,
                "per-channel widths 2..8 ∝ range^(2/3), weights only; simulation")  # fmt: skip


def _adaround(model: nn.Module, calib: Tensor, config: zp.QuantConfig) -> nn.Module:
    from zeropoint.ptq.adaround import adaround

    return adaround(model, calib, config, num_samples=calib.shape[0],
                    iterations=ADAROUND_ITERATIONS, batch_rows=ADAROUND_ROWS,
                    progress=False)  # fmt: skip


def _per_channel(model: nn.Module, name: str) -> int:
    w: Tensor = model.get_submodule(name).weight  # type: ignore[assignment]
    return int(w[0].numel())


def _row(method: str, weights: str, q: nn.Module, fp32: Tensor, views: Tensor, size_mb: float,
         avg_bits: float, note: str = "") -> CurveRow:  # fmt: skip
    logits = _logits(q, views)
    return CurveRow(method, weights, size_mb, avg_bits, top_k_agreement(logits, fp32, 1),
                    mean_kl(logits, fp32), note)  # fmt: skip


__all__ = ["MixedResult", "run"]
