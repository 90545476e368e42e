"""Core benchmark: zeropoint's quantize / dequantize and entropy calibration against their peers.

What is measured (all on CPU, in one run, interleaved repetition by repetition):

1. Throughput of the uniform quantizer on ``torch.randn(n)`` float32 values (n = 16M by default):
   - per-tensor int8 quantize: ``zeropoint.quantize_int(x, qp)`` vs ``torch.quantize_per_tensor``,
     and the same with ``fused=True`` (one compiled loop, `zeropoint.fused`; compiled before
     timing), also for dequantize and the round trip; the speed-up of ``fused=True`` over the
     eager path (our two medians) is printed and stored as ``fused_speedup``;
   - per-tensor dequantize: ``zeropoint.dequantize(q, qp)`` vs ``torch_q.dequantize()``;
   - the round trip (quantize then dequantize) vs torch's pair;
   - per-channel int8 (x viewed as (4096, n // 4096), axis 0, symmetric) quantize and dequantize
     vs ``torch.quantize_per_channel`` / ``.dequantize()``.
   Twice: with torch's default thread count, and with ``torch.set_num_threads(1)``.
   Target (the issue's): zeropoint's quantize at >= 0.8x torch's speed (ratio >= 0.8); the
   same bar is shown for every row of this section.
2. Entropy (KL) calibration of 10M float32 values (a seeded Gaussian plus a few outliers):
   ``zeropoint.observers.Entropy(Scheme(bits=8, symmetric=True))`` ``update`` + ``qparams()`` vs
   ONNX Runtime's ``HistogramCollector("entropy", True, 2048, 128, 99.999, "same")``
   ``collect`` + ``compute_collection_result`` (what ``CalibrationMethod.Entropy`` runs per
   tensor). The clip thresholds both chose are printed too. Target: zeropoint >= 5x faster.
   Also at both thread counts (ONNX Runtime's collector is numpy, so only our side changes).

Both sides see the same data and produce the same kind of result; the codes' agreement with
torch's is printed (they may differ at rare near-ties: see `zeropoint.functional`).

How to read the table: ``ratio = peer_time / our_time`` from the medians over repetitions, so a
ratio above 1 means zeropoint is faster, below 1 slower. ``paired`` is the spread (min..max) of
the per-repetition ratios: each repetition times ours and the peer back to back (alternating
which goes first), so load from other processes tends to hit both alike. Absolute times depend
on the machine and its load; compare ratios, and rerun before drawing conclusions from a single
run. Nothing here fails: "meets" only says whether a ratio reaches its target.

    python bench/core.py            # full run (a few minutes); writes bench/results/core.json
    python bench/core.py --quick    # 1M values, 3 repetitions: a smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import zeropoint as zp
from zeropoint.report.files import atomic_write_text
from zeropoint.report.tables import format_table

RESULTS = Path(__file__).resolve().parent / "results" / "core.json"
QUANTIZE_TARGET = 0.8  # zeropoint's quantize at >= 0.8x torch's speed
ENTROPY_TARGET = 5.0  # zeropoint's entropy calibration >= 5x faster than ONNX Runtime's
CHANNELS = 4096

# torch's quantized-tensor creation functions warn that they are deprecated; they are the peer.
warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")


@dataclass
class Row:
    """One contest: our median time, the peer's, and the ratio peer / ours (> 1: we are faster)."""

    case: str
    ours: str
    peer: str
    target: float
    ours_s: list[float] = field(default_factory=list)
    peer_s: list[float] = field(default_factory=list)

    @property
    def ours_median(self) -> float:
        return statistics.median(self.ours_s)

    @property
    def peer_median(self) -> float:
        return statistics.median(self.peer_s)

    @property
    def ratio(self) -> float:
        return self.peer_median / self.ours_median

    @property
    def paired(self) -> tuple[float, float]:
        ratios = [p / o for o, p in zip(self.ours_s, self.peer_s)]
        return min(ratios), max(ratios)

    def to_json(self) -> dict[str, Any]:
        lo, hi = self.paired
        return {
            **asdict(self),
            "ours_median_s": self.ours_median,
            "peer_median_s": self.peer_median,
            "ratio": self.ratio,
            "paired_ratio_min": lo,
            "paired_ratio_max": hi,
            "meets_target": self.ratio >= self.target,
        }


@dataclass
class Contest:
    row: Row
    ours: Callable[[], object]
    peer: Callable[[], object]


def machine() -> dict[str, Any]:
    """CPU model, core count, torch threads and library versions."""
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "zeropoint": zp.__version__,
        "python": platform.python_version(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        # OpenMP's settings change how many short parallel operations cost on a busy machine.
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")},
    }


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_interleaved(contests: list[Contest], reps: int, warmup: int = 1) -> None:
    """Time every contest ``reps`` times; in each repetition ours and the peer run back to back,
    the order alternating, and the repetition walks through all contests, so drifting load from
    other processes spreads over every contender alike."""
    for c in contests:
        for _ in range(warmup):
            c.ours()
            c.peer()
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for rep in range(reps):
            for c in contests:
                if rep % 2 == 0:
                    c.row.ours_s.append(_time(c.ours))
                    c.row.peer_s.append(_time(c.peer))
                else:
                    c.row.peer_s.append(_time(c.peer))
                    c.row.ours_s.append(_time(c.ours))
    finally:
        if gc_was_enabled:
            gc.enable()


def quantize_contests(x: torch.Tensor) -> tuple[list[Contest], dict[str, float]]:
    """The per-tensor and per-channel contests on ``x``, and how often the codes agree."""
    qp = zp.calibrate(x, zp.Scheme(bits=8))
    scale, zero_point = float(qp.scale), int(qp.zero_point)
    q = zp.quantize_int(x, qp)
    tq = torch.quantize_per_tensor(x, scale, zero_point, torch.qint8)

    cols = x.numel() // CHANNELS
    xc = x[: CHANNELS * cols].view(CHANNELS, cols)
    qpc = zp.calibrate(xc, zp.Scheme(bits=8, symmetric=True, axis=0))
    scales = qpc.scale.to(torch.float64)
    zero_points = qpc.zero_point.to(torch.int64)
    qc = zp.quantize_int(xc, qpc)
    tqc = torch.quantize_per_channel(xc, scales, zero_points, 0, torch.qint8)

    # Not timed: both sides must do the same work. Codes may differ at near-ties (torch rounds
    # Z + r·fl(1/S), zeropoint fl(r / S); see zeropoint.functional): about 1e-6 of random values,
    # plus up to one per channel here, because the symmetric S = max|x| / 127.5 puts each
    # channel's extreme exactly on the tie −127.5.
    q_fused = zp.quantize_int(x, qp, fused=True)  # compiles here, outside the timing
    zp.dequantize(q_fused, qp, fused=True)
    agreement = {
        "fused_codes_equal_eager": float((q_fused == q).double().mean()),
        "per_tensor_codes_equal": float((q == tq.int_repr()).double().mean()),
        "per_channel_codes_equal": float((qc == tqc.int_repr()).double().mean()),
    }

    def row(case: str, ours: str, peer: str) -> Row:
        return Row(case, ours, peer, QUANTIZE_TARGET)

    contests = [
        Contest(
            row("quantize per-tensor int8", "zp.quantize_int", "torch.quantize_per_tensor"),
            lambda: zp.quantize_int(x, qp),
            lambda: torch.quantize_per_tensor(x, scale, zero_point, torch.qint8),
        ),
        Contest(
            row("quantize per-tensor, fused=True", "quantize_int(fused)", "quantize_per_tensor"),
            lambda: zp.quantize_int(x, qp, fused=True),
            lambda: torch.quantize_per_tensor(x, scale, zero_point, torch.qint8),
        ),
        Contest(
            row("dequantize per-tensor", "zp.dequantize", "QTensor.dequantize"),
            lambda: zp.dequantize(q, qp),
            lambda: tq.dequantize(),
        ),
        Contest(
            row("dequantize per-tensor, fused=True", "dequantize(fused)", "QTensor.dequantize"),
            lambda: zp.dequantize(q, qp, fused=True),
            lambda: tq.dequantize(),
        ),
        Contest(
            row("round trip per-tensor", "quantize_int+dequantize", "quantize_per_tensor+deq"),
            lambda: zp.dequantize(zp.quantize_int(x, qp), qp),
            lambda: torch.quantize_per_tensor(x, scale, zero_point, torch.qint8).dequantize(),
        ),
        Contest(
            row("round trip per-tensor, fused=True", "fused q+dq", "quantize_per_tensor+deq"),
            lambda: zp.dequantize(zp.quantize_int(x, qp, fused=True), qp, fused=True),
            lambda: torch.quantize_per_tensor(x, scale, zero_point, torch.qint8).dequantize(),
        ),
        Contest(
            row(
                f"quantize per-channel ({CHANNELS}, {cols})",
                "zp.quantize_int",
                "quantize_per_channel",
            ),
            lambda: zp.quantize_int(xc, qpc),
            lambda: torch.quantize_per_channel(xc, scales, zero_points, 0, torch.qint8),
        ),
        Contest(
            row(
                f"dequantize per-channel ({CHANNELS}, {cols})",
                "zp.dequantize",
                "QTensor.dequantize",
            ),
            lambda: zp.dequantize(qc, qpc),
            lambda: tqc.dequantize(),
        ),
    ]
    return contests, agreement


#: (eager row, fused row, name) pairs of `quantize_contests` whose medians give the speed-up.
FUSED_PAIRS = (
    ("quantize per-tensor int8", "quantize per-tensor, fused=True", "quantize"),
    ("dequantize per-tensor", "dequantize per-tensor, fused=True", "dequantize"),
    ("round trip per-tensor", "round trip per-tensor, fused=True", "round trip"),
)


def fused_speedups(rows: list[Row]) -> dict[str, float]:
    """Our eager median / our fused median per operation (> 1: fused=True is faster) — the
    figure the README quotes for `zeropoint.fused`."""
    by_case = {r.case: r for r in rows}
    return {
        name: by_case[eager].ours_median / by_case[fused].ours_median
        for eager, fused, name in FUSED_PAIRS
    }


def entropy_data(n: int, seed: int = 0) -> torch.Tensor:
    """A standard Gaussian with a few large outliers (the case entropy calibration is for)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g)
    where = torch.randint(0, n, (8,), generator=g)
    x[where] = torch.tensor([12.0, -15.0, 20.0, -25.0, 30.0, -40.0, 50.0, -60.0])
    return x


def entropy_contest(x: torch.Tensor) -> tuple[Contest, dict[str, float]]:
    """zeropoint's Entropy observer vs ONNX Runtime's entropy HistogramCollector on ``x``."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    arr = x.numpy()
    scheme = zp.Scheme(bits=8, symmetric=True)

    def ours() -> zp.QParams:
        obs = zp.observers.Entropy(scheme)
        obs.update(x)
        return obs.qparams()

    def peer() -> tuple[float, float]:
        collector = HistogramCollector("entropy", True, 2048, 128, 99.999, "same")
        with contextlib.redirect_stdout(io.StringIO()):  # it prints progress
            collector.collect({"x": [arr]})
            lo, hi, *_ = collector.compute_collection_result()["x"]
        return float(lo), float(hi)

    # Not timed: the clip ranges both chose (ours from the same observer that gave the scale).
    obs = zp.observers.Entropy(scheme)
    obs.update(x)
    ours_lo, ours_hi = (float(v) for v in obs.range())
    peer_lo, peer_hi = peer()
    thresholds = {
        "zeropoint_lo": ours_lo,
        "zeropoint_hi": ours_hi,
        "zeropoint_scale": float(obs.qparams().scale),
        "onnxruntime_lo": peer_lo,
        "onnxruntime_hi": peer_hi,
        "max_abs": float(x.abs().max()),
    }
    row = Row(
        f"entropy calibration {x.numel() / 1e6:g}M",
        "zp.observers.Entropy",
        "ort HistogramCollector",
        ENTROPY_TARGET,
    )
    return Contest(row, ours, peer), thresholds


def print_table(title: str, rows: list[Row]) -> None:
    print(f"\n{title}")
    table = []
    for r in rows:
        lo, hi = r.paired
        table.append(
            {
                "case": r.case,
                "peer": r.peer,
                "ours ms": r.ours_median * 1e3,
                "peer ms": r.peer_median * 1e3,
                "ratio": r.ratio,
                "paired": f"{lo:.2f}..{hi:.2f}",
                "target": r.target,
                "meets": "yes" if r.ratio >= r.target else "NO",
            }
        )
    print(format_table(table, digits={"ours ms": 2, "peer ms": 2, "ratio": 2, "target": 1}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1M values, 3 repetitions")
    parser.add_argument("--reps", type=int, help="repetitions for quantize (default 15; quick 3)")
    parser.add_argument("--entropy-reps", type=int, help="repetitions for entropy (default 3)")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON path ({RESULTS})")
    args = parser.parse_args(argv)
    n_quant = 1_000_000 if args.quick else 16_000_000
    n_entropy = 1_000_000 if args.quick else 10_000_000
    reps = args.reps if args.reps is not None else (3 if args.quick else 15)
    entropy_reps = args.entropy_reps if args.entropy_reps is not None else 3
    if reps < 1 or entropy_reps < 1:
        raise SystemExit("--reps and --entropy-reps must be >= 1")

    info = machine()
    default_threads = torch.get_num_threads()
    print("zeropoint core benchmark (ratio = peer time / our time; > 1 means zeropoint is faster)")
    for key, value in info.items():
        print(f"  {key:<14} {value}")
    print(f"  {'config':<14} quantize n={n_quant:,} reps={reps}; entropy n={n_entropy:,} ")
    print(f"  {'':<14} reps={entropy_reps}; medians over repetitions, interleaved")

    x = torch.randn(n_quant, generator=torch.Generator().manual_seed(0))
    sections: list[dict[str, Any]] = []
    for threads in dict.fromkeys([default_threads, 1]):
        torch.set_num_threads(threads)
        contests, agreement = quantize_contests(x)
        run_interleaved(contests, reps)
        rows = [c.row for c in contests]
        title = f"1. quantize / dequantize, {n_quant / 1e6:g}M float32, torch threads = {threads}"
        print_table(title, rows)
        print(f"  codes equal to torch's: {agreement}")
        speedups = fused_speedups(rows)
        print(
            "  fused=True over the eager path (eager time / fused time): "
            + ", ".join(f"{k} {v:.2f}x" for k, v in speedups.items())
        )
        sections.append(
            {
                "title": title,
                "threads": threads,
                "rows": [r.to_json() for r in rows],
                "agreement": agreement,
                "fused_speedup": speedups,
            }
        )
    torch.set_num_threads(default_threads)

    data = entropy_data(n_entropy)
    for threads in dict.fromkeys([default_threads, 1]):
        torch.set_num_threads(threads)
        contest, thresholds = entropy_contest(data)  # runs both once: that is the warm-up
        run_interleaved([contest], entropy_reps, warmup=0)
        title = (
            f"2. entropy (KL) calibration, {n_entropy / 1e6:g}M float32, torch threads = {threads}"
        )
        print_table(title, [contest.row])
        print(
            f"  thresholds: zeropoint [{thresholds['zeropoint_lo']:.4f}, "
            f"{thresholds['zeropoint_hi']:.4f}], onnxruntime [{thresholds['onnxruntime_lo']:.4f}, "
            f"{thresholds['onnxruntime_hi']:.4f}], max |x| {thresholds['max_abs']:.1f}"
        )
        sections.append(
            {
                "title": title,
                "threads": threads,
                "rows": [contest.row.to_json()],
                "thresholds": thresholds,
            }
        )
    torch.set_num_threads(default_threads)
    info["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    print(f"\nload average at the end: {info['load_average_end']} (on {info['cores']} cores)")

    payload = {
        "benchmark": "core",
        "machine": info,
        "config": {
            "quick": args.quick,
            "n_quantize": n_quant,
            "n_entropy": n_entropy,
            "reps": reps,
            "entropy_reps": entropy_reps,
            "quantize_target": QUANTIZE_TARGET,
            "entropy_target": ENTROPY_TARGET,
        },
        "sections": sections,
    }
    atomic_write_text(args.output, json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
